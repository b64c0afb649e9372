//! Cross-origin requests from browsers: the HTTP API, health, metrics and
//! Socket.IO polling answer preflights and carry `Access-Control-Allow-Origin`
//! only for an origin listed in `server.allowed_origins` (exact match, no
//! wildcard: the API takes bearer tokens). Any other origin gets no CORS
//! headers, so the browser keeps the answer from the page.

use hyper::header::{
    HeaderMap, HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE, ORIGIN, VARY,
};
use hyper::StatusCode;

use super::response::{HttpError, HttpResponse};

/// The origins other than the box's own that may call it from a browser.
#[derive(Debug, Clone, Default)]
pub struct Cors {
    allowed: Vec<String>,
}

impl Cors {
    pub fn new(allowed: Vec<String>) -> Self {
        Self { allowed }
    }

    /// The request's `Origin`, when it is one of the allowed.
    pub fn allowed_origin(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let origin = headers.get(ORIGIN)?;
        let text = origin.to_str().ok()?;
        self.allowed
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(text))
            .then(|| origin.clone())
    }

    /// The answer to an `OPTIONS` preflight.
    pub fn preflight(&self, headers: &HeaderMap) -> HttpResponse {
        let Some(origin) = self.allowed_origin(headers) else {
            return HttpError::OriginNotAllowed.into_response();
        };
        let mut response = HttpResponse::default();
        *response.status_mut() = StatusCode::NO_CONTENT;
        let out = response.headers_mut();
        out.insert(
            ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        out.insert(
            ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, idempotency-key"),
        );
        out.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        Self::allow(&mut response, origin);
        response
    }

    /// Lets the page at `origin` read `response`.
    pub fn allow(response: &mut HttpResponse, origin: HeaderValue) {
        let headers = response.headers_mut();
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.append(VARY, HeaderValue::from_static("Origin"));
    }
}
