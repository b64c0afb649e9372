//! Prometheus metrics: one registry with every counter the gateway keeps,
//! rendered in the text exposition format for `GET /metrics`.
//!
//! Labels carry kinds and codes, never ids: a patient id must not end up in a
//! monitoring system.

use std::sync::Arc;

use prometheus_client::encoding::{text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RoomKindLabel {
    pub room_kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: &'static str,
    pub status: u16,
}

/// Every metric, registered once; clones share the same values.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub connections: Gauge,
    pub connections_rejected: Counter,
    /// New connections refused by `limits.accept_rate` (503, Retry-After).
    pub connections_paced: Counter,
    pub joins: Family<RoomKindLabel, Counter>,
    pub joins_denied: Family<CodeLabel, Counter>,
    pub client_errors: Family<CodeLabel, Counter>,
    pub events_published: Counter,
    pub frames_delivered: Counter,
    pub slow_consumer_disconnects: Counter,
    /// Socket.IO connections (Engine.IO sessions) closed for breaking the protocol.
    pub socketio_protocol_closes: Family<ReasonLabel, Counter>,
    pub http_requests: Family<HttpLabels, Counter>,
    pub publish_to_send_seconds: Histogram,
    pub store_errors: Counter,
    pub store_in_memory: Gauge,
    pub store_refused: Counter,
    pub outbox_backlog: Gauge,
    pub outbox_dropped: Counter,
    pub replicated_events: Counter,
    pub replication_lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub redis_reconnects: Counter,
    pub remote_events: Counter,
    /// Envelopes from Redis dropped because their signature did not verify.
    pub forged_envelopes: Counter,
    /// Live subscriptions found stalled by their canary and rebuilt.
    pub subscription_stalls: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let connections = Gauge::default();
        let connections_rejected = Counter::default();
        let connections_paced = Counter::default();
        let joins = Family::default();
        let joins_denied = Family::default();
        let client_errors = Family::default();
        let events_published = Counter::default();
        let frames_delivered = Counter::default();
        let slow_consumer_disconnects = Counter::default();
        let socketio_protocol_closes = Family::default();
        let http_requests = Family::default();
        // 50 µs to ~1.6 s: local delivery is expected in the sub-millisecond range.
        let publish_to_send_seconds = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));

        let store_errors = Counter::default();
        let store_in_memory = Gauge::default();
        let store_refused = Counter::default();
        let outbox_backlog = Gauge::default();
        let outbox_dropped = Counter::default();
        let replicated_events = Counter::default();
        let replication_lag_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        let redis_reconnects = Counter::default();
        let remote_events = Counter::default();
        let forged_envelopes = Counter::default();
        let subscription_stalls = Counter::default();

        let mut registry = Registry::with_prefix("smartwait");
        registry.register(
            "store_errors",
            "Commits to state.db that failed (the events were held in memory)",
            store_errors.clone(),
        );
        registry.register(
            "store_in_memory",
            "Events delivered but not yet committed (the store fails)",
            store_in_memory.clone(),
        );
        registry.register(
            "store_refused",
            "Publishes refused: the store fails and the memory journal is full",
            store_refused.clone(),
        );
        registry.register(
            "outbox_backlog",
            "Events waiting to be replicated to Redis",
            outbox_backlog.clone(),
        );
        registry.register(
            "outbox_dropped",
            "Events dropped from a full outbox, never replicated",
            outbox_dropped.clone(),
        );
        registry.register(
            "replicated_events",
            "Events written to the Redis stream",
            replicated_events.clone(),
        );
        registry.register(
            "replication_lag_seconds",
            "Age of the oldest event not yet replicated (0 when caught up)",
            replication_lag_seconds.clone(),
        );
        registry.register(
            "redis_reconnects",
            "Redis connection attempts after a failure",
            redis_reconnects.clone(),
        );
        registry.register(
            "remote_events",
            "Events received from other nodes through Redis",
            remote_events.clone(),
        );
        registry.register(
            "forged_envelopes",
            "Envelopes from Redis dropped unsigned or wrongly signed (redis.signing_key_file)",
            forged_envelopes.clone(),
        );
        registry.register(
            "subscription_stalls",
            "Live Redis subscriptions whose canary did not come back within 2 s, rebuilt",
            subscription_stalls.clone(),
        );
        registry.register(
            "connections",
            "Open client connections of every protocol",
            connections.clone(),
        );
        registry.register(
            "connections_rejected",
            "Upgrades refused because limits.max_connections was reached",
            connections_rejected.clone(),
        );
        registry.register(
            "connections_paced",
            "New connections refused with 503 and Retry-After because more than limits.accept_rate arrived in a second",
            connections_paced.clone(),
        );
        registry.register("joins", "Room joins by room kind", joins.clone());
        registry.register(
            "joins_denied",
            "Refused room joins by code",
            joins_denied.clone(),
        );
        registry.register(
            "client_errors",
            "Client messages answered with an error event, by code",
            client_errors.clone(),
        );
        registry.register(
            "events_published",
            "Events published to rooms",
            events_published.clone(),
        );
        registry.register(
            "frames_delivered",
            "Room frames queued to local clients",
            frames_delivered.clone(),
        );
        registry.register(
            "slow_consumer_disconnects",
            "Clients closed with 1013 because their send queue overflowed",
            slow_consumer_disconnects.clone(),
        );
        registry.register(
            "socketio_protocol_closes",
            "Socket.IO connections or Engine.IO sessions closed for a protocol violation, by reason",
            socketio_protocol_closes.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            http_requests.clone(),
        );
        registry.register(
            "publish_to_send_seconds",
            "Time from publish to the frame being written to a client socket",
            publish_to_send_seconds.clone(),
        );

        Self {
            registry: Arc::new(registry),
            connections,
            connections_rejected,
            connections_paced,
            joins,
            joins_denied,
            client_errors,
            events_published,
            frames_delivered,
            slow_consumer_disconnects,
            socketio_protocol_closes,
            http_requests,
            publish_to_send_seconds,
            store_errors,
            store_in_memory,
            store_refused,
            outbox_backlog,
            outbox_dropped,
            replicated_events,
            replication_lag_seconds,
            redis_reconnects,
            remote_events,
            forged_envelopes,
            subscription_stalls,
        }
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = text::encode(&mut out, &self.registry);
        out
    }
}
