//! Central operations' view of every box of every clinic, from what the
//! boxes report to Redis (`replication::fleet`): the fleet index, each
//! box's last report and the fleet's state changes. `smartwait-gateway
//! fleet` prints it, `fleet serve` ([`serve`]) serves it to Prometheus
//! ([`metrics`]); a box is `missing` when it has not reported for
//! [`MISSING_AFTER_MS`]. This layer never talks to a box. Imports the
//! replication layer's key layout and connection, the HTTP vocabulary,
//! `auth` and the leaves.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use anyhow::Context;
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::clock::{rfc3339_ms, unix_ms};
use crate::config::{mask_url_password, RedisConfig};
use crate::replication::connection::{self, RedisConnection};
use crate::replication::keys;

pub mod announce;
pub mod metrics;
pub mod serve;

pub use serve::serve;

/// A box that has not reported for this long is missing: three heartbeats
/// (every 10 s) in a row did not arrive.
pub const MISSING_AFTER_MS: u64 = 30_000;

/// Last reports read at once on a cluster (one command each).
const READS_IN_FLIGHT: usize = 64;

/// `smartwait-gateway fleet`: what it was asked.
#[derive(Debug, Default)]
pub struct FleetCommand {
    /// Only this clinic's boxes.
    pub clinic: Option<String>,
    /// JSON instead of a table.
    pub json: bool,
    /// Refresh in place every 2 s until interrupted.
    pub watch: bool,
    /// Remove this box (`CLINIC/NODE`) from the fleet.
    pub forget: Option<String>,
}

/// How often `--watch` refreshes.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs the fleet command against `redis`; its exit status: 0 when every
/// box is up (or stopped gracefully), 1 when any is degraded or missing,
/// 2 when Redis cannot be reached — so it serves as a cron or monitoring
/// check. Redis unreachable is said as such, never as every box missing.
pub async fn run_command(redis: &RedisConfig, command: &FleetCommand) -> u8 {
    let unreachable = |err: anyhow::Error| {
        eprintln!(
            "error: cannot reach the central Redis ({}): {err:#}",
            mask_url_password(&redis.url)
        );
        2
    };
    let mut connection = match connection::connect(redis).await {
        Ok(connection) => connection,
        Err(err) => return unreachable(err),
    };
    if let Some(member) = &command.forget {
        return match forget(&mut connection, member).await {
            Ok(true) => {
                println!("forgot {member}");
                0
            }
            Ok(false) => {
                eprintln!("no box {member} in the fleet");
                1
            }
            Err(err) => unreachable(err),
        };
    }
    let mut reader = FleetReader::default();
    loop {
        let fleet = match reader
            .read(&mut connection, command.clinic.as_deref())
            .await
        {
            Ok(fleet) => fleet,
            Err(err) => return unreachable(err),
        };
        let status = u8::from(fleet.iter().any(|fleet_box| fleet_box.state.is_trouble()));
        if command.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&fleet).unwrap_or_default()
            );
        } else {
            if command.watch {
                // Home and clear: the table refreshes in place.
                print!("\x1b[H\x1b[2J");
            }
            print!("{}", table(&fleet, unix_ms()));
        }
        if !command.watch {
            return status;
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return status,
            () = tokio::time::sleep(WATCH_EVERY) => {}
        }
    }
}

/// Where a box stands, worst first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "state")]
pub(crate) enum BoxState {
    /// No report for [`MISSING_AFTER_MS`], and no graceful stop.
    Missing {
        since: String,
    },
    Degraded {
        why: String,
    },
    /// Stopped gracefully, and not started since.
    Stopped {
        at: String,
        reason: String,
    },
    Up,
}

impl std::fmt::Display for BoxState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BoxState::Missing { since } => write!(f, "missing since {since}"),
            BoxState::Degraded { why } => write!(f, "degraded: {why}"),
            BoxState::Stopped { at, reason } => write!(f, "stopped {at} ({reason})"),
            BoxState::Up => f.write_str("up"),
        }
    }
}

