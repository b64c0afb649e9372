//! HTTP front: the route table, and the one place where a typed
//! [`HttpError`] becomes a status and a `{"error": {"code", "message"}}` body.
//!
//! Each route's work lives in its own module (`api`, `health`, `ws`); this
//! module only dispatches and counts requests by route and status.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};

use crate::api::Endpoint;
use crate::gateway::Shared;
use crate::metrics::HttpLabels;
use crate::screens::Asset;

pub type HttpResponse = Response<Full<Bytes>>;

/// What a request path means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    WebSocket,
    SocketIo,
    Health,
    HealthLive,
    HealthReady,
    Metrics,
    Api(Endpoint),
    /// A reference screen or the JavaScript client ([`crate::screens`]).
    Screen(&'static Asset),
}

impl Route {
    /// Resolves a path; `Err` when no route has it.
    pub fn resolve(path: &str) -> Option<Self> {
        let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
        let route = match segments.as_slice() {
            ["ws"] => Self::WebSocket,
            ["socket.io"] => Self::SocketIo,
            ["health"] => Self::Health,
            ["health", "live"] => Self::HealthLive,
            ["health", "ready"] => Self::HealthReady,
            ["metrics"] => Self::Metrics,
            ["api", "broadcast"] => Self::Api(Endpoint::Broadcast),
            ["api", "patients", id, "position"] => Self::Api(Endpoint::Position((*id).to_owned())),
            ["api", "patients", id, "called"] => Self::Api(Endpoint::Called((*id).to_owned())),
            ["api", "queue", "update"] => Self::Api(Endpoint::QueueUpdate),
            ["api", "queue", "refresh"] => Self::Api(Endpoint::QueueRefresh),
            ["api", "queue", "new-patient"] => Self::Api(Endpoint::NewPatient),
            other => Self::Screen(crate::screens::resolve(other)?),
        };
        Some(route)
    }

    /// The methods the route answers; the first is named in 405 answers.
    fn methods(&self) -> &'static [Method] {
        match self {
            Self::Api(_) => &[Method::POST],
            Self::SocketIo => &[Method::GET, Method::POST],
            _ => &[Method::GET],
        }
    }

    /// The route's name in metrics, without ids.
    fn label(&self) -> &'static str {
        match self {
            Self::WebSocket => "/ws",
            Self::SocketIo => "/socket.io/",
            Self::Health => "/health",
            Self::HealthLive => "/health/live",
            Self::HealthReady => "/health/ready",
            Self::Metrics => "/metrics",
            Self::Api(endpoint) => endpoint.label(),
            Self::Screen(asset) => asset.path,
        }
    }
}

/// Every way an HTTP request can fail, with its status and code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("no such route")]
    NotFound,
    #[error("method not allowed; use {0}")]
    MethodNotAllowed(Method),
    #[error("{message}")]
    Unauthorized { code: &'static str, message: String },
    #[error("this token's role may not do that")]
    Forbidden,
    #[error("this page's origin may not open a WebSocket here (server.allowed_origins)")]
    OriginNotAllowed,
    #[error("the body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("{0}")]
    UpgradeRequired(&'static str),
    #[error("the request body did not arrive within limits.header_timeout")]
    RequestTimeout,
    #[error("{message}")]
    Unavailable { code: &'static str, message: String },
    #[error("internal error; see the gateway's log")]
    Internal,
    /// An Engine.IO error, answered 400 in Engine.IO's own shape
    /// `{"code", "message"}` that Socket.IO clients understand.
    #[error("{message}")]
    EngineIo { code: u8, message: String },
}

impl HttpError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::Unavailable {
            code,
            message: message.into(),
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Self::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::Unauthorized { code, .. } => (StatusCode::UNAUTHORIZED, code),
            Self::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            Self::OriginNotAllowed => (StatusCode::FORBIDDEN, "origin_not_allowed"),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            Self::UpgradeRequired(_) => (StatusCode::UPGRADE_REQUIRED, "upgrade_required"),
            Self::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Self::Unavailable { code, .. } => (StatusCode::SERVICE_UNAVAILABLE, code),
            Self::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            Self::EngineIo { .. } => (StatusCode::BAD_REQUEST, "engine_io"),
        }
    }

    pub fn into_response(self) -> HttpResponse {
        if let Self::EngineIo { code, message } = &self {
            return json_response(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({"code": code, "message": message}),
            );
        }
        let (status, code) = self.status_and_code();
        let body = serde_json::json!({"error": {"code": code, "message": self.to_string()}});
        let mut response = json_response(status, &body);
        if let Self::MethodNotAllowed(allowed) = &self {
            if let Ok(value) = HeaderValue::from_str(allowed.as_str()) {
                response.headers_mut().insert(ALLOW, value);
            }
        }
        if let Self::UpgradeRequired(_) = &self {
            response.headers_mut().insert(
                hyper::header::UPGRADE,
                HeaderValue::from_static("websocket"),
            );
        }
        response
    }
}

