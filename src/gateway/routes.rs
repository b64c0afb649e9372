//! The route table: what each path means, which part answers it, and the
//! count of requests by route and status.
//!
//! Each route's work lives in the part that owns it (`http::api`,
//! `http::health`, `http::screens`, the transports' endpoints); this module
//! only dispatches.

use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper::{Method, Request};

use crate::auth::Authenticator;
use crate::http::api::{authorize_monitor, Api, Endpoint};
use crate::http::cors::Cors;
use crate::http::health::{self, Health};
use crate::http::response::{HttpError, HttpResponse};
use crate::http::screens::{self, Asset};
use crate::http::tokens::Tokens;
use crate::metrics::{HttpLabels, Metrics};
use crate::transport::native;
use crate::transport::sessions::Sessions;
use crate::transport::socketio::endpoint::SocketIo;

/// The parts that answer requests; built by the gateway.
#[derive(Debug)]
pub struct Routes {
    pub api: Api,
    pub cors: Cors,
    /// Set when `/metrics` needs a token (`server.metrics_require_token`).
    pub metrics_auth: Option<Authenticator>,
    pub tokens: Tokens,
    pub health: Health,
    pub sessions: Sessions,
    pub socket_io: SocketIo,
    pub metrics: Metrics,
}

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
    /// `POST /api/tokens/revoke`.
    RevokeToken,
    /// `GET /api/tokens/revoked`.
    RevokedTokens,
    /// A reference screen or the JavaScript client ([`crate::http::screens`]).
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
            ["api", "tokens", "revoke"] => Self::RevokeToken,
            ["api", "tokens", "revoked"] => Self::RevokedTokens,
            other => Self::Screen(screens::resolve(other)?),
        };
        Some(route)
    }

    /// The methods the route answers; the first is named in 405 answers.
    /// `None`: the route answers every method itself (Engine.IO refuses
    /// a wrong one with its own 400).
    fn methods(&self) -> Option<&'static [Method]> {
        match self {
            Self::Api(_) | Self::RevokeToken => Some(&[Method::POST]),
            Self::SocketIo => None,
            _ => Some(&[Method::GET]),
        }
    }

    /// When the route does not answer `method`: the method to name in the
    /// 405 answer.
    fn refuses(&self, method: &Method) -> Option<Method> {
        let methods = self.methods()?;
        if methods.contains(method) {
            None
        } else {
            methods.first().cloned()
        }
    }

    /// Whether a page on another (allowed) origin may call it: the API,
    /// health, metrics and Socket.IO polling, not the box's own pages.
    fn cross_origin(&self) -> bool {
        !matches!(self, Self::WebSocket | Self::Screen(_))
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
            Self::RevokeToken => "/api/tokens/revoke",
            Self::RevokedTokens => "/api/tokens/revoked",
            Self::Screen(asset) => asset.path,
        }
    }
}

impl Routes {
    /// Handles one request: route, method, then the route's own checks.
    pub async fn handle(
        &self,
        peer: SocketAddr,
        request: Request<Incoming>,
    ) -> Result<HttpResponse, std::convert::Infallible> {
        let route = Route::resolve(request.uri().path());
        let label = route.as_ref().map_or("unknown", Route::label);
        let cross_origin = route
            .as_ref()
            .filter(|route| route.cross_origin())
            .and_then(|_| self.cors.allowed_origin(request.headers()));
        let mut response = match route {
            None => HttpError::NotFound.into_response(),
            Some(route) if route.cross_origin() && request.method() == Method::OPTIONS => {
                self.cors.preflight(request.headers())
            }
            Some(route) if route.refuses(request.method()).is_some() => {
                let allowed = route.refuses(request.method()).unwrap_or(Method::GET);
                HttpError::MethodNotAllowed(allowed).into_response()
            }
            Some(route) => self
                .dispatch(peer, route, request)
                .await
                .unwrap_or_else(HttpError::into_response),
        };
        if let Some(origin) = cross_origin {
            Cors::allow(&mut response, origin);
        }
        self.metrics
            .http_requests
            .get_or_create(&HttpLabels {
                route: label,
                status: response.status().as_u16(),
            })
            .inc();
        Ok(response)
    }

    async fn dispatch(
        &self,
        peer: SocketAddr,
        route: Route,
        request: Request<Incoming>,
    ) -> Result<HttpResponse, HttpError> {
        match route {
            Route::WebSocket => native::endpoint::upgrade(&self.sessions, peer, request),
            Route::SocketIo => Ok(self.socket_io.handle(peer, request).await),
            Route::Health => Ok(self.health.status()),
            Route::HealthLive => Ok(health::live()),
            Route::HealthReady => Ok(self.health.ready().await),
            Route::Metrics => {
                if let Some(auth) = &self.metrics_auth {
                    authorize_monitor(auth, &request)?;
                }
                Ok(self.health.metrics())
            }
            Route::Api(endpoint) => self.api.publish(endpoint, request).await,
            Route::RevokeToken => self.tokens.revoke(request).await,
            Route::RevokedTokens => self.tokens.list(&request),
            Route::Screen(asset) => Ok(asset.respond(request.headers())),
        }
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
