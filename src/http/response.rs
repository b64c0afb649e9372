//! The HTTP vocabulary every handler speaks: the response type, the one
//! place where a typed [`HttpError`] becomes a status and a
//! `{"error": {"code", "message"}}` body (each code spelled once, here), and
//! bounded body reading. A leaf: it imports only [`crate::auth`]'s error
//! types.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use tokio_util::sync::CancellationToken;

use crate::auth::{Denied, TokenError};
use crate::net::slots::NotAdmitted;

pub type HttpResponse = Response<Full<Bytes>>;

/// Why a request carries no usable credentials (401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unauthorized {
    /// The presented token was refused.
    Token(TokenError),
    /// `Authorization` is not `Bearer <token>`.
    MalformedHeader,
    /// No token, where one is needed.
    NoToken,
}

/// The `code` of a 400 answer: the request is not what the endpoint takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadRequest {
    InvalidBody,
    InvalidJson,
    InvalidRoom,
    InvalidEvent,
    InvalidIdempotencyKey,
    BadHandshake,
    MissingHost,
    InvalidHost,
    /// A query string that lacks or garbles a parameter.
    InvalidQuery,
}

impl BadRequest {
    fn code(self) -> &'static str {
        match self {
            Self::InvalidBody => "invalid_body",
            Self::InvalidJson => "invalid_json",
            Self::InvalidRoom => "invalid_room",
            Self::InvalidEvent => "invalid_event",
            Self::InvalidIdempotencyKey => "invalid_idempotency_key",
            Self::BadHandshake => "bad_handshake",
            Self::MissingHost => "missing_host",
            Self::InvalidHost => "invalid_host",
            Self::InvalidQuery => "invalid_query",
        }
    }
}

/// Why the gateway cannot take the request now (503); each says what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    ShuttingDown,
    TooManyConnections,
    /// More new connections this second than `limits.accept_rate`: retry
    /// after this many seconds (`Retry-After`).
    AcceptRate {
        retry_after_secs: u64,
    },
    Store,
}

impl Unavailable {
    fn code(self) -> &'static str {
        match self {
            Self::ShuttingDown => "shutting_down",
            Self::TooManyConnections => "too_many_connections",
            Self::AcceptRate { .. } => "too_many_new_connections",
            Self::Store => "store_unavailable",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Self::ShuttingDown => "the gateway is shutting down",
            Self::TooManyConnections => {
                "the gateway has reached limits.max_connections; retry later"
            }
            Self::AcceptRate { .. } => {
                "more new connections than limits.accept_rate this second; retry after Retry-After"
            }
            Self::Store => "the event could not be stored; retry later",
        }
    }
}

impl From<NotAdmitted> for HttpError {
    fn from(refused: NotAdmitted) -> Self {
        Self::Unavailable(match refused {
            NotAdmitted::Full => Unavailable::TooManyConnections,
            // Whole seconds, at least one (RFC 9110 takes no fractions).
            NotAdmitted::TooFast { retry_after } => Unavailable::AcceptRate {
                retry_after_secs: (retry_after.as_secs_f64().ceil() as u64).max(1),
            },
        })
    }
}

/// Every way an HTTP request can fail, with its status and code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("no such route")]
    NotFound,
    #[error("method not allowed; use {0}")]
    MethodNotAllowed(Method),
    #[error("{}", unauthorized_message(*.0))]
    Unauthorized(Unauthorized),
    #[error("this token's role may not do that")]
    Forbidden,
    #[error("this page's origin may not call the box (server.allowed_origins)")]
    OriginNotAllowed,
    #[error("the body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{message}")]
    BadRequest { code: BadRequest, message: String },
    #[error("{0}")]
    UpgradeRequired(&'static str),
    #[error("the request body did not arrive within limits.header_timeout")]
    RequestTimeout,
    #[error("{}", .0.message())]
    Unavailable(Unavailable),
    #[error("internal error; see the gateway's log")]
    Internal,
}

fn unauthorized_message(why: Unauthorized) -> String {
    match why {
        Unauthorized::Token(err) => err.to_string(),
        Unauthorized::MalformedHeader => "the Authorization header must be 'Bearer <token>'".into(),
        Unauthorized::NoToken => {
            "this API needs 'Authorization: Bearer <token>' with role service".into()
        }
    }
}

impl HttpError {
    pub fn bad_request(code: BadRequest, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// The answer to an authenticated action that was refused.
    pub fn denied(denied: Denied) -> Self {
        match denied {
            Denied::Unauthorized => Self::Unauthorized(Unauthorized::NoToken),
            Denied::Forbidden => Self::Forbidden,
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Self::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::Unauthorized(why) => {
                let code = match why {
                    Unauthorized::Token(err) => err.code(),
                    Unauthorized::MalformedHeader => TokenError::Invalid.code(),
                    Unauthorized::NoToken => Denied::Unauthorized.code(),
                };
                (StatusCode::UNAUTHORIZED, code)
            }
            Self::Forbidden => (StatusCode::FORBIDDEN, Denied::Forbidden.code()),
            Self::OriginNotAllowed => (StatusCode::FORBIDDEN, "origin_not_allowed"),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code.code()),
            Self::UpgradeRequired(_) => (StatusCode::UPGRADE_REQUIRED, "upgrade_required"),
            Self::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Self::Unavailable(why) => (StatusCode::SERVICE_UNAVAILABLE, why.code()),
            Self::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    pub fn into_response(self) -> HttpResponse {
        let (status, code) = self.status_and_code();
        let body = serde_json::json!({"error": {"code": code, "message": self.to_string()}});
        let mut response = json_response(status, &body);
        if let Self::MethodNotAllowed(allowed) = &self {
            if let Ok(value) = HeaderValue::from_str(allowed.as_str()) {
                response.headers_mut().insert(ALLOW, value);
            }
        }
        if let Self::Unavailable(Unavailable::AcceptRate { retry_after_secs }) = &self {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(*retry_after_secs));
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

/// Refuses what would start new work once shutdown has begun: the one
/// place that decides the shutting-down 503.
pub fn refuse_while_stopping(shutdown: &CancellationToken) -> Result<(), HttpError> {
    if shutdown.is_cancelled() {
        Err(HttpError::Unavailable(Unavailable::ShuttingDown))
    } else {
        Ok(())
    }
}

/// Why a request body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Over the limit (declared or read); carries the limit.
    TooLarge(usize),
    Unreadable,
    /// It trickled: the whole body must arrive within the header timeout.
    TimedOut,
}

impl From<BodyError> for HttpError {
    fn from(err: BodyError) -> Self {
        match err {
            BodyError::TooLarge(limit) => Self::PayloadTooLarge(limit),
            BodyError::TimedOut => Self::RequestTimeout,
            BodyError::Unreadable => Self::bad_request(
                BadRequest::InvalidBody,
                "the request body could not be read",
            ),
        }
    }
}

/// Reads a whole request body of at most `max_bytes`, within `timeout`; a
/// larger declared `Content-Length` is refused before anything is read.
pub async fn read_body(
    request: Request<Incoming>,
    max_bytes: usize,
    timeout: Duration,
) -> Result<Bytes, BodyError> {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<u64>().ok());
    if declared.is_some_and(|length| length > max_bytes as u64) {
        return Err(BodyError::TooLarge(max_bytes));
    }
    let collect = http_body_util::Limited::new(request.into_body(), max_bytes).collect();
    match tokio::time::timeout(timeout, collect).await {
        Err(_) => Err(BodyError::TimedOut),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => {
            Err(BodyError::TooLarge(max_bytes))
        }
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

/// A plain-text response.
pub fn text_response(body: String) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    response
}
