//! The assembly: the one place that knows every part. It builds each part
//! from the config and hands it only the handles it uses, owns the route
//! table ([`routes`]) and the accept loop ([`accept`]), runs the background
//! tasks, and shuts down.
//!
//! Shutdown happens in three phases, in this order:
//! 1. decide — the root `CancellationToken` is cancelled (signal or test);
//! 2. tell — the listener is dropped, `/health` answers 503, every
//!    WebSocket session sends Close 1001, hyper finishes in-flight requests
//!    and closes idle keep-alive connections;
//! 3. wait — for HTTP connections, sessions and background tasks together,
//!    at most `server.shutdown_timeout`; whatever is left is dropped. Then
//!    the writer saves the rooms' history and closes the store.

mod accept;
pub mod routes;
pub mod systemd;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{unix_now, Authenticator};
use crate::clock::Clock;
use crate::config::{mask_url_password, AuthMode, Config};
use crate::core::fanout::DirectEncoders;
use crate::core::rooms::{Rooms, RoomsSetup};
use crate::http::api::Api;
use crate::http::cors::Cors;
use crate::http::health::Health;
use crate::http::tokens::Tokens;
use crate::metrics::Metrics;
use crate::net::slots::ConnectionSlots;
use crate::net::tls::Tls;
use crate::publish::notifications::GetReadyTracker;
use crate::publish::{DiskBound, Publisher, RevocationLedger, WriterSetup};
use crate::replication::link::Replicator;
use crate::replication::revocations::RevocationSharing;
use crate::replication::signing::Signer;
use crate::replication::status::{ReplicationStatus, StopReason};
use crate::replication::subscription::FanIn;
use crate::store;
use crate::transport::native::protocol::encode_room_event_frame;
use crate::transport::sessions::{Sessions, SessionsSetup};
use crate::transport::socketio::endpoint::SocketIo;
use routes::Routes;

/// How often the writer is nudged to retry a failing store.
const STORE_RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// How often old idempotency keys and stale retained state are expired.
const HOUSEKEEPING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// A configured gateway, ready to serve on a listener.
#[derive(Debug)]
pub struct Gateway {
    config: Config,
    routes: Arc<Routes>,
    rooms: Rooms,
    publisher: Publisher,
    tls: Option<Arc<Tls>>,
    /// The `server.redirect_http` listener, bound at start so that a
    /// taken port fails the start.
    redirect_listener: Option<std::net::TcpListener>,
    /// The replication tasks, when `redis.url` is set.
    replication: Option<(Replicator, FanIn)>,
    clock: Clock,
    shutdown: CancellationToken,
    /// Why it stops, for the fleet's last report.
    stop_reason: StopReason,
}

/// Re-reads the TLS certificate of a running gateway (SIGHUP).
#[derive(Debug, Clone)]
pub struct TlsReloader(Option<Arc<Tls>>);

impl TlsReloader {
    /// Re-reads the certificate and key; open connections keep theirs. On
    /// error the current certificate stays in use.
    pub fn reload(&self) -> anyhow::Result<()> {
        match &self.0 {
            Some(tls) => tls.reload(),
            None => Ok(()),
        }
    }
}

