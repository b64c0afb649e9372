//! `smartwait-gateway fleet serve`: a small central service beside the
//! central Redis (it never connects to a box). One task reads the fleet
//! every 2 s (a box's report only when it moved, [`FleetReader`]) and the
//! page, `/metrics`, `/fleet/api/boxes` and `/health` answer from that
//! read: a scrape or a page view costs Redis nothing. `GET /metrics` is the whole
//! fleet as Prometheus text ([`super::metrics`]), `GET /fleet` a page that
//! shows every box live (`/fleet/api/stream`, Server-Sent Events pushed as
//! the service reads the fleet every 2 s) with each box's states over 7
//! days (`/fleet/api/timeline`), `GET /fleet/api/boxes` the fleet as JSON,
//! worst first, and `POST /fleet/api/announce` sends an operator's
//! message to one clinic's screens ([`super::announce`], `service` token).
//! The others need a `monitor` or `service` token, as a bearer
//! header or `?token=` (`auth.mode = off` lets anyone read). `GET /health`
//! says whether the service reaches Redis. With `server.tls_cert` and
//! `server.tls_key` (the gateway's keys) it serves HTTPS only. The service records when it
//! sees a box go missing (`missing` in the fleet's events), so the
//! timeline shows the gap.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::announce::{self, Announcement, Refused};
use super::{BoxState, FleetBox, FleetReader, MISSING_AFTER_MS};
use crate::auth::Authenticator;
use crate::clock::{rfc3339_ms, unix_ms};
use crate::config::{mask_url_password, RedisConfig, ServerConfig};
use crate::http::api::authorize_monitor;
use crate::http::query::query_param;
use crate::http::response::{
    json_response, read_body, text_response, BadRequest, HttpError, HttpResponse, Unauthorized,
};
use crate::net::tls::Tls;
use crate::replication::connection::{connect, RedisConnection};
use crate::replication::keys;

/// The largest announcement body taken.
const ANNOUNCEMENT_MAX_BYTES: usize = 64 * 1024;

/// Longest a request's head (or an announcement's body) may take to arrive.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the service reads the fleet for the page.
const READ_EVERY: Duration = Duration::from_secs(2);

/// How far back the timeline of one box reaches.
const TIMELINE_MS: u64 = 7 * 24 * 3600 * 1000;

/// Entries of the fleet's event stream one timeline reads at most.
const TIMELINE_MAX_ENTRIES: usize = 100_000;

/// The page and its script, served as they are (no build step, no CDN).
const PAGE: &str = include_str!("../../web/fleet/index.html");
const SCRIPT: &str = include_str!("../../web/fleet/fleet.js");

type Body = BoxBody<Bytes, Infallible>;

/// How long an answer waits for the service's first read after its start.
const FIRST_READ_WAIT: Duration = Duration::from_secs(5);

/// A read older than this means the watcher is stuck: Redis counts as
/// unreachable.
const STALE_AFTER: Duration = Duration::from_secs(15);

/// The fleet as the watcher last read it (every [`READ_EVERY`]): the page,
/// `/metrics`, `/fleet/api/boxes` and `/health` all answer from it, so a
/// scrape or a page view costs Redis nothing.
struct FleetRead {
    /// The boxes and the page's JSON of them, or why Redis could not be read.
    fleet: Result<(Vec<FleetBox>, String), String>,
    /// How long the read took.
    seconds: f64,
    at: Instant,
    /// False for the placeholder before the first read.
    done: bool,
}

type Snapshot = Arc<FleetRead>;

/// The fleet service's state: its Redis connection, who may read, the last read.
struct FleetService {
    auth: Authenticator,
    connection: tokio::sync::Mutex<CachedConnection>,
    snapshot: watch::Receiver<Snapshot>,
    /// `DIR/<clinic>` holds a clinic's signing key (`--signing-keys`).
    signing_keys: Option<std::path::PathBuf>,
}

fn full(response: Response<http_body_util::Full<Bytes>>) -> Response<Body> {
    response.map(|body| body.boxed())
}