/// One box of the fleet.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FleetBox {
    pub clinic: String,
    pub node: String,
    #[serde(flatten)]
    pub state: BoxState,
    pub last_seen: String,
    #[serde(skip)]
    pub last_seen_ms: u64,
    /// The fields of the box's last report the views read
    /// ([`REPORT_FIELDS`]); shared with the reader's cache.
    #[serde(skip)]
    pub report: Arc<Value>,
    /// The last report as the box wrote it (null when it is gone), kept as
    /// text: a parsed copy of every box's would cost several times more.
    #[serde(rename = "report")]
    pub full_report: Arc<RawValue>,
}

impl FleetBox {
    fn field(&self, name: &str) -> String {
        match &self.report[name] {
            Value::Null => "-".to_owned(),
            Value::String(text) => text.clone(),
            other => other.to_string(),
        }
    }
}

/// The report fields the table, the metrics, the page's summaries and
/// [`state_of`] read; the rest of a report is kept as text only.
const REPORT_FIELDS: [&str; 13] = [
    "status",
    "why",
    "stoppedAtMs",
    "stopReason",
    "version",
    "connectedClients",
    "backlog",
    "replicationLagSeconds",
    "store",
    "clock",
    "uptimeSeconds",
    "certExpiryDays",
    "startedAt",
];

/// A report as the views keep it: its [`REPORT_FIELDS`] (of `store` and
/// `clock` only `state` and `offsetMs`) and its text.
#[derive(Debug, Clone)]
struct KeptReport {
    fields: Arc<Value>,
    text: Arc<RawValue>,
}

fn kept_report(text: Option<String>) -> KeptReport {
    let parsed = text.and_then(|text| {
        let full: Value = serde_json::from_str(&text).ok()?;
        Some((full, RawValue::from_string(text).ok()?))
    });
    let Some((mut full, raw)) = parsed else {
        return KeptReport {
            fields: Arc::new(Value::Null),
            text: Arc::from(RawValue::NULL.to_owned()),
        };
    };
    let mut fields = serde_json::Map::new();
    for name in REPORT_FIELDS {
        if let Some(value) = full.get_mut(name).map(Value::take) {
            let value = match name {
                "store" => serde_json::json!({"state": value["state"]}),
                "clock" => serde_json::json!({"offsetMs": value["offsetMs"]}),
                _ => value,
            };
            fields.insert(name.to_owned(), value);
        }
    }
    KeptReport {
        fields: Arc::new(Value::Object(fields)),
        text: Arc::from(raw),
    }
}

/// Where a box stands at `now_ms`, from when it last reported and what.
pub(crate) fn state_of(report: &Value, last_seen_ms: u64, now_ms: u64) -> BoxState {
    if let Some(stopped_ms) = report["stoppedAtMs"].as_u64() {
        if stopped_ms + 1 >= last_seen_ms {
            return BoxState::Stopped {
                at: rfc3339_ms(stopped_ms),
                reason: report["stopReason"]
                    .as_str()
                    .unwrap_or("stopped")
                    .to_owned(),
            };
        }
    }
    if now_ms.saturating_sub(last_seen_ms) > MISSING_AFTER_MS {
        return BoxState::Missing {
            since: rfc3339_ms(last_seen_ms),
        };
    }
    match report["status"].as_str() {
        Some("degraded") => BoxState::Degraded {
            why: report["why"].as_str().unwrap_or("unknown").to_owned(),
        },
        _ => BoxState::Up,
    }
}

/// Reads the fleet again and again: the index each time (one command),
/// a box's last report only when its score moved since the last read, so
/// a read costs about a fifth of the boxes' `GET`s when read every 2 s
/// (boxes report every 10 s) and the index's `ZRANGE`.
#[derive(Debug, Default)]
pub(crate) struct FleetReader {
    /// By fleet member: the score its report was read at, and the report.
    reports: HashMap<String, (u64, KeptReport)>,
}

