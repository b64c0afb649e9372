//! Revoking tokens: `POST /api/tokens/revoke` (`{"sub"}` or `{"jti"}`, and
//! an optional `"until"`, Unix seconds) and `GET /api/tokens/revoked`, both
//! for role `service`.
//!
//! A revocation takes effect in memory at once — every live connection it
//! covers is closed by its session (`revoked_token`) — and is written to
//! `state.db`, so it holds across a restart, and shared with the clinic's
//! other boxes through Redis (the [`RevocationLedger`]). When the disk
//! refuses the write the answer says `"durable": false` and the entry is
//! written as soon as the disk allows. Revoking what is already revoked
//! answers the entry in force (the later `revokedAt` and `until` of the two).

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::api::{authorize_service, parse_json_body};
use super::response::{
    json_response, read_body, refuse_while_stopping, BadRequest, HttpError, HttpResponse,
};
use crate::auth::{unix_now, Authenticator, Revocation, RevokedKind};
use crate::config::LimitsConfig;
use crate::publish::notifications::whole_number;
use crate::publish::{RevocationLedger, RevocationSource};

/// Longest `sub` or `jti` accepted.
const MAX_VALUE_CHARS: usize = 200;

/// The revocation endpoints; built by the gateway.
#[derive(Debug)]
pub struct Tokens {
    pub auth: Authenticator,
    pub ledger: RevocationLedger,
    pub limits: LimitsConfig,
    pub shutdown: CancellationToken,
}

impl Tokens {
    /// `POST /api/tokens/revoke`.
    pub async fn revoke(&self, request: Request<Incoming>) -> Result<HttpResponse, HttpError> {
        refuse_while_stopping(&self.shutdown)?;
        authorize_service(&self.auth, &request)?;
        let limits = &self.limits;
        let body = read_body(request, limits.max_body_bytes, limits.header_timeout).await?;
        let now = unix_now();
        let revocation = parse_revocation(parse_json_body(&body)?, now, &self.auth)?;
        tracing::info!(kind = revocation.kind.as_str(), value = %revocation.value, until = revocation.until, "token revoked");
        let (in_force, durable) = self
            .ledger
            .revoke(revocation, RevocationSource::Local)
            .await;
        Ok(json_response(
            StatusCode::OK,
            &json!({"revoked": in_force, "durable": durable}),
        ))
    }

    /// `GET /api/tokens/revoked`.
    pub fn list(&self, request: &Request<Incoming>) -> Result<HttpResponse, HttpError> {
        authorize_service(&self.auth, request)?;
        let revoked = self.auth.revocations().list(unix_now());
        Ok(json_response(StatusCode::OK, &json!({"revoked": revoked})))
    }
}

/// Reads `{"sub": S}` or `{"jti": J}` with an optional `"until"`.
fn parse_revocation(body: Value, now: u64, auth: &Authenticator) -> Result<Revocation, HttpError> {
    let invalid = |message: &str| HttpError::bad_request(BadRequest::InvalidBody, message);
    let Value::Object(mut object) = body else {
        return Err(invalid(
            "the body is an object {\"sub\"} or {\"jti\"}, with an optional \"until\"",
        ));
    };
    let named = |object: &mut serde_json::Map<String, Value>, key: &str| match object.remove(key) {
        None => Ok(None),
        Some(Value::String(text))
            if !text.is_empty() && text.chars().count() <= MAX_VALUE_CHARS =>
        {
            Ok(Some(text))
        }
        Some(_) => Err(invalid(
            "\"sub\" and \"jti\" are non-empty strings of at most 200 characters",
        )),
    };
    let (kind, value) = match (named(&mut object, "sub")?, named(&mut object, "jti")?) {
        (Some(sub), None) => (RevokedKind::Sub, sub),
        (None, Some(jti)) => (RevokedKind::Jti, jti),
        _ => return Err(invalid("name exactly one of \"sub\" or \"jti\"")),
    };
    // Past the longest token lifetime an entry covers nothing more: capped there.
    let longest = now.saturating_add(auth.max_ttl().as_secs());
    let until = match object.remove("until") {
        None => longest,
        Some(until) => match whole_number(&until) {
            Some(until) if until > now => until.min(longest),
            _ => {
                return Err(invalid(
                    "\"until\" is a time in the future, in Unix seconds",
                ))
            }
        },
    };
    if let Some(other) = object.keys().next() {
        return Err(invalid(&format!("unknown field \"{other}\"")));
    }
    Ok(Revocation {
        kind,
        value,
        revoked_at: now,
        until,
    })
}