/// A connection kept between uses; dropped after an error, made again at
/// the next use.
struct CachedConnection {
    redis: RedisConfig,
    connection: Option<RedisConnection>,
}

impl CachedConnection {
    fn new(redis: RedisConfig) -> Self {
        Self {
            redis,
            connection: None,
        }
    }

    /// The connection, made when there is none.
    async fn get(&mut self) -> anyhow::Result<&mut RedisConnection> {
        if self.connection.is_none() {
            self.connection = Some(connect(&self.redis).await?);
        }
        self.connection
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("no Redis connection"))
    }

    /// Passes `result` on; an error drops the connection.
    fn checked<T>(&mut self, result: anyhow::Result<T>) -> anyhow::Result<T> {
        if result.is_err() {
            self.connection = None;
        }
        result
    }
}

impl FleetService {
    /// The watcher's last read, and whether it is fresh; just after the
    /// start, waits (a few seconds at most) for the first.
    async fn last_read(&self) -> (Snapshot, bool) {
        if !self.snapshot.borrow().done {
            let mut first = self.snapshot.clone();
            let _ = tokio::time::timeout(FIRST_READ_WAIT, first.wait_for(|read| read.done)).await;
        }
        let snapshot = self.snapshot.borrow().clone();
        let fresh = snapshot.fleet.is_ok() && snapshot.at.elapsed() < STALE_AFTER;
        (snapshot, fresh)
    }

    async fn respond(&self, request: Request<Incoming>) -> Response<Body> {
        match self.route(request).await {
            Ok(response) => response,
            Err(err) => full(err.into_response()),
        }
    }

    /// A `monitor` or `service` token, from the header or (for the page and
    /// its event stream, which a browser opens without headers) `?token=`.
    fn authorize(&self, request: &Request<Incoming>) -> Result<(), HttpError> {
        if request.headers().contains_key(AUTHORIZATION) {
            return authorize_monitor(&self.auth, request);
        }
        match query_param(request.uri().query(), "token") {
            Some(token) => {
                let identity = self
                    .auth
                    .identify(Some(&token))
                    .map_err(|err| HttpError::Unauthorized(Unauthorized::Token(err)))?;
                self.auth.may_monitor(&identity).map_err(HttpError::denied)
            }
            None => authorize_monitor(&self.auth, request),
        }
    }

    async fn route(&self, request: Request<Incoming>) -> Result<Response<Body>, HttpError> {
        let path = request.uri().path().trim_end_matches('/');
        let path = if path.is_empty() { "/" } else { path };
        if path == "/fleet/api/announce" {
            if request.method() != Method::POST {
                return Err(HttpError::MethodNotAllowed(Method::POST));
            }
            return self.announce(request).await;
        }
        if request.method() != Method::GET {
            return Err(HttpError::MethodNotAllowed(Method::GET));
        }
        match path {
            "/health" => {
                let (_, reachable) = self.last_read().await;
                Ok(full(json_response(
                    StatusCode::OK,
                    &json!({"status": if reachable { "ok" } else { "degraded" }, "redis": reachable}),
                )))
            }
            "/metrics" => {
                self.authorize(&request)?;
                let (snapshot, fresh) = self.last_read().await;
                let fleet = match &snapshot.fleet {
                    Ok((fleet, _)) if fresh => Some(fleet.as_slice()),
                    _ => None,
                };
                let text = super::metrics::render(fleet, snapshot.seconds);
                let mut response = text_response(text);
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                Ok(full(response))
            }
            "/fleet" => {
                self.authorize(&request)?;
                Ok(asset(PAGE, "text/html; charset=utf-8"))
            }
            // The script holds no data: it needs no token.
            "/fleet/fleet.js" => Ok(asset(SCRIPT, "text/javascript; charset=utf-8")),
            "/fleet/api/boxes" => {
                self.authorize(&request)?;
                let clinic = query_param(request.uri().query(), "clinic");
                let (snapshot, fresh) = self.last_read().await;
                match &snapshot.fleet {
                    Ok((fleet, _)) if fresh => {
                        let of_clinic: Vec<&FleetBox> = fleet
                            .iter()
                            .filter(|fleet_box| {
                                clinic
                                    .as_deref()
                                    .is_none_or(|wanted| fleet_box.clinic == wanted)
                            })
                            .collect();
                        Ok(full(json_response(
                            StatusCode::OK,
                            &json!({"boxes": of_clinic}),
                        )))
                    }
                    _ => Ok(full(unreachable())),
                }
            }
            "/fleet/api/stream" => {
                self.authorize(&request)?;
                Ok(self.stream())
            }
            "/fleet/api/timeline" => {
                self.authorize(&request)?;
                let query = request.uri().query();
                let (Some(clinic), Some(node)) =
                    (query_param(query, "clinic"), query_param(query, "node"))
                else {
                    return Err(HttpError::bad_request(
                        BadRequest::InvalidQuery,
                        "timeline needs clinic and node",
                    ));
                };
                match self.timeline(&clinic, &node).await {
                    Ok(timeline) => Ok(full(json_response(StatusCode::OK, &timeline))),
                    Err(err) => {
                        tracing::warn!(
                            error = format!("{err:#}"),
                            "cannot read the fleet's events"
                        );
                        Ok(full(unreachable()))
                    }
                }
            }
            _ => Err(HttpError::NotFound),
        }
    }

