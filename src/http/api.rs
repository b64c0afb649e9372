//! The publish API the clinic's queue system calls: authenticate, read a
//! bounded JSON body, turn it into notifications and publish them.
//!
//! Checks run in a fixed order — token (401/403), body size (413), body
//! (400) — and a request that fails any of them publishes nothing. A `202`
//! means the events are committed to the store; a repeated
//! `Idempotency-Key` gets the first answer again and publishes nothing.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::AUTHORIZATION;
use hyper::{Request, StatusCode};
use serde_json::value::RawValue;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::response::{
    json_response, read_body, refuse_while_stopping, BadRequest, HttpError, HttpResponse,
    Unauthorized, Unavailable,
};
use crate::auth::{Authenticator, Identity};
use crate::config::LimitsConfig;
use crate::core::room::{EventName, PatientId, Room};
use crate::publish::notifications::{
    self, GetReadyTracker, Notification, PositionReport, ShapeError,
};
use crate::publish::{Origin, Publication, Publisher};

/// What the publish endpoints use; built by the gateway.
#[derive(Debug)]
pub struct Api {
    publisher: Publisher,
    auth: Authenticator,
    get_ready: GetReadyTracker,
    limits: LimitsConfig,
    shutdown: CancellationToken,
}

/// The publish endpoints; patient ids are raw path segments until checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /api/broadcast` `{"room", "event", "data"}`.
    Broadcast,
    /// `POST /api/patients/{id}/position`.
    Position(String),
    /// `POST /api/patients/{id}/called`.
    Called(String),
    /// `POST /api/queue/update`.
    QueueUpdate,
    /// `POST /api/queue/refresh`.
    QueueRefresh,
    /// `POST /api/queue/new-patient`.
    NewPatient,
}

impl Endpoint {
    /// The endpoint's name in metrics, without ids.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Broadcast => "/api/broadcast",
            Self::Position(_) => "/api/patients/{id}/position",
            Self::Called(_) => "/api/patients/{id}/called",
            Self::QueueUpdate => "/api/queue/update",
            Self::QueueRefresh => "/api/queue/refresh",
            Self::NewPatient => "/api/queue/new-patient",
        }
    }
}

impl From<ShapeError> for HttpError {
    fn from(err: ShapeError) -> Self {
        HttpError::bad_request(BadRequest::InvalidBody, err.0)
    }
}

impl Api {
    pub fn new(
        publisher: Publisher,
        auth: Authenticator,
        get_ready: GetReadyTracker,
        limits: LimitsConfig,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            publisher,
            auth,
            get_ready,
            limits,
            shutdown,
        }
    }

    /// Handles one publish request.
    pub async fn publish(
        &self,
        endpoint: Endpoint,
        request: Request<Incoming>,
    ) -> Result<HttpResponse, HttpError> {
        refuse_while_stopping(&self.shutdown)?;
        self.authorize(&request)?;
        let key = idempotency_key(&request)?;
        let limits = &self.limits;
        let body = read_body(request, limits.max_body_bytes, limits.header_timeout).await?;
        let notifications = notifications_for(&self.get_ready, &endpoint, parse_json_body(&body)?)?;
        let publications = notifications
            .iter()
            .map(publication)
            .collect::<Result<Vec<_>, _>>()?;
        let receipt = self
            .publisher
            .publish(publications, key, Origin::Local)
            .await
            .map_err(|_| HttpError::Unavailable(Unavailable::Store))?;
        let Some(first) = receipt.published.first() else {
            return Err(HttpError::Internal);
        };
        let mut answer = serde_json::json!({
            "seq": first.seq,
            "rooms": notifications[0].rooms,
            "delivered": first.delivered,
            "durable": receipt.durable,
        });
        // Only `position` yields a second notification: the `get_ready` of a crossing.
        if let Some(get_ready) = receipt.published.get(1) {
            answer["getReady"] =
                serde_json::json!({"seq": get_ready.seq, "delivered": get_ready.delivered});
        }
        if receipt.replayed {
            answer["replayed"] = serde_json::Value::Bool(true);
        }
        Ok(json_response(StatusCode::ACCEPTED, &answer))
    }

    fn authorize(&self, request: &Request<Incoming>) -> Result<(), HttpError> {
        authorize_service(&self.auth, request)
    }
}

/// Checks the bearer token of an API request: present, valid, role `service`.
pub fn authorize_service(
    auth: &Authenticator,
    request: &Request<Incoming>,
) -> Result<(), HttpError> {
    let identity = bearer_identity(auth, request)?;
    auth.may_publish(&identity).map_err(HttpError::denied)
}

/// Checks the bearer token of a `/metrics` request: role `service` or `monitor`.
pub fn authorize_monitor(
    auth: &Authenticator,
    request: &Request<Incoming>,
) -> Result<(), HttpError> {
    let identity = bearer_identity(auth, request)?;
    auth.may_monitor(&identity).map_err(HttpError::denied)
}

