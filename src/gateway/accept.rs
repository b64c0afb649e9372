//! The accept loop: per-IP admission, TLS, the head and keep-alive
//! deadlines, and one tracked, panic-isolated task per HTTP connection,
//! which watches the shutdown token itself.

use std::pin::pin;
use std::sync::Arc;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::routes::Routes;
use crate::config::LimitsConfig;
use crate::http::deadlines::{ConnectionWatch, Watched};
use crate::net::isolate::run_isolated;
use crate::net::peer_limit::{CountedStream, PeerCounts};
use crate::net::tls::{ClientStream, Tls};

/// How long to wait after a failed accept (out of file descriptors, say).
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

/// What the accept loop hands each connection.
pub(super) struct Accept {
    pub routes: Arc<Routes>,
    pub tls: Option<Arc<Tls>>,
    pub limits: LimitsConfig,
    pub shutdown: CancellationToken,
    pub connections: TaskTracker,
}

impl Accept {
    /// Accepts until shutdown; the listener is dropped on return.
    pub async fn run(self, listener: TcpListener) {
        // The head and keep-alive deadlines are kept by http::deadlines:
        // hyper's own header timer would also cut idle keep-alives.
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new()).header_read_timeout(None);
        let peers = PeerCounts::new(self.limits.connections_per_ip);
        loop {
            let accepted = tokio::select! {
                () = self.shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Running out of file descriptors must not end the server; back off briefly.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let Some(place) = peers.admit(peer.ip()) else {
                tracing::debug!(%peer, "refused: limits.connections_per_ip reached");
                continue;
            };
            let _ = stream.set_nodelay(true);
            let stream = CountedStream::new(stream, place);
            let watch =
                ConnectionWatch::new(self.limits.header_timeout, self.limits.keepalive_timeout);
            let service_routes = self.routes.clone();
            let service_watch = watch.clone();
            let service = hyper::service::service_fn(move |request| {
                let routes = service_routes.clone();
                let watch = service_watch.clone();
                async move {
                    watch.request_started();
                    let response = routes.handle(peer, request).await;
                    watch.request_finished();
                    response
                }
            });
            let shutdown = self.shutdown.clone();
            let acceptor = self.tls.as_ref().map(|tls| tls.acceptor());
            let handshake_timeout = self.limits.header_timeout;
            let http = http.clone();
            self.connections.spawn(run_isolated(async move {
                let stream = match acceptor {
                    None => ClientStream::Plain(stream),
                    Some(acceptor) => {
                        match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await
                        {
                            Ok(Ok(tls)) => ClientStream::Tls(Box::new(tls)),
                            Ok(Err(err)) => {
                                tracing::debug!(%peer, error = %err, "tls handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "tls handshake timed out");
                                return;
                            }
                        }
                    }
                };
                let stream = Watched::new(stream, watch.clone());
                let connection = http
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades();
                let mut connection = pin!(connection);
                let served = tokio::select! {
                    served = connection.as_mut() => served,
                    () = shutdown.cancelled() => {
                        // Finish the request in flight, then close; idle keep-alives close now.
                        connection.as_mut().graceful_shutdown();
                        connection.await
                    }
                    expired = watch.expired() => {
                        tracing::debug!(%peer, "closing the connection: {expired}");
                        return;
                    }
                };
                if let Err(err) = served {
                    tracing::debug!(%peer, error = %err, "http connection ended with an error");
                }
            }));
        }
    }
}