impl Gateway {
    /// Opens the state directory and the JWT secret; fails with a clear
    /// message when either is unusable.
    pub fn new(config: Config, shutdown: CancellationToken) -> anyhow::Result<Self> {
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
        // After the store made the state directory: the TLS ticket keys live there.
        let tls = Tls::from_config(&config.server)?.map(Arc::new);
        let remote_progress = store::load_remote_progress(&opened.connection)
            .context("cannot read how far other boxes' events were delivered")?;
        let auth = Authenticator::from_config(&config.auth)?;
        let now = unix_now();
        match store::load_revocations(&opened.connection, now) {
            Ok(revoked) => auth.revocations().load(revoked, now),
            // The file opened and checked clean; a read that fails now is
            // the disk's, and the gateway serves rather than refusing to start.
            Err(err) => {
                tracing::error!(error = %err, "cannot read the revoked tokens from state.db; they are not in force until the next start")
            }
        }
        if auth.mode() == AuthMode::Off {
            tracing::warn!("AUTHENTICATION IS OFF (auth.mode = \"off\"): anyone on this network can join any room, read every patient's updates and publish; use only for a trial on a closed LAN");
        }
        if let Some(saved) = &opened.history {
            tracing::info!(
                rooms = saved.rooms.len(),
                "restored the rooms' history saved at the last stop"
            );
        }
        let started = Instant::now();
        let stop_reason = StopReason::default();
        let clock = Clock::default();
        let metrics = Metrics::new();
        let rooms = Rooms::new(
            RoomsSetup {
                epoch: opened.epoch,
                last_seq: opened.last_seq,
                retained: opened.retained,
                saved_history: opened.history,
                history_per_room: config.history.per_room,
                client_queue: config.limits.client_queue,
                direct_encoders: DirectEncoders {
                    native: encode_room_event_frame,
                    socketio: crate::transport::socketio::packet::encode_room_event_frame,
                },
            },
            metrics.clone(),
        );
        let journal = config.store.memory_journal_events;
        let skip_seqs = match store::begin_run(&opened.connection, journal) {
            Ok(skip) => {
                if skip > 0 {
                    tracing::warn!(skip, "the last run did not stop cleanly; seqs it may have handed out from memory are skipped");
                }
                skip
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot record the start in the store; skipping seqs to be safe");
                journal as u64
            }
        };
        let (publisher, _writer_thread) = Publisher::start(WriterSetup {
            connection: opened.connection,
            last_seq: opened.last_seq,
            outbox_len: opened.outbox_len,
            outbox_enabled: config.redis.enabled(),
            outbox_max_events: config.redis.outbox_max_events,
            idempotency_window: config.api.idempotency_window,
            memory_journal_events: journal,
            skip_seqs,
            recovered: opened.recovered.clone(),
            rooms: rooms.clone(),
            metrics: metrics.clone(),
            disk_bound: DiskBound {
                state_dir: config.server.state_dir.clone(),
                max_bytes: config.store.max_bytes,
                min_free_bytes: config.store.min_free_bytes,
            },
        })?;
        let slots = ConnectionSlots::new(
            config.limits.max_connections,
            config.limits.accept_rate,
            metrics.clone(),
        );
        let replication_status = Arc::new(ReplicationStatus::new(config.redis.enabled()));
        let signer = match config.redis.signing_key_file.as_os_str().is_empty() {
            true => None,
            false => Some(Arc::new(Signer::from_file(&config.redis.signing_key_file)?)),
        };
        if config.redis.enabled() && signer.is_none() {
            tracing::warn!("redis.signing_key_file is not set: any client of the central Redis can publish to this clinic's screens; set the same key on every box of the clinic (docs/replication.md)");
        }
        let ledger =
            RevocationLedger::new(auth.clone(), store::open_reader(&config.server.state_dir)?);
        let replication = if config.redis.enabled() {
            let revocation_sharing = RevocationSharing {
                clinic: config.clinic.clone(),
                redis: config.redis.clone(),
                ledger: ledger.clone(),
                signer: signer.clone(),
                metrics: metrics.clone(),
            };
            tracing::info!(
                url = %mask_url_password(&config.redis.url),
                clinic = %config.clinic.id,
                node = %config.clinic.node,
                "replicating to redis"
            );
            let replicator = Replicator {
                redis: config.redis.clone(),
                clinic: config.clinic.clone(),
                reader: Arc::new(Mutex::new(store::open_reader(&config.server.state_dir)?)),
                publisher: publisher.clone(),
                status: replication_status.clone(),
                metrics: metrics.clone(),
                shutdown: shutdown.clone(),
                rooms: rooms.clone(),
                slots: slots.clone(),
                started,
                epoch: rooms.epoch().to_owned(),
                history_base: opened.history_base,
                clock: clock.clone(),
                signer: signer.clone(),
                revocations: revocation_sharing.clone(),
                started_ms: crate::clock::unix_ms(),
                state_dir: config.server.state_dir.clone(),
                stop_reason: stop_reason.clone(),
                fleet_refused: std::sync::atomic::AtomicBool::new(false),
                certificate: tls.as_ref().map(|tls| tls.expiry()),
            };
            let fan_in = FanIn {
                redis: config.redis.clone(),
                clinic: config.clinic.clone(),
                publisher: publisher.clone(),
                status: replication_status.clone(),
                metrics: metrics.clone(),
                shutdown: shutdown.clone(),
                signer,
                revocations: revocation_sharing,
                delivered: remote_progress,
            };
            Some((replicator, fan_in))
        } else {
            None
        };
        let sessions = Sessions::new(SessionsSetup {
            rooms: rooms.clone(),
            auth: auth.clone(),
            limits: config.limits.clone(),
            ws: config.ws.clone(),
            socketio: config.socketio.clone(),
            allowed_origins: config.server.allowed_origins.clone(),
            metrics: metrics.clone(),
            slots: slots.clone(),
            shutdown: shutdown.clone(),
        });
        let routes = Routes {
            cors: Cors::new(config.server.allowed_origins.clone()),
            metrics_auth: config.server.metrics_require_token.then(|| auth.clone()),
            tokens: Tokens {
                auth: auth.clone(),
                ledger: ledger.clone(),
                limits: config.limits.clone(),
                shutdown: shutdown.clone(),
            },
            api: Api::new(
                publisher.clone(),
                auth,
                GetReadyTracker::new(config.queue.get_ready_position),
                config.limits.clone(),
                shutdown.clone(),
            ),
            health: Health {
                rooms: rooms.clone(),
                outbox: publisher.outbox().clone(),
                replication: replication_status,
                store: publisher.store_health().clone(),
                state_dir: config.server.state_dir.clone(),
                slots,
                metrics: metrics.clone(),
                started,
                clock: clock.clone(),
                certificate: tls.as_ref().map(|tls| tls.expiry()),
                shutdown: shutdown.clone(),
            },
            socket_io: SocketIo::new(sessions.clone()),
            sessions,
            metrics,
        };
        Ok(Self {
            config,
            routes: Arc::new(routes),
            rooms,
            publisher,
            tls,
            redirect_listener,
            replication,
            clock,
            shutdown,
            stop_reason,
        })
    }