impl FleetReader {
    /// Every box of the fleet (of one clinic with `clinic`), worst first.
    pub(crate) async fn read(
        &mut self,
        connection: &mut RedisConnection,
        clinic: Option<&str>,
    ) -> anyhow::Result<Vec<FleetBox>> {
        let seen: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(keys::FLEET_SEEN)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(connection)
            .await
            .context("cannot read the fleet index")?;
        let members: Vec<(String, u64)> = seen
            .into_iter()
            .filter(|(member, _)| {
                member
                    .split_once('/')
                    .is_some_and(|(box_clinic, _)| clinic.is_none_or(|wanted| wanted == box_clinic))
            })
            .map(|(member, score)| (member, score as u64))
            .collect();
        let moved: Vec<&(String, u64)> = members
            .iter()
            .filter(|(member, score)| {
                self.reports
                    .get(member)
                    .is_none_or(|(read_at, _)| read_at != score)
            })
            .collect();
        let report_keys: Vec<String> = moved
            .iter()
            .filter_map(|(member, _)| {
                let (clinic, node) = member.split_once('/')?;
                Some(keys::node_last_report(clinic, node))
            })
            .collect();
        let reports = read_all(connection, &report_keys).await?;
        let mut fresh: HashMap<String, (u64, KeptReport)> = moved
            .into_iter()
            .zip(reports)
            .map(|((member, score), report)| (member.clone(), (*score, kept_report(report))))
            .collect();
        let now = unix_ms();
        let mut boxes = Vec::with_capacity(members.len());
        let mut kept = HashMap::with_capacity(members.len());
        for (member, last_seen_ms) in members {
            let Some(entry) = fresh
                .remove(&member)
                .or_else(|| self.reports.remove(&member))
            else {
                continue;
            };
            let Some((clinic, node)) = member.split_once('/') else {
                continue;
            };
            boxes.push(FleetBox {
                state: state_of(&entry.1.fields, last_seen_ms, now),
                clinic: clinic.to_owned(),
                node: node.to_owned(),
                last_seen: rfc3339_ms(last_seen_ms),
                last_seen_ms,
                report: entry.1.fields.clone(),
                full_report: entry.1.text.clone(),
            });
            kept.insert(member, entry);
        }
        // Boxes forgotten since are dropped with the rest.
        self.reports = kept;
        boxes.sort_by(|a, b| {
            a.state
                .rank()
                .cmp(&b.state.rank())
                .then_with(|| a.clinic.cmp(&b.clinic))
                .then_with(|| a.node.cmp(&b.node))
        });
        Ok(boxes)
    }
}

impl BoxState {
    fn rank(&self) -> u8 {
        match self {
            BoxState::Missing { .. } => 0,
            BoxState::Degraded { .. } => 1,
            BoxState::Stopped { .. } => 2,
            BoxState::Up => 3,
        }
    }

    /// Whether it makes the fleet command fail (exit status 1).
    pub(crate) fn is_trouble(&self) -> bool {
        matches!(self, BoxState::Missing { .. } | BoxState::Degraded { .. })
    }
}

/// `GET` of every key: in pipelines on one server, concurrently on a
/// cluster (where the keys sit in many slots).
async fn read_all(
    connection: &mut RedisConnection,
    report_keys: &[String],
) -> anyhow::Result<Vec<Option<String>>> {
    let mut values = Vec::with_capacity(report_keys.len());
    match connection {
        RedisConnection::Single(_) => {
            for chunk in report_keys.chunks(1000) {
                let mut pipe = redis::pipe();
                for key in chunk {
                    pipe.cmd("GET").arg(key);
                }
                let chunk_values: Vec<Option<String>> = pipe
                    .query_async(connection)
                    .await
                    .context("cannot read the boxes' last reports")?;
                values.extend(chunk_values);
            }
        }
        RedisConnection::Cluster(cluster) => {
            let cluster = cluster.clone();
            let reads: Vec<redis::RedisResult<Option<String>>> =
                futures_util::stream::iter(report_keys.to_vec())
                    .map(move |key| {
                        let mut cluster = cluster.clone();
                        async move {
                            redis::cmd("GET")
                                .arg(key)
                                .query_async::<Option<String>>(&mut cluster)
                                .await
                        }
                    })
                    .buffered(READS_IN_FLIGHT)
                    .collect()
                    .await;
            for read in reads {
                values.push(read.context("cannot read the boxes' last reports")?);
            }
        }
    }
    Ok(values)
}

