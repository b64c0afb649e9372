//! Health and metrics endpoints: `/health` (the seed's fields first),
//! `/health/live`, `/health/ready` (a canary really travels through the rooms
//! core) and `/metrics`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::response::{json_response, HttpResponse};
use crate::clock::{timestamp_now, unix_ms, Clock};
use crate::core::rooms::Rooms;
use crate::metrics::Metrics;
use crate::net::slots::ConnectionSlots;
use crate::net::tls::CertificateExpiry;
use crate::publish::store_health::{StoreHealth, StoreState};
use crate::publish::Outbox;
use crate::replication::status::{degraded_why, BoxConditions, LinkState, ReplicationStatus};
use crate::store;

/// How long the readiness canary may take through the rooms core.
const CANARY_TIMEOUT: Duration = Duration::from_secs(1);

/// What the health endpoints look at; built by the gateway.
#[derive(Debug)]
pub struct Health {
    pub rooms: Rooms,
    pub outbox: Arc<Outbox>,
    pub replication: Arc<ReplicationStatus>,
    pub store: Arc<StoreHealth>,
    /// Where `state.db` is, for its size and the free space beside it.
    pub state_dir: std::path::PathBuf,
    pub slots: ConnectionSlots,
    pub metrics: Metrics,
    pub started: Instant,
    pub clock: Clock,
    /// `Some` when TLS is on.
    pub certificate: Option<CertificateExpiry>,
    pub shutdown: CancellationToken,
}

impl Health {
    /// `GET /health`: 200 while serving (`degraded` while a configured Redis
    /// is not connected, the store cannot write, or the clock is off from the
    /// central Redis's by more than 2 s: the clinic is still served), 503
    /// while shutting down.
    pub fn status(&self) -> HttpResponse {
        let stopping = self.shutdown.is_cancelled();
        let link = self.replication.status();
        let redis_connected = link.state == LinkState::Connected;
        let store_status = self.store.status();
        let clock = self.clock.status();
        let now = unix_ms();
        let redis_why = link.path_degraded(now);
        let degraded = degraded_why(
            &link,
            BoxConditions {
                store_ok: store_status.state == StoreState::Ok,
                clock_off: clock.off(),
                certificate_expired: self
                    .certificate
                    .as_ref()
                    .is_some_and(|expiry| expiry.expired(now)),
            },
            now,
        );
        let status = if stopping {
            "shutting_down"
        } else if degraded.is_none() {
            "healthy"
        } else {
            "degraded"
        };
        let mut store_json = serde_json::to_value(&store_status).unwrap_or_default();
        let disk = store::disk_usage(&self.state_dir);
        store_json["freeBytes"] = json!(disk.free_bytes);
        store_json["sizeBytes"] = json!(disk.size_bytes);
        let outbox = &self.outbox;
        let body = json!({
            "status": status,
            "connectedClients": self.slots.connected_clients(),
            "redisAdapter": redis_connected,
            "why": degraded,
            "redis": {
                "state": if redis_why.is_some() { json!("degraded") } else { json!(link.state) },
                "why": redis_why,
                "stream": link.stream,
                "canary": link.canary,
                "replicas": link.replicas,
                "backlog": outbox.backlog.load(Ordering::Relaxed),
                "lastReplicatedSeq": link.last_replicated_seq,
                "droppedEvents": outbox.dropped.load(Ordering::Relaxed),
                "forgedEnvelopes": self.metrics.forged_envelopes.get(),
                "lastError": link.last_error,
            },
            "store": store_json,
            "clock": clock,
            "tls": self.certificate.as_ref().map(|expiry| expiry.describe(now)),
        "rooms": self.rooms.counts(),
            "lastSeq": self.rooms.last_seq(),
            "slowConsumerDisconnects": self.metrics.slow_consumer_disconnects.get(),
            "uptimeSeconds": self.started.elapsed().as_secs(),
            "version": env!("CARGO_PKG_VERSION"),
            "timestamp": timestamp_now(),
        });
        let status = if stopping {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        json_response(status, &body)
    }

    /// `GET /health/ready`: listening, not stopping, and a canary event reaches
    /// a subscriber through the rooms core within a second.
    pub async fn ready(&self) -> HttpResponse {
        if self.shutdown.is_cancelled() {
            return json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "shutting_down"}),
            );
        }
        if self.store.refusing() {
            return json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "not_ready", "reason": "the store cannot write and the memory journal is full: publishes are refused"}),
            );
        }
        if self.rooms.probe(CANARY_TIMEOUT).await {
            json_response(StatusCode::OK, &json!({"status": "ready"}))
        } else {
            tracing::error!("readiness canary did not travel through the rooms core in time");
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "not_ready", "reason": "canary event was not delivered within 1 s"}),
            )
        }
    }

    /// `GET /metrics` in the Prometheus text format.
    pub fn metrics(&self) -> HttpResponse {
        let mut response = Response::new(Full::new(Bytes::from(self.metrics.render())));
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        response
    }
}

/// `GET /health/live`: the process and its runtime answer.
pub fn live() -> HttpResponse {
    json_response(StatusCode::OK, &json!({"status": "alive"}))
}