/// Why a request body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    TooLarge,
    Unreadable,
    /// It trickled: the whole body must arrive within the header timeout.
    TimedOut,
}

/// Reads a whole request body of at most `max_bytes`, within `timeout`.
pub async fn read_body(
    request: Request<Incoming>,
    max_bytes: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, BodyError> {
    let collect = http_body_util::Limited::new(request.into_body(), max_bytes).collect();
    match tokio::time::timeout(timeout, collect).await {
        Err(_) => Err(BodyError::TimedOut),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge),
        Ok(Err(_)) => Err(BodyError::Unreadable),
    }
}

/// A JSON response with `status`.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Handles one request: route, method, then the route's own checks.
pub async fn handle(
    shared: Arc<Shared>,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Result<HttpResponse, std::convert::Infallible> {
    let route = Route::resolve(request.uri().path());
    let label = route.as_ref().map_or("unknown", Route::label);
    let response = match route {
        None => HttpError::NotFound.into_response(),
        Some(route) if !route.methods().contains(request.method()) => {
            HttpError::MethodNotAllowed(route.methods()[0].clone()).into_response()
        }
        Some(route) => dispatch(&shared, peer, route, request)
            .await
            .unwrap_or_else(HttpError::into_response),
    };
    shared
        .metrics
        .http_requests
        .get_or_create(&HttpLabels {
            route: label,
            status: response.status().as_u16(),
        })
        .inc();
    Ok(response)
}

async fn dispatch(
    shared: &Arc<Shared>,
    peer: SocketAddr,
    route: Route,
    request: Request<Incoming>,
) -> Result<HttpResponse, HttpError> {
    match route {
        Route::WebSocket => crate::ws::upgrade(shared, peer, request),
        Route::SocketIo => crate::eio_server::handle(shared, peer, request).await,
        Route::Health => Ok(crate::health::status(shared)),
        Route::HealthLive => Ok(crate::health::live()),
        Route::HealthReady => Ok(crate::health::ready(shared).await),
        Route::Metrics => Ok(crate::health::metrics(shared)),
        Route::Api(endpoint) => crate::api::publish(shared, endpoint, request).await,
        Route::Screen(asset) => Ok(asset.respond(request.headers())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_resolve() {
        assert_eq!(Route::resolve("/ws"), Some(Route::WebSocket));
        assert_eq!(Route::resolve("/health/"), Some(Route::Health));
        assert_eq!(
            Route::resolve("/api/patients/12/position"),
            Some(Route::Api(Endpoint::Position("12".into())))
        );
        assert_eq!(
            Route::resolve("/api/patients//position"),
            Some(Route::Api(Endpoint::Position(String::new())))
        );
        assert_eq!(Route::resolve("/api/nope"), None);
        assert_eq!(Route::resolve("/api"), None);
        assert!(matches!(Route::resolve("/"), Some(Route::Screen(_))));
    }
}