    /// The gateway's authenticator: [`Authenticator::reload_keys`] on it
    /// re-reads the JWT keys of the running gateway (SIGHUP).
    pub fn authenticator(&self) -> Authenticator {
        self.routes.tokens.auth.clone()
    }

    /// Where whoever stops the gateway says why (`SIGTERM`, ...): the
    /// fleet's last report of the box keeps it.
    pub fn stop_reason(&self) -> StopReason {
        self.stop_reason.clone()
    }

    /// A handle that re-reads the TLS certificate while the gateway runs.
    pub fn tls_reloader(&self) -> TlsReloader {
        TlsReloader(self.tls.clone())
    }

    /// Serves HTTP and WebSocket clients on `listener` until the shutdown
    /// token is cancelled, then drains (see the module docs).
    pub async fn run(self, listener: TcpListener) -> anyhow::Result<()> {
        let Self {
            config,
            routes,
            rooms,
            publisher,
            tls,
            redirect_listener,
            replication,
            clock,
            shutdown,
            stop_reason: _,
        } = self;
        systemd::ready();
        let workers = TaskTracker::new();
        workers.spawn(housekeeping(
            publisher.clone(),
            routes.tokens.ledger.clone(),
            shutdown.clone(),
        ));
        workers.spawn(systemd::watchdog(rooms, shutdown.clone()));
        workers.spawn(clock.watch(shutdown.clone()));
        if let Some((replicator, fan_in)) = replication {
            workers.spawn(crate::replication::link::run(replicator));
            workers.spawn(crate::replication::sentinel::watch_failovers(
                fan_in.redis.clone(),
                fan_in.status.clone(),
                fan_in.shutdown.clone(),
            ));
            workers.spawn(crate::replication::subscription::run(fan_in));
        }
        // hyper-util's GracefulShutdown cannot watch upgradeable http1
        // connections, so each connection task watches the token itself.
        let http_connections = TaskTracker::new();
        if let Some(redirects) = redirect_listener {
            let redirects = TcpListener::from_std(redirects)?;
            let https_port = listener
                .local_addr()
                .map_or(config.server.listen.port(), |local| local.port());
            if let Ok(local) = redirects.local_addr() {
                tracing::info!("redirecting http://{local} to https on port {https_port}");
            }
            workers.spawn(crate::http::redirect::run(
                redirects,
                https_port,
                config.limits.clone(),
                shutdown.clone(),
                http_connections.clone(),
            ));
        }
        let accepting = accept::Accept {
            routes: routes.clone(),
            tls,
            limits: config.limits.clone(),
            shutdown: shutdown.clone(),
            connections: http_connections.clone(),
        };
        accepting.run(listener).await;

        systemd::stopping();
        tracing::info!("shutting down: closing client connections");
        let sessions = routes.sessions.tracker();
        sessions.close();
        http_connections.close();
        workers.close();
        let drained = tokio::time::timeout(config.server.shutdown_timeout, async {
            tokio::join!(http_connections.wait(), sessions.wait(), workers.wait());
        })
        .await;
        if drained.is_err() {
            tracing::warn!("shutdown timeout reached; dropping the remaining connections");
        }
        publisher.close().await;
        Ok(())
    }
}

async fn housekeeping(publisher: Publisher, ledger: RevocationLedger, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    // The writer backs off by itself; this only wakes it when nothing is published.
    let mut retry = tokio::time::interval(STORE_RETRY_INTERVAL);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = interval.tick() => publisher.housekeep().await,
            _ = retry.tick() => {
                publisher.retry_store();
                ledger.retry_unwritten().await;
            }
        }
    }
}

/// Binds the configured listen address.
pub async fn bind(config: &Config) -> anyhow::Result<TcpListener> {
    TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))
}
