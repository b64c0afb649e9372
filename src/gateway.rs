//! The assembled gateway: shared state built from the config, the accept
//! loop, and shutdown.
//!
//! Shutdown happens in three phases, in this order:
//! 1. decide — the root `CancellationToken` is cancelled (signal or test);
//! 2. tell — the listener is dropped, `/health` answers 503, every
//!    WebSocket session sends Close 1001, hyper finishes in-flight requests
//!    and closes idle keep-alive connections;
//! 3. wait — for HTTP connections and sessions together, at most
//!    `server.shutdown_timeout`; whatever is left is dropped.

use std::pin::pin;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::config::{mask_url_password, AuthMode, Config};
use crate::http_deadlines::{ConnectionWatch, Watched};
use crate::metrics::Metrics;
use crate::peer_limit::{CountedStream, PeerCounts};
use crate::publisher::{Publisher, WriterSetup};
use crate::realtime::GetReadyTracker;
use crate::replication::Replication;
use crate::rooms::{Rooms, RoomsSetup};
use crate::store;
use crate::tls::{ClientStream, Tls};

/// How often old idempotency keys and stale retained state are expired.
const HOUSEKEEPING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// State shared by every connection and request.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub rooms: Rooms,
    pub publisher: Publisher,
    pub replication: Replication,
    /// The replication drain's read connection to `state.db`.
    pub store_reader: Arc<std::sync::Mutex<rusqlite::Connection>>,
    pub auth: Authenticator,
    pub metrics: Metrics,
    pub get_ready: GetReadyTracker,
    pub started: Instant,
    pub shutdown: CancellationToken,
    /// TLS certificate when `server.tls_cert`/`tls_key` are set.
    pub tls: Option<Tls>,
    /// Live Socket.IO (Engine.IO) sessions by sid.
    pub engine_sessions: crate::eio_server::EngineSessions,
    /// WebSocket sessions, which leave hyper's graceful watcher once upgraded.
    pub sessions: TaskTracker,
    /// One permit per open client connection of any protocol.
    connection_slots: Arc<Semaphore>,
    /// The `server.redirect_http` listener, bound at start and served by `run`.
    redirect_listener: std::sync::Mutex<Option<std::net::TcpListener>>,
}

impl Shared {
    /// Takes a client connection slot, or `None` at `limits.max_connections`.
    pub fn admit_client(&self) -> Option<ClientSlot> {
        match self.connection_slots.clone().try_acquire_owned() {
            Ok(permit) => {
                self.metrics.connections.inc();
                Some(ClientSlot {
                    _permit: permit,
                    metrics: self.metrics.clone(),
                })
            }
            Err(_) => {
                self.metrics.connections_rejected.inc();
                None
            }
        }
    }

    /// Open client connections of every protocol.
    pub fn connected_clients(&self) -> usize {
        self.config.limits.max_connections - self.connection_slots.available_permits()
    }
}

/// An open client connection's place under the connection limit; freed on drop.
#[derive(Debug)]
pub struct ClientSlot {
    _permit: OwnedSemaphorePermit,
    metrics: Metrics,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.metrics.connections.dec();
    }
}

/// A configured gateway, ready to serve on a listener.
#[derive(Debug, Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
}