    /// `POST /fleet/api/announce` with a `service` token: an operator's
    /// message to one clinic's screens ([`super::announce`]).
    async fn announce(&self, request: Request<Incoming>) -> Result<Response<Body>, HttpError> {
        let identity = self.bearer(&request)?;
        self.auth
            .may_publish(&identity)
            .map_err(HttpError::denied)?;
        let body = read_body(request, ANNOUNCEMENT_MAX_BYTES, HEAD_TIMEOUT).await?;
        let announcement: Announcement = serde_json::from_slice(&body).map_err(|err| {
            HttpError::bad_request(
                BadRequest::InvalidJson,
                format!("invalid announcement: {err}"),
            )
        })?;
        let checked = announcement.check().map_err(|refused| {
            let code = match refused {
                Refused::Clinic => BadRequest::InvalidBody,
                Refused::Room => BadRequest::InvalidRoom,
                Refused::Event => BadRequest::InvalidEvent,
            };
            HttpError::bad_request(code, refused.to_string())
        })?;
        let mut cached = self.connection.lock().await;
        let sent = match cached.get().await {
            Ok(connection) => {
                announce::publish(connection, self.signing_keys.as_deref(), checked).await
            }
            Err(err) => Err(err),
        };
        match cached.checked(sent) {
            Ok(sent) => Ok(full(json_response(StatusCode::ACCEPTED, &sent))),
            Err(err) => {
                tracing::warn!(error = format!("{err:#}"), "cannot publish an announcement");
                Ok(full(unreachable()))
            }
        }
    }

    /// Who the bearer header names (anonymous without one).
    fn bearer(&self, request: &Request<Incoming>) -> Result<crate::auth::Identity, HttpError> {
        let token = match request.headers().get(AUTHORIZATION) {
            None => None,
            Some(value) => match value
                .to_str()
                .ok()
                .and_then(|text| text.strip_prefix("Bearer "))
            {
                Some(token) => Some(token.trim().to_owned()),
                None => return Err(HttpError::Unauthorized(Unauthorized::MalformedHeader)),
            },
        };
        self.auth
            .identify(token.as_deref())
            .map_err(|err| HttpError::Unauthorized(Unauthorized::Token(err)))
    }