/// Who the `Authorization: Bearer` header names (anonymous without one).
fn bearer_identity(
    auth: &Authenticator,
    request: &Request<Incoming>,
) -> Result<Identity, HttpError> {
    let token = match request.headers().get(AUTHORIZATION) {
        None => None,
        Some(value) => {
            let bearer = value.to_str().ok().and_then(|text| {
                text.strip_prefix("Bearer ")
                    .or_else(|| text.strip_prefix("bearer "))
            });
            match bearer {
                Some(token) => Some(token.trim()),
                None => return Err(HttpError::Unauthorized(Unauthorized::MalformedHeader)),
            }
        }
    };
    auth.identify(token)
        .map_err(|err| HttpError::Unauthorized(Unauthorized::Token(err)))
}

/// Longest `Idempotency-Key` accepted.
const MAX_IDEMPOTENCY_KEY_CHARS: usize = 200;

fn idempotency_key(request: &Request<Incoming>) -> Result<Option<String>, HttpError> {
    let Some(value) = request.headers().get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key)
            if (1..=MAX_IDEMPOTENCY_KEY_CHARS).contains(&key.len())
                && key.bytes().all(|byte| byte.is_ascii_graphic()) =>
        {
            Ok(Some(key.to_owned()))
        }
        _ => Err(HttpError::bad_request(
            BadRequest::InvalidIdempotencyKey,
            format!(
                "Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY_CHARS} visible ASCII characters"
            ),
        )),
    }
}

/// A request body as JSON, or the `400 invalid_json` that says why not.
pub fn parse_json_body(body: &[u8]) -> Result<Value, HttpError> {
    serde_json::from_slice(body).map_err(|err| {
        HttpError::bad_request(
            BadRequest::InvalidJson,
            format!("the body is not valid JSON: {err}"),
        )
    })
}

fn patient(raw: &str) -> Result<PatientId, HttpError> {
    PatientId::parse(raw).ok_or_else(|| {
        HttpError::bad_request(
            BadRequest::InvalidRoom,
            "a patient id is 1-64 characters of A-Z, a-z, 0-9, '_' and '-'",
        )
    })
}

/// What an endpoint's body asks to publish (a `get_ready` crossing is
/// recorded in `get_ready`). Pure apart from that tracker: the fuzz target
/// `api_body` drives it with arbitrary bodies.
pub fn notifications_for(
    get_ready: &GetReadyTracker,
    endpoint: &Endpoint,
    body: Value,
) -> Result<Vec<Notification>, HttpError> {
    let notification = match endpoint {
        Endpoint::Broadcast => broadcast(body)?,
        Endpoint::Position(raw) => {
            let patient = patient(raw)?;
            let report = PositionReport::parse(body)?;
            let crossing = get_ready.record(&patient, report.position);
            return Ok(notifications::position_update(&patient, report, crossing));
        }
        Endpoint::Called(raw) => {
            let patient = patient(raw)?;
            let notification = notifications::patient_called(&patient, body)?;
            get_ready.forget(&patient);
            notification
        }
        Endpoint::QueueUpdate => notifications::queue_update(body)?,
        Endpoint::QueueRefresh => notifications::queue_refresh(body)?,
        Endpoint::NewPatient => notifications::new_patient(body)?,
    };
    Ok(vec![notification])
}

fn broadcast(body: Value) -> Result<Notification, HttpError> {
    let Value::Object(mut map) = body else {
        return Err(HttpError::bad_request(
            BadRequest::InvalidBody,
            "broadcast takes {\"room\", \"event\", \"data\"}",
        ));
    };
    let room = map
        .get("room")
        .and_then(Value::as_str)
        .and_then(Room::parse)
        .ok_or_else(|| {
            HttpError::bad_request(
                BadRequest::InvalidRoom,
                "\"room\" must be patient_{id}, staff or patients",
            )
        })?;
    let event = map
        .get("event")
        .and_then(Value::as_str)
        .and_then(EventName::parse)
        .ok_or_else(|| {
            HttpError::bad_request(
                BadRequest::InvalidEvent,
                "\"event\" must be 1-64 characters of A-Z, a-z, 0-9, '_', '.', ':' and '-'",
            )
        })?;
    Ok(Notification {
        rooms: vec![room],
        event,
        data: map.remove("data").unwrap_or(Value::Null),
    })
}

/// The notification as the publisher stores it: the payload as raw JSON text.
pub fn publication(notification: &Notification) -> Result<Publication, HttpError> {
    let data = RawValue::from_string(notification.data.to_string()).map_err(|err| {
        tracing::error!(error = %err, "cannot encode an event payload");
        HttpError::Internal
    })?;
    Ok(Publication::new(
        notification.rooms.clone(),
        notification.event.clone(),
        Arc::from(data),
    ))
}
