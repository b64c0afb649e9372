//! The whole fleet as Prometheus text, one series per box, so one scrape
//! target covers every clinic (the boxes sit behind clinic NATs and cannot
//! be scraped). Every metric has its `# HELP` and `# TYPE` lines in each
//! scrape that read Redis, with or without boxes: `tests/fleet.rs` holds
//! the names `deploy/prometheus/alerts.yml` uses to them.

use std::fmt::Write as _;

use super::{BoxState, FleetBox};

/// Each per-box gauge: its name, help and how it is read from a box.
type Reading = fn(&FleetBox) -> Option<f64>;

const PER_BOX: &[(&str, &str, Reading)] = &[
    (
        "smartwait_fleet_box_up",
        "1 while the box reports (up or degraded), 0 when stopped or missing",
        |fleet_box| {
            Some(f64::from(u8::from(matches!(
                fleet_box.state,
                BoxState::Up | BoxState::Degraded { .. }
            ))))
        },
    ),
    (
        "smartwait_fleet_last_seen_seconds",
        "When the box last reported (Unix seconds)",
        |fleet_box| Some(fleet_box.last_seen_ms as f64 / 1000.0),
    ),
    (
        "smartwait_fleet_backlog",
        "Events in the box's outbox not yet in Redis (last report)",
        |fleet_box| fleet_box.report["backlog"].as_f64(),
    ),
    (
        "smartwait_fleet_replication_lag_seconds",
        "Age of the box's oldest event not yet replicated (last report)",
        |fleet_box| fleet_box.report["replicationLagSeconds"].as_f64(),
    ),
    (
        "smartwait_fleet_clients",
        "Screens connected to the box (last report)",
        |fleet_box| fleet_box.report["connectedClients"].as_f64(),
    ),
    (
        "smartwait_fleet_store_ok",
        "1 when the box's state.db writes, 0 when it fails (last report)",
        |fleet_box| {
            let state = fleet_box.report["store"]["state"].as_str()?;
            Some(f64::from(u8::from(state == "ok")))
        },
    ),
    (
        "smartwait_fleet_clock_offset_seconds",
        "The box's clock minus Redis's (last report)",
        |fleet_box| {
            let offset_ms = fleet_box.report["clock"]["offsetMs"].as_f64()?;
            Some(offset_ms / 1000.0)
        },
    ),
    (
        "smartwait_fleet_cert_expiry_days",
        "Days until the box's TLS certificate expires (boxes with TLS)",
        |fleet_box| fleet_box.report["certExpiryDays"].as_f64(),
    ),
];

/// The states `smartwait_fleet_box_state` has a series for.
const STATES: &[&str] = &["up", "degraded", "stopped", "missing"];

fn state_name(state: &BoxState) -> &'static str {
    match state {
        BoxState::Up => "up",
        BoxState::Degraded { .. } => "degraded",
        BoxState::Stopped { .. } => "stopped",
        BoxState::Missing { .. } => "missing",
    }
}

/// A label value as Prometheus's text format wants it.
fn escaped(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(fleet_box: &FleetBox) -> String {
    format!(
        "clinic=\"{}\",node=\"{}\"",
        escaped(&fleet_box.clinic),
        escaped(&fleet_box.node)
    )
}

/// The fleet (`None`: Redis could not be read) and how long reading took.
pub fn render(fleet: Option<&[FleetBox]>, scrape_seconds: f64) -> String {
    let mut text = String::new();
    let gauge = |text: &mut String, name: &str, help: &str| {
        let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} gauge");
    };
    gauge(
        &mut text,
        "smartwait_fleet_redis_up",
        "1 when the fleet service's last read of the central Redis (every 2 s) succeeded",
    );
    let _ = writeln!(
        text,
        "smartwait_fleet_redis_up {}",
        u8::from(fleet.is_some())
    );
    gauge(
        &mut text,
        "smartwait_fleet_scrape_seconds",
        "How long the last read of the fleet from Redis took",
    );
    let _ = writeln!(text, "smartwait_fleet_scrape_seconds {scrape_seconds:.6}");
    let Some(fleet) = fleet else {
        return text;
    };
    gauge(&mut text, "smartwait_fleet_boxes", "Boxes by state");
    for state in STATES {
        let count = fleet
            .iter()
            .filter(|fleet_box| state_name(&fleet_box.state) == *state)
            .count();
        let _ = writeln!(text, "smartwait_fleet_boxes{{state=\"{state}\"}} {count}");
    }
    for (name, help, reading) in PER_BOX {
        gauge(&mut text, name, help);
        for fleet_box in fleet {
            if let Some(value) = reading(fleet_box) {
                let _ = writeln!(text, "{name}{{{}}} {value}", labels(fleet_box));
            }
        }
    }
    gauge(
        &mut text,
        "smartwait_fleet_box_state",
        "1 for the box's state (up, degraded, stopped, missing), 0 for the others",
    );
    for fleet_box in fleet {
        let current = state_name(&fleet_box.state);
        for state in STATES {
            let _ = writeln!(
                text,
                "smartwait_fleet_box_state{{{},state=\"{state}\"}} {}",
                labels(fleet_box),
                u8::from(current == *state)
            );
        }
    }
    gauge(
        &mut text,
        "smartwait_fleet_info",
        "The box's version (value 1)",
    );
    for fleet_box in fleet {
        let version = fleet_box.report["version"].as_str().unwrap_or("unknown");
        let _ = writeln!(
            text,
            "smartwait_fleet_info{{{},version=\"{}\"}} 1",
            labels(fleet_box),
            escaped(version)
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fleet_box(node: &str, state: BoxState) -> FleetBox {
        FleetBox {
            clinic: "c\"1".to_owned(),
            node: node.to_owned(),
            state,
            last_seen: String::new(),
            last_seen_ms: 1_700_000_000_000,
            full_report: std::sync::Arc::from(serde_json::value::RawValue::NULL.to_owned()),
            report: std::sync::Arc::new(
                json!({"backlog": 3, "store": {"state": "ok"}, "clock": {"offsetMs": -250}, "version": "0.1.0"}),
            ),
        }
    }

    #[test]
    fn each_box_has_its_series_and_labels_are_escaped() {
        let fleet = [
            fleet_box("a", BoxState::Up),
            fleet_box(
                "b",
                BoxState::Missing {
                    since: String::new(),
                },
            ),
        ];
        let text = render(Some(&fleet), 0.002);
        assert!(text.contains("smartwait_fleet_redis_up 1\n"), "{text}");
        assert!(
            text.contains("smartwait_fleet_box_up{clinic=\"c\\\"1\",node=\"a\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("smartwait_fleet_box_up{clinic=\"c\\\"1\",node=\"b\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "smartwait_fleet_box_state{clinic=\"c\\\"1\",node=\"b\",state=\"missing\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "smartwait_fleet_clock_offset_seconds{clinic=\"c\\\"1\",node=\"a\"} -0.25\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("smartwait_fleet_boxes{state=\"missing\"} 1\n"),
            "{text}"
        );
        assert!(
            !text.contains("cert_expiry_days{"),
            "no TLS, no series: {text}"
        );
    }

    #[test]
    fn without_redis_only_the_service_speaks() {
        let text = render(None, 5.0);
        assert!(text.contains("smartwait_fleet_redis_up 0\n"), "{text}");
        assert!(!text.contains("smartwait_fleet_box_up{"), "{text}");
    }
}