    /// Server-Sent Events: the fleet at once, then each time it is read.
    fn stream(&self) -> Response<Body> {
        let snapshots = self.snapshot.clone();
        let events =
            futures_util::stream::unfold((snapshots, true), |(mut snapshots, first)| async move {
                if !first && snapshots.changed().await.is_err() {
                    return None;
                }
                if first && !snapshots.borrow().done {
                    let _ =
                        tokio::time::timeout(FIRST_READ_WAIT, snapshots.wait_for(|read| read.done))
                            .await;
                }
                let snapshot = snapshots.borrow_and_update().clone();
                let event = match &snapshot.fleet {
                    Ok((_, page)) => format!("event: boxes\ndata: {page}\n\n"),
                    Err(why) => format!("event: unreachable\ndata: {}\n\n", json!(why)),
                };
                Some((
                    Ok::<_, Infallible>(Frame::data(Bytes::from(event))),
                    (snapshots, false),
                ))
            });
        let mut response = Response::new(StreamBody::new(events).boxed());
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }

    /// One box's state changes over the last 7 days, oldest first, with
    /// the state it was in before them.
    async fn timeline(&self, clinic: &str, node: &str) -> anyhow::Result<Value> {
        let now = unix_ms();
        let from = now.saturating_sub(TIMELINE_MS);
        let mut cached = self.connection.lock().await;
        let read = redis::cmd("XRANGE")
            .arg(keys::FLEET_EVENTS)
            .arg(format!("{from}-0"))
            .arg("+")
            .arg("COUNT")
            .arg(TIMELINE_MAX_ENTRIES)
            .query_async::<Vec<(String, HashMap<String, String>)>>(cached.get().await?)
            .await
            .context("cannot read the fleet's events");
        let entries = cached.checked(read)?;
        let changes: Vec<Value> = entries
            .into_iter()
            .filter(|(_, fields)| {
                fields.get("clinic").map(String::as_str) == Some(clinic)
                    && fields.get("node").map(String::as_str) == Some(node)
            })
            .filter_map(|(id, fields)| {
                let at_ms: u64 = id.split('-').next()?.parse().ok()?;
                Some(json!({
                    "atMs": at_ms,
                    "at": rfc3339_ms(at_ms),
                    "state": fields.get("state")?,
                    "why": fields.get("why"),
                }))
            })
            .collect();
        Ok(json!({"clinic": clinic, "node": node, "from": from, "to": now, "changes": changes}))
    }
}

fn asset(body: &'static str, content_type: &'static str) -> Response<Body> {
    let mut response =
        Response::new(http_body_util::Full::new(Bytes::from_static(body.as_bytes())).boxed());
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn unreachable() -> HttpResponse {
    json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &json!({"error": {"code": "redis_unreachable", "message": "the central Redis cannot be read"}}),
    )
}