/// Removes a decommissioned box (`<clinic>/<node>`) from the fleet;
/// whether it was there.
pub(crate) async fn forget(connection: &mut RedisConnection, member: &str) -> anyhow::Result<bool> {
    let (clinic, node) = member
        .split_once('/')
        .context("--forget takes CLINIC/NODE")?;
    let removed: u64 = redis::cmd("ZREM")
        .arg(keys::FLEET_SEEN)
        .arg(member)
        .query_async(connection)
        .await
        .context("cannot update the fleet index")?;
    let _: u64 = redis::cmd("DEL")
        .arg(keys::node_last_report(clinic, node))
        .query_async(connection)
        .await
        .context("cannot remove the box's last report")?;
    Ok(removed > 0)
}

/// The fleet as a table for a terminal, worst first.
pub(crate) fn table(boxes: &[FleetBox], now_ms: u64) -> String {
    let mut rows = vec![[
        "CLINIC",
        "NODE",
        "STATE",
        "VERSION",
        "UPTIME",
        "CLIENTS",
        "BACKLOG",
        "LAG",
        "STORE",
        "CLOCK",
        "LAST SEEN",
    ]
    .map(str::to_owned)];
    for fleet_box in boxes {
        let store = fleet_box.report["store"]["state"]
            .as_str()
            .unwrap_or("-")
            .to_owned();
        let clock = match fleet_box.report["clock"]["offsetMs"].as_i64() {
            Some(offset) => format!("{offset:+} ms"),
            None => "-".to_owned(),
        };
        let uptime = match fleet_box.report["uptimeSeconds"].as_u64() {
            Some(seconds)
                if fleet_box.state == BoxState::Up
                    || matches!(fleet_box.state, BoxState::Degraded { .. }) =>
            {
                humantime::format_duration(std::time::Duration::from_secs(seconds)).to_string()
            }
            _ => "-".to_owned(),
        };
        let lag = match fleet_box.report["replicationLagSeconds"].as_f64() {
            Some(lag) => format!("{lag:.1} s"),
            None => "-".to_owned(),
        };
        let ago = now_ms.saturating_sub(fleet_box.last_seen_ms) / 1000;
        rows.push([
            fleet_box.clinic.clone(),
            fleet_box.node.clone(),
            fleet_box.state.to_string(),
            fleet_box.field("version"),
            uptime,
            fleet_box.field("connectedClients"),
            fleet_box.field("backlog"),
            lag,
            store,
            clock,
            format!("{} ({ago} s ago)", fleet_box.last_seen),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|column| rows.iter().map(|row| row[column].len()).max().unwrap_or(0))
        .collect();
    let mut text = String::new();
    for row in &rows {
        for (column, cell) in row.iter().enumerate() {
            let _ = write!(text, "{cell:<width$}  ", width = widths[column]);
        }
        text.truncate(text.trim_end().len());
        text.push('\n');
    }
    if boxes.is_empty() {
        text.push_str("(no box has reported to this Redis yet)\n");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_box_is_missing_after_thirty_seconds_without_a_report_unless_it_stopped() {
        let now = 1_000_000_000;
        let up = json!({"status": "up"});
        assert_eq!(state_of(&up, now - 10_000, now), BoxState::Up);
        assert!(matches!(
            state_of(&up, now - 30_001, now),
            BoxState::Missing { .. }
        ));
        let degraded = json!({"status": "degraded", "why": "store"});
        assert_eq!(
            state_of(&degraded, now - 5_000, now),
            BoxState::Degraded {
                why: "store".to_owned()
            }
        );
        let stopped =
            json!({"status": "stopped", "stoppedAtMs": now - 60_000, "stopReason": "SIGTERM"});
        assert!(matches!(
            state_of(&stopped, now - 60_000, now),
            BoxState::Stopped { reason, .. } if reason == "SIGTERM"
        ));
        // A report after the stop (it started again): the stop is old news.
        assert!(matches!(state_of(&stopped, now - 1_000, now), BoxState::Up));
    }

    #[test]
    fn the_worst_come_first() {
        let missing = BoxState::Missing {
            since: String::new(),
        };
        let degraded = BoxState::Degraded { why: String::new() };
        let stopped = BoxState::Stopped {
            at: String::new(),
            reason: String::new(),
        };
        assert!(missing.rank() < degraded.rank());
        assert!(degraded.rank() < stopped.rank());
        assert!(stopped.rank() < BoxState::Up.rank());
        assert!(missing.is_trouble() && degraded.is_trouble());
        assert!(!stopped.is_trouble() && !BoxState::Up.is_trouble());
    }
}