impl Gateway {
    /// Opens the state directory and the JWT secret; fails with a clear
    /// message when either is unusable.
    pub fn new(config: Config, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let tls = Tls::from_config(&config.server)?;
        let redirect_listener = match config.server.redirect_http {
            Some(addr) => {
                let listener = std::net::TcpListener::bind(addr)
                    .with_context(|| format!("cannot listen on {addr} (server.redirect_http)"))?;
                listener.set_nonblocking(true)?;
                Some(listener)
            }
            None => None,
        };
        let opened = store::open(&config.server.state_dir)?;
        let store_reader = store::open_reader(&config.server.state_dir)?;
        let auth = Authenticator::from_config(&config.auth)?;
        if auth.mode() == AuthMode::Off {
            tracing::warn!("AUTHENTICATION IS OFF (auth.mode = \"off\"): anyone on this network can join any room, read every patient's updates and publish; use only for a trial on a closed LAN");
        }
        if let Some(saved) = &opened.history {
            tracing::info!(
                rooms = saved.rooms.len(),
                "restored the rooms' history saved at the last stop"
            );
        }
        let metrics = Metrics::new();
        let rooms = Rooms::new(
            RoomsSetup {
                epoch: opened.epoch,
                last_seq: opened.last_seq,
                retained: opened.retained,
                saved_history: opened.history,
                history_per_room: config.history.per_room,
                client_queue: config.limits.client_queue,
            },
            metrics.clone(),
        );
        let (publisher, _writer_thread) = Publisher::start(WriterSetup {
            connection: opened.connection,
            last_seq: opened.last_seq,
            outbox_len: opened.outbox_len,
            outbox_enabled: config.redis.enabled(),
            outbox_max_events: config.redis.outbox_max_events,
            idempotency_window: config.api.idempotency_window,
            rooms: rooms.clone(),
            metrics: metrics.clone(),
        })?;
        if config.redis.enabled() {
            tracing::info!(
                url = %mask_url_password(&config.redis.url),
                clinic = %config.clinic.id,
                node = %config.clinic.node,
                "replicating to redis"
            );
        }
        let shared = Shared {
            rooms,
            publisher,
            replication: Replication::new(config.redis.enabled()),
            store_reader: Arc::new(std::sync::Mutex::new(store_reader)),
            get_ready: GetReadyTracker::new(config.queue.get_ready_position),
            connection_slots: Arc::new(Semaphore::new(config.limits.max_connections)),
            config,
            auth,
            metrics,
            started: Instant::now(),
            engine_sessions: Default::default(),
            tls,
            shutdown,
            sessions: TaskTracker::new(),
            redirect_listener: std::sync::Mutex::new(redirect_listener),
        };
        Ok(Self {
            shared: Arc::new(shared),
        })
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Re-reads the TLS certificate and key (SIGHUP); open connections keep
    /// theirs. On error the current certificate stays in use.
    pub fn reload_tls(&self) -> anyhow::Result<()> {
        match &self.shared.tls {
            Some(tls) => tls.reload(),
            None => Ok(()),
        }
    }

    /// Serves HTTP and WebSocket clients on `listener` until the shutdown
    /// token is cancelled, then drains (see the module docs).
    pub async fn run(self, listener: TcpListener) -> anyhow::Result<()> {
        let shared = self.shared;
        let workers = TaskTracker::new();
        workers.spawn(housekeeping(shared.clone()));
        workers.spawn(crate::systemd::watchdog(shared.clone()));
        if shared.config.redis.enabled() {
            workers.spawn(crate::replication::run(shared.clone()));
            workers.spawn(crate::subscription::run(shared.clone()));
        }
        let redirect_listener = shared
            .redirect_listener
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(redirects) = redirect_listener {
            let redirects = TcpListener::from_std(redirects)?;
            let https_port = listener
                .local_addr()
                .map_or(shared.config.server.listen.port(), |local| local.port());
            if let Ok(local) = redirects.local_addr() {
                tracing::info!("redirecting http://{local} to https on port {https_port}");
            }
            workers.spawn(crate::redirect::run(shared.clone(), redirects, https_port));
        }
        // hyper-util's GracefulShutdown cannot watch upgradeable http1
        // connections, so each connection task watches the token itself.
        let http_connections = TaskTracker::new();
        // The head and keep-alive deadlines are kept by http_deadlines: hyper's
        // own header timer would also cut idle keep-alives.
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new()).header_read_timeout(None);
        let peers = PeerCounts::new(shared.config.limits.connections_per_ip);

        loop {
            let accepted = tokio::select! {
                () = shared.shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Running out of file descriptors must not end the server; back off briefly.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(place) = peers.admit(peer.ip()) else {
                tracing::debug!(%peer, "refused: limits.connections_per_ip reached");
                continue;
            };
            let _ = stream.set_nodelay(true);
            let stream = CountedStream::new(stream, place);
            let limits = &shared.config.limits;
            let watch = ConnectionWatch::new(limits.header_timeout, limits.keepalive_timeout);
            let service_shared = shared.clone();
            let service_watch = watch.clone();
            let service = hyper::service::service_fn(move |request| {
                let shared = service_shared.clone();
                let watch = service_watch.clone();
                async move {
                    watch.request_started();
                    let response = crate::http::handle(shared, peer, request).await;
                    watch.request_finished();
                    response
                }
            });
            let shutdown = shared.shutdown.clone();
            let acceptor = shared.tls.as_ref().map(Tls::acceptor);
            let handshake_timeout = shared.config.limits.header_timeout;
            let http = http.clone();
            http_connections.spawn(crate::ws::run_isolated(async move {
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

        drop(listener);
        crate::systemd::stopping();
        tracing::info!("shutting down: closing client connections");
        shared.sessions.close();
        http_connections.close();
        workers.close();
        let drained = tokio::time::timeout(shared.config.server.shutdown_timeout, async {
            tokio::join!(
                http_connections.wait(),
                shared.sessions.wait(),
                workers.wait()
            );
        })
        .await;
        if drained.is_err() {
            tracing::warn!("shutdown timeout reached; dropping the remaining connections");
        }
        shared.publisher.close().await;
        Ok(())
    }
}

async fn housekeeping(shared: Arc<Shared>) {
    let mut interval = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            _ = interval.tick() => shared.publisher.housekeep().await,
        }
    }
}

/// Binds the configured listen address.
pub async fn bind(config: &Config) -> anyhow::Result<TcpListener> {
    TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))
}