/// Serves one HTTP/1.1 connection until it closes.
async fn serve_connection<Io>(io: Io, service: Arc<FleetService>)
where
    Io: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let handler = hyper::service::service_fn(move |request| {
        let service = service.clone();
        async move { Ok::<_, Infallible>(service.respond(request).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .serve_connection(io, handler)
        .await;
}

/// Reads the fleet every [`READ_EVERY`] for the page, and records in the
/// fleet's events when a box is first seen missing (a box that vanishes
/// cannot say so itself).
async fn watch_fleet(redis: RedisConfig, snapshots: watch::Sender<Snapshot>) {
    let mut connection = CachedConnection::new(redis);
    let mut reader = FleetReader::default();
    let mut missing: HashMap<String, bool> = HashMap::new();
    let mut failing = false;
    loop {
        let started = Instant::now();
        let read = async {
            let redis_connection = connection.get().await?;
            let fleet = reader.read(redis_connection, None).await?;
            for fleet_box in &fleet {
                let member = keys::fleet_member(&fleet_box.clinic, &fleet_box.node);
                let is_missing = matches!(fleet_box.state, BoxState::Missing { .. });
                let was_missing = missing.insert(member, is_missing);
                // Told once per disappearance; not for boxes already gone when the service started.
                if is_missing && was_missing == Some(false) {
                    record_missing(redis_connection, fleet_box).await?;
                }
            }
            let summaries: Vec<Value> = fleet.iter().map(summary).collect();
            let page = serde_json::to_string(&json!({"boxes": summaries}))?;
            Ok((fleet, page))
        }
        .await;
        let fleet = connection
            .checked(read)
            .map_err(|err: anyhow::Error| format!("{err:#}"));
        // Said when it changes, not every 2 s while Redis is down.
        match (&fleet, failing) {
            (Err(why), false) => tracing::warn!(error = %why, "cannot read the fleet from Redis"),
            (Ok(_), true) => tracing::info!("reads the fleet from Redis again"),
            _ => {}
        }
        failing = fleet.is_err();
        let snapshot = FleetRead {
            fleet,
            seconds: started.elapsed().as_secs_f64(),
            at: Instant::now(),
            done: true,
        };
        if snapshots.send(Arc::new(snapshot)).is_err() {
            return;
        }
        tokio::time::sleep(READ_EVERY).await;
    }
}

/// What the page's table shows of a box (the whole report is fetched on
/// a click): a tenth of the bytes to push every 2 s.
fn summary(fleet_box: &FleetBox) -> Value {
    let report = &fleet_box.report;
    // Built from the parts, not the box: its full report stays text.
    let mut summary = serde_json::to_value(&fleet_box.state).unwrap_or_else(|_| json!({}));
    summary["clinic"] = json!(fleet_box.clinic);
    summary["node"] = json!(fleet_box.node);
    summary["lastSeen"] = json!(fleet_box.last_seen);
    summary["report"] = json!({
        "version": report["version"],
        "connectedClients": report["connectedClients"],
        "backlog": report["backlog"],
        "store": {"state": report["store"]["state"]},
    });
    summary
}

async fn record_missing(
    connection: &mut RedisConnection,
    fleet_box: &FleetBox,
) -> anyhow::Result<()> {
    let at = fleet_box.last_seen_ms + MISSING_AFTER_MS;
    let _: String = redis::cmd("XADD")
        .arg(keys::FLEET_EVENTS)
        .arg("MAXLEN")
        .arg("~")
        .arg(100_000)
        .arg("*")
        .arg("clinic")
        .arg(&fleet_box.clinic)
        .arg("node")
        .arg(&fleet_box.node)
        .arg("state")
        .arg("missing")
        .arg("at")
        .arg(rfc3339_ms(at))
        .query_async(connection)
        .await
        .context("cannot record a missing box")?;
    Ok(())
}

/// Serves until SIGINT or SIGTERM; announcements to a clinic are signed
/// with its key from `signing_keys/<clinic>` when that file exists.
pub async fn serve(
    redis: RedisConfig,
    auth: Authenticator,
    listen: SocketAddr,
    signing_keys: Option<std::path::PathBuf>,
    server: &ServerConfig,
) -> anyhow::Result<()> {
    // The same keys as the gateway's: server.tls_cert and server.tls_key.
    let tls = Tls::from_config(server)?.map(Arc::new);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let address = listener
        .local_addr()
        .context("cannot read the listen address")?;
    tracing::info!(
        redis = %mask_url_password(&redis.url),
        "fleet service listening on {scheme}://{address} (page: /fleet?token=..., metrics: /metrics)"
    );
    let (snapshots, snapshot) = watch::channel::<Snapshot>(Arc::new(FleetRead {
        fleet: Err("not read yet".to_owned()),
        seconds: 0.0,
        at: Instant::now(),
        done: false,
    }));
    let watcher = tokio::spawn(watch_fleet(redis.clone(), snapshots));
    let service = Arc::new(FleetService {
        auth,
        connection: tokio::sync::Mutex::new(CachedConnection::new(redis)),
        snapshot,
        signing_keys,
    });
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    loop {
        let accepted = tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        // A response's head and body go out at once, not 40 ms apart.
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                Some(tls) => match tls.acceptor().accept(stream).await {
                    Ok(stream) => serve_connection(TokioIo::new(stream), service).await,
                    Err(err) => tracing::debug!(error = %err, "TLS handshake failed"),
                },
                None => serve_connection(TokioIo::new(stream), service).await,
            }
        });
    }
    watcher.abort();
    tracing::info!("fleet service stopped");
    Ok(())
}
