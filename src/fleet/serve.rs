//! `smartwait-gateway fleet serve`: a small central service beside the
//! central Redis (it never connects to a box). `GET /metrics` is the whole
//! fleet as Prometheus text ([`super::metrics`]), `GET /fleet/api/boxes`
//! the fleet as JSON, worst first; both need a `monitor` or `service`
//! token (`auth.mode = off` lets anyone read). `GET /health` says whether
//! the service reaches Redis.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;

use super::{boxes, connect, FleetBox};
use crate::auth::Authenticator;
use crate::config::{mask_url_password, RedisConfig};
use crate::http::api::authorize_monitor;
use crate::http::response::{json_response, text_response, HttpError, HttpResponse};
use crate::replication::connection::RedisConnection;

/// Longest a request's head may take to arrive.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The fleet service's state: where Redis is, who may read.
struct FleetService {
    redis: RedisConfig,
    auth: Authenticator,
    /// Kept between requests; dropped after an error, and made again.
    connection: tokio::sync::Mutex<Option<RedisConnection>>,
}

impl FleetService {
    /// The fleet now, or why Redis could not be read.
    async fn fleet(&self) -> anyhow::Result<Vec<FleetBox>> {
        let mut cached = self.connection.lock().await;
        if cached.is_none() {
            *cached = Some(connect(&self.redis).await?);
        }
        let Some(connection) = cached.as_mut() else {
            anyhow::bail!("no Redis connection");
        };
        let read = boxes(connection, None).await;
        if read.is_err() {
            *cached = None;
        }
        read
    }

    async fn respond(&self, request: Request<Incoming>) -> HttpResponse {
        match self.route(request).await {
            Ok(response) => response,
            Err(err) => err.into_response(),
        }
    }

    async fn route(&self, request: Request<Incoming>) -> Result<HttpResponse, HttpError> {
        let path = request.uri().path().trim_end_matches('/');
        let path = if path.is_empty() { "/" } else { path };
        if request.method() != Method::GET {
            return Err(HttpError::MethodNotAllowed(Method::GET));
        }
        match path {
            "/health" => {
                let reachable = self.fleet().await.is_ok();
                Ok(json_response(
                    StatusCode::OK,
                    &json!({"status": if reachable { "ok" } else { "degraded" }, "redis": reachable}),
                ))
            }
            "/metrics" => {
                authorize_monitor(&self.auth, &request)?;
                let started = Instant::now();
                let fleet = self.fleet().await;
                if let Err(err) = &fleet {
                    tracing::warn!(
                        error = format!("{err:#}"),
                        "cannot read the fleet from Redis"
                    );
                }
                let text =
                    super::metrics::render(fleet.as_deref().ok(), started.elapsed().as_secs_f64());
                let mut response = text_response(text);
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                Ok(response)
            }
            "/fleet/api/boxes" => {
                authorize_monitor(&self.auth, &request)?;
                match self.fleet().await {
                    Ok(fleet) => Ok(json_response(StatusCode::OK, &json!({"boxes": fleet}))),
                    Err(err) => {
                        tracing::warn!(
                            error = format!("{err:#}"),
                            "cannot read the fleet from Redis"
                        );
                        Ok(json_response(
                            StatusCode::SERVICE_UNAVAILABLE,
                            &json!({"error": {"code": "redis_unreachable", "message": "the central Redis cannot be read"}}),
                        ))
                    }
                }
            }
            _ => Err(HttpError::NotFound),
        }
    }
}

/// Serves until SIGINT or SIGTERM.
pub async fn serve(
    redis: RedisConfig,
    auth: Authenticator,
    listen: SocketAddr,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let address = listener
        .local_addr()
        .context("cannot read the listen address")?;
    tracing::info!(
        redis = %mask_url_password(&redis.url),
        "fleet service listening on http://{address} (metrics: /metrics, boxes: /fleet/api/boxes)"
    );
    let service = Arc::new(FleetService {
        redis,
        auth,
        connection: tokio::sync::Mutex::new(None),
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
        let service = service.clone();
        tokio::spawn(async move {
            let handler = hyper::service::service_fn(move |request| {
                let service = service.clone();
                async move { Ok::<_, Infallible>(service.respond(request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .serve_connection(TokioIo::new(stream), handler)
                .await;
        });
    }
    tracing::info!("fleet service stopped");
    Ok(())
}
