//! The gateway's configuration: typed sections with their defaults, loaded
//! from a TOML file and overridden by `SMARTWAIT_<SECTION>_<KEY>` variables.
//!
//! Every limit the gateway enforces is a field here, with its default beside
//! it; `config/gateway.toml` documents the same keys for technicians. This
//! module only reads and validates; it never opens sockets or files other
//! than the config file itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// Prefix of the environment variables that override config keys.
const ENV_PREFIX: &str = "SMARTWAIT_";

/// Where the gateway looks for its config file when `--config` is not given.
pub const DEFAULT_CONFIG_PATHS: [&str; 2] = [
    "./config/gateway.toml",
    "/etc/smartwait-gateway/gateway.toml",
];

/// The whole configuration, one field per TOML section.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[server]`: listening, TLS, state directory, shutdown.
    pub server: ServerConfig,
    /// `[auth]`: tokens and access.
    pub auth: AuthConfig,
    /// `[limits]`: every bound on clients and requests.
    pub limits: LimitsConfig,
    /// `[ws]`: the native WebSocket heartbeat.
    pub ws: WsConfig,
    /// `[queue]`: the `get_ready` rule.
    pub queue: QueueConfig,
    /// `[api]`: the publish API.
    pub api: ApiConfig,
    /// `[history]`: what rooms remember for reconnects.
    pub history: HistoryConfig,
    /// `[store]`: what happens while `state.db` cannot be written.
    pub store: StoreConfig,
    /// `[clinic]`: which clinic and box this is.
    pub clinic: ClinicConfig,
    /// `[redis]`: replication to central Redis.
    pub redis: RedisConfig,
    /// `[socketio]`: the Engine.IO heartbeat.
    pub socketio: SocketIoConfig,
}

/// `[server]`: where the gateway listens and keeps its state.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address and port of the HTTP/WebSocket listener.
    pub listen: SocketAddr,
    /// Directory for the gateway's own files (state.db, JWT secret).
    /// Empty means `$STATE_DIRECTORY` under systemd, else `./data`.
    pub state_dir: PathBuf,
    /// How long shutdown waits for clients and requests before exiting.
    #[serde(with = "duration_text")]
    pub shutdown_timeout: Duration,
    /// PEM certificate chain and private key; both set turns on HTTPS/WSS.
    pub tls_cert: PathBuf,
    /// PEM private key of `tls_cert`.
    pub tls_key: PathBuf,
    /// Browser origins allowed to open WebSockets; empty means only pages
    /// served by the box itself (the Origin's host:port equals the Host).
    pub allowed_origins: Vec<String>,
    /// With TLS on: a plain-HTTP listener (e.g. `"0.0.0.0:80"`) that answers
    /// every request with a redirect to the same path over HTTPS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect_http: Option<SocketAddr>,
    /// Whether `/metrics` needs a token of role `service` or `monitor`
    /// (`/health/live` and `/health/ready` stay open for probes).
    pub metrics_require_token: bool,
}

impl ServerConfig {
    /// Whether HTTPS/WSS is on (both PEM files configured).
    pub fn tls_enabled(&self) -> bool {
        !self.tls_cert.as_os_str().is_empty() && !self.tls_key.as_os_str().is_empty()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            state_dir: PathBuf::new(),
            shutdown_timeout: Duration::from_secs(5),
            allowed_origins: Vec::new(),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            redirect_http: None,
            metrics_require_token: false,
        }
    }
}

/// Whether tokens are checked at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Every room and the publish API require the token rules of docs/protocol.md.
    On,
    /// The seed's open behaviour: anyone may join anything and publish.
    Off,
}

/// `[auth]`: tokens and who may enter which room.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `on` checks tokens; `off` is the seed's open behaviour.
    pub mode: AuthMode,
    /// File holding the HS256 secret; empty means `<state_dir>/jwt-secret`.
    pub secret_file: PathBuf,
    /// Whether anonymous connections may join the public `patients` room.
    pub patients_room_public: bool,
    /// The longest lifetime a token may have: longer ones are refused, and
    /// a revocation lasts this long by default.
    #[serde(with = "duration_text")]
    pub max_token_ttl: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::On,
            secret_file: PathBuf::new(),
            patients_room_public: true,
            max_token_ttl: Duration::from_secs(400 * 24 * 3600),
        }
    }
}

/// `[limits]`: every bound on what one client or request may cost.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Open client connections of every protocol.
    pub max_connections: usize,
    /// New client connections (WebSocket upgrades, Engine.IO handshakes)
    /// admitted per second, in order, with a burst of as many; beyond it
    /// they get 503 with `Retry-After`, so a reconnect storm after a
    /// restart cannot starve the screens already back.
    pub accept_rate: usize,
    /// Rooms one connection may be in at once.
    pub rooms_per_connection: usize,
    /// Frames waiting for one client; overflow closes that client with 1013.
    pub client_queue: usize,
    /// Largest client frame answered with an error event (16x that closes).
    pub max_client_frame_bytes: usize,
    /// Bad messages a client may send before it is closed.
    pub client_errors_before_close: u32,
    /// Client messages per second, sustained.
    pub client_msgs_per_sec: u32,
    /// Client messages in a burst.
    pub client_msgs_burst: u32,
    /// Largest API request body.
    pub max_body_bytes: usize,
    /// Open TCP connections from one IP address (a TV wall behind NAT fits).
    pub connections_per_ip: usize,
    /// Longest a client may take to send a request's headers (from their
    /// first byte, or from the accept for a new connection): slow-loris and
    /// silent sockets, including a WebSocket handshake that never completes.
    #[serde(with = "duration_text")]
    pub header_timeout: Duration,
    /// How long a kept-alive HTTP connection may sit idle between requests.
    #[serde(with = "duration_text")]
    pub keepalive_timeout: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            accept_rate: 2_000,
            rooms_per_connection: 8,
            client_queue: 1024,
            max_client_frame_bytes: 4 * 1024,
            client_errors_before_close: 20,
            client_msgs_per_sec: 20,
            client_msgs_burst: 40,
            max_body_bytes: 64 * 1024,
            connections_per_ip: 200,
            header_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
        }
    }
}

/// `[ws]`: WebSocket heartbeat.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WsConfig {
    #[serde(with = "duration_text")]
    /// How often the server pings a native client.
    pub ping_interval: Duration,
    /// A connection that sent nothing, not even a pong, for this long is closed.
    #[serde(with = "duration_text")]
    pub idle_timeout: Duration,
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// `[queue]`: the seed's queue notifications.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// A patient whose position falls to this or below gets `get_ready`.
    pub get_ready_position: u32,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            get_ready_position: 2,
        }
    }
}

/// `[socketio]`: the Socket.IO endpoint's Engine.IO heartbeat (Node's defaults).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SocketIoConfig {
    #[serde(with = "duration_text")]
    /// Engine.IO's `pingInterval`.
    pub ping_interval: Duration,
    /// A client that has not answered a ping within this is disconnected.
    #[serde(with = "duration_text")]
    pub ping_timeout: Duration,
    /// A client that has not sent CONNECT within this is disconnected
    /// (the reference server's `connectTimeout`), freeing its slot.
    #[serde(with = "duration_text")]
    pub connect_timeout: Duration,
}

impl Default for SocketIoConfig {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(25),
            ping_timeout: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(45),
        }
    }
}

/// `[api]`: the publish API.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// A repeated `Idempotency-Key` within this window gets the first answer.
    #[serde(with = "duration_text")]
    pub idempotency_window: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            idempotency_window: Duration::from_secs(600),
        }
    }
}

/// `[store]`: the state database under disk faults.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Events numbered and delivered while `state.db` cannot be written,
    /// held in memory until it can; beyond, publishes are refused (503).
    pub memory_journal_events: usize,
    /// Bound of `state.db` and its WAL together; beyond it the oldest
    /// replication outbox entries are dropped.
    pub max_bytes: u64,
    /// Space left free on the state directory's file system; below it the
    /// oldest replication outbox entries are dropped.
    pub min_free_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            memory_journal_events: 10_000,
            max_bytes: 256 * 1024 * 1024,
            min_free_bytes: 64 * 1024 * 1024,
        }
    }
}

/// `[history]`: what rooms remember for reconnecting screens.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// Events kept in memory per room for `since` recovery.
    pub per_room: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self { per_room: 100 }
    }
}

/// `[clinic]`: who this gateway is in the central Redis.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClinicConfig {
    /// The clinic's id, shared by all its boxes (Redis keys `smartwait:{<id>}:...`).
    pub id: String,
    /// This box's name among the clinic's boxes; empty means the host name.
    pub node: String,
}

/// `[redis]`: replication to a central Redis; off without a URL.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` or `rediss://...`; empty = off
    /// (unless `sentinels` is set). With sentinels, only its scheme (TLS),
    /// user, password and db are used: the sentinels say where the primary is.
    pub url: String,
    /// Redis Sentinel: `host:port` (or `redis://[:password@]host:port`,
    /// `rediss://...`) of each sentinel that watches the primary.
    pub sentinels: Vec<String>,
    /// The name the sentinels know the primary by (`sentinel monitor NAME ...`).
    pub sentinel_master: String,
    /// Redis Cluster: `host:port` (or URLs) of some of its nodes; the rest
    /// is discovered. As with sentinels, `url` gives only TLS, user and password.
    pub cluster_nodes: Vec<String>,
    /// Outbox entries are kept until Redis has them on this many replicas
    /// (`WAIT` after each batch). Default: 1 with sentinels, else 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_replicas: Option<u32>,
    /// Longest one `WAIT` for the replicas may take.
    #[serde(with = "duration_text")]
    pub wait_timeout: Duration,
    /// Approximate length the clinic's stream is trimmed to.
    pub stream_maxlen: u64,
    /// Events older than this when replicated go to the stream only, not live.
    #[serde(with = "duration_text")]
    pub live_window: Duration,
    /// Outbox entries kept while Redis is unreachable; beyond, the oldest are dropped (counted).
    pub outbox_max_events: u64,
    /// Outbox events per MULTI/EXEC round trip.
    pub batch_events: usize,
    /// Longest a Redis command may take before the connection is dropped.
    #[serde(with = "duration_text")]
    pub command_timeout: Duration,
    /// A file holding the Redis password (its text, trailing newline
    /// trimmed), instead of a password inside `url`; a relative name is
    /// looked up in `$CREDENTIALS_DIRECTORY` (systemd's `LoadCredential=`).
    pub password_file: PathBuf,
    /// The clinic's key for signed envelopes between boxes (its text); a
    /// relative name is looked up in `$CREDENTIALS_DIRECTORY`. Empty: events
    /// from Redis are delivered unsigned, and the start warns about it.
    pub signing_key_file: PathBuf,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            sentinels: Vec::new(),
            sentinel_master: String::new(),
            cluster_nodes: Vec::new(),
            wait_replicas: None,
            wait_timeout: Duration::from_secs(1),
            stream_maxlen: 1_000_000,
            live_window: Duration::from_secs(5),
            outbox_max_events: 1_000_000,
            batch_events: 500,
            command_timeout: Duration::from_secs(5),
            password_file: PathBuf::new(),
            signing_key_file: PathBuf::new(),
        }
    }
}

impl RedisConfig {
    /// Whether the configured `url` itself carries a password (once
    /// `password_file` is read into `url`, that is not the case).
    fn password_inline(&self) -> bool {
        self.password_file.as_os_str().is_empty() && url_has_password(&self.url)
    }

    /// Reads `password_file` into `url` (in memory only).
    fn apply_password_file(&mut self, env: &[(String, String)]) -> anyhow::Result<()> {
        if self.password_file.as_os_str().is_empty() {
            return Ok(());
        }
        anyhow::ensure!(
            !self.url.is_empty(),
            "redis.password_file is set but redis.url is not"
        );
        anyhow::ensure!(
            !url_has_password(&self.url),
            "redis.url carries a password and redis.password_file is set too: keep one"
        );
        let path = credential_path(&self.password_file, env);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read redis.password_file {}", path.display()))?;
        let password = text.trim_end_matches(['\r', '\n']);
        anyhow::ensure!(
            !password.is_empty(),
            "redis.password_file {} is empty",
            path.display()
        );
        let (scheme, rest) = self
            .url
            .split_once("://")
            .context("redis.url has no scheme (redis:// or rediss://)")?;
        let (user, host) = match rest.rsplit_once('@') {
            Some((user, host)) => (user, host),
            None => ("", rest),
        };
        self.url = format!("{scheme}://{user}:{}@{host}", percent_encode(password));
        Ok(())
    }

    /// Whether replication is configured (`redis.url`, `redis.sentinels` or
    /// `redis.cluster_nodes` set).
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    /// How many replicas must have a batch before its outbox entries go.
    pub fn replicas_to_wait_for(&self) -> u32 {
        self.wait_replicas
            .unwrap_or(if self.sentinels.is_empty() { 0 } else { 1 })
    }

    /// With sentinels or cluster nodes and no `url`, Redis is reached
    /// without a password, in db 0, without TLS: `url` says so, so that
    /// `password_file` and every later reader find one URL.
    fn default_url_for_discovery(&mut self) {
        if self.url.is_empty() && !self.sentinels.is_empty() {
            self.url = format!("redis://{}", self.sentinel_master);
        }
        if self.url.is_empty() && !self.cluster_nodes.is_empty() {
            self.url = "redis://cluster".to_owned();
        }
    }
}

/// Where a credential file is: a relative name in `$CREDENTIALS_DIRECTORY`
/// when systemd set it (`LoadCredential=`), else as written.
fn credential_path(file: &Path, env: &[(String, String)]) -> PathBuf {
    match env.iter().find(|(name, _)| name == "CREDENTIALS_DIRECTORY") {
        Some((_, dir)) if file.is_relative() => Path::new(dir).join(file),
        _ => file.to_path_buf(),
    }
}

/// Whether a Redis URL carries a password (`scheme://[user]:password@host`).
fn url_has_password(url: &str) -> bool {
    url.split_once("://")
        .and_then(|(_, rest)| rest.rsplit_once('@'))
        .is_some_and(|(credentials, _)| credentials.contains(':'))
}

/// Percent-encodes everything but RFC 3986's unreserved characters, for a
/// password placed in a URL's userinfo.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (byte as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// `url` with any password replaced by `***`, for logs and `check-config`.
pub fn mask_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((credentials, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match credentials.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => format!("{scheme}://***@{host}"),
    }
}

impl Config {
    /// Loads the config: the explicit file, else the first default path that
    /// exists, else built-in defaults; then applies environment overrides.
    pub fn load(explicit: Option<&Path>) -> anyhow::Result<(Self, Option<PathBuf>)> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let path = match explicit {
            Some(path) => Some(path.to_path_buf()),
            None => DEFAULT_CONFIG_PATHS
                .iter()
                .map(PathBuf::from)
                .find(|path| path.is_file()),
        };
        let text = match &path {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?,
            None => String::new(),
        };
        let config = Self::from_sources(&text, &env).with_context(|| match &path {
            Some(path) => format!("invalid configuration (file {})", path.display()),
            None => "invalid configuration (built-in defaults)".to_owned(),
        })?;
        Ok((config, path))
    }

    /// Builds a config from TOML text and `(name, value)` environment pairs.
    pub fn from_sources(toml_text: &str, env: &[(String, String)]) -> anyhow::Result<Self> {
        let mut table: toml::Table =
            toml::from_str(toml_text).context("config file is not valid TOML")?;
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            apply_env_override(&mut table, name, rest, value)?;
        }
        let mut config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|err: toml::de::Error| anyhow::anyhow!("{}", err.message()))?;
        config.resolve_paths(env);
        config.redis.default_url_for_discovery();
        config.redis.apply_password_file(env)?;
        if !config.redis.signing_key_file.as_os_str().is_empty() {
            config.redis.signing_key_file = credential_path(&config.redis.signing_key_file, env);
        }
        config.validate()?;
        Ok(config)
    }

    /// What an operator should fix although the config works: a Redis
    /// password inside a config file that others may read.
    pub fn warnings(&self, path: Option<&Path>) -> Vec<String> {
        use std::os::unix::fs::PermissionsExt;
        let mut warnings = Vec::new();
        let readable_by_others = path
            .and_then(|path| std::fs::metadata(path).ok())
            .is_some_and(|meta| meta.permissions().mode() & 0o044 != 0);
        if self.redis.password_inline() && readable_by_others {
            warnings.push(format!(
                "the Redis password sits in redis.url inside {}, which other users may read: \
                 move it to redis.password_file (mode 0600, or systemd's LoadCredential=)",
                path.map_or_else(String::new, |path| path.display().to_string())
            ));
        }
        warnings
    }

    /// Fills in the paths that default to somewhere inside the state directory.
    fn resolve_paths(&mut self, env: &[(String, String)]) {
        if self.clinic.id.is_empty() {
            self.clinic.id = "clinic".to_owned();
        }
        if self.clinic.node.is_empty() {
            self.clinic.node = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|name| name.trim().to_owned())
                .filter(|name| !name.is_empty())
                .unwrap_or_else(|| "node".to_owned());
        }
        if self.server.state_dir.as_os_str().is_empty() {
            let systemd_dir = env
                .iter()
                .find(|(name, _)| name == "STATE_DIRECTORY")
                // systemd may pass several colon-separated directories; the first is ours.
                .and_then(|(_, value)| value.split(':').next().map(PathBuf::from));
            self.server.state_dir = systemd_dir.unwrap_or_else(|| PathBuf::from("./data"));
        }
        if self.auth.secret_file.as_os_str().is_empty() {
            self.auth.secret_file = self.server.state_dir.join("jwt-secret");
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        let limits = &self.limits;
        let positive = [
            ("limits.max_connections", limits.max_connections),
            ("limits.rooms_per_connection", limits.rooms_per_connection),
            ("limits.client_queue", limits.client_queue),
            (
                "limits.max_client_frame_bytes",
                limits.max_client_frame_bytes,
            ),
            (
                "limits.client_msgs_per_sec",
                limits.client_msgs_per_sec as usize,
            ),
            (
                "limits.client_msgs_burst",
                limits.client_msgs_burst as usize,
            ),
            ("limits.max_body_bytes", limits.max_body_bytes),
            ("limits.connections_per_ip", limits.connections_per_ip),
            ("limits.accept_rate", limits.accept_rate),
            (
                "store.memory_journal_events",
                self.store.memory_journal_events,
            ),
            // Saturating: on a 32-bit Pi a bound of 4 GiB must not read as 0.
            (
                "store.max_bytes",
                usize::try_from(self.store.max_bytes).unwrap_or(usize::MAX),
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                bail!("{key} must be greater than 0");
            }
        }
        let name_ok = |name: &str| {
            (1..=64).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        };
        if !name_ok(&self.clinic.id) || !name_ok(&self.clinic.node) {
            bail!("clinic.id and clinic.node must be 1-64 characters of A-Z, a-z, 0-9, '_', '-' and '.'");
        }
        if self.redis.enabled()
            && !(self.redis.url.starts_with("redis://") || self.redis.url.starts_with("rediss://"))
        {
            bail!("redis.url must start with redis:// or rediss://");
        }
        if !self.redis.sentinels.is_empty() && self.redis.sentinel_master.is_empty() {
            bail!("redis.sentinels is set: set redis.sentinel_master too (the name the sentinels monitor)");
        }
        if self.redis.sentinels.is_empty() && !self.redis.sentinel_master.is_empty() {
            bail!("redis.sentinel_master is set but redis.sentinels is empty");
        }
        if !self.redis.sentinels.is_empty() && !self.redis.cluster_nodes.is_empty() {
            bail!("redis.sentinels and redis.cluster_nodes are both set: a Redis Cluster has no sentinels, keep one");
        }
        if self.redis.replicas_to_wait_for() > 0
            && (self.redis.wait_timeout.is_zero()
                || self.redis.wait_timeout >= self.redis.command_timeout)
        {
            bail!("redis.wait_timeout must be greater than 0 and less than redis.command_timeout while redis.wait_replicas is");
        }
        if self.redis.outbox_max_events == 0
            || self.redis.stream_maxlen == 0
            || self.redis.batch_events == 0
        {
            bail!("redis.outbox_max_events, redis.stream_maxlen and redis.batch_events must be greater than 0");
        }
        if self.socketio.ping_interval.is_zero()
            || self.socketio.ping_timeout.is_zero()
            || self.socketio.connect_timeout.is_zero()
        {
            bail!("socketio.ping_interval, socketio.ping_timeout and socketio.connect_timeout must be greater than 0");
        }
        if self.limits.header_timeout.is_zero() || self.limits.keepalive_timeout.is_zero() {
            bail!("limits.header_timeout and limits.keepalive_timeout must be greater than 0");
        }
        if self.server.redirect_http.is_some() && !self.server.tls_enabled() {
            bail!("server.redirect_http redirects to HTTPS: set server.tls_cert and server.tls_key too");
        }
        if self.server.redirect_http.is_some_and(|addr| {
            addr.port() == self.server.listen.port() && addr.ip() == self.server.listen.ip()
        }) {
            bail!("server.redirect_http must be another address than server.listen");
        }
        if self.ws.ping_interval.is_zero() || self.ws.ping_interval >= self.ws.idle_timeout {
            bail!("ws.ping_interval must be greater than 0 and less than ws.idle_timeout");
        }
        Ok(())
    }

    /// The effective configuration as TOML, for `check-config`.
    pub fn to_toml(&self) -> anyhow::Result<String> {
        let mut shown = self.clone();
        shown.redis.url = mask_url_password(&shown.redis.url);
        toml::to_string_pretty(&shown).context("cannot render the configuration")
    }
}

/// Sections that environment overrides may address. Section names have no
/// underscore, so `SMARTWAIT_LIMITS_CLIENT_QUEUE` splits unambiguously.
const SECTIONS: [&str; 11] = [
    "server", "auth", "limits", "ws", "queue", "api", "history", "store", "clinic", "redis",
    "socketio",
];

fn apply_env_override(
    table: &mut toml::Table,
    name: &str,
    rest: &str,
    value: &str,
) -> anyhow::Result<()> {
    let lower = rest.to_ascii_lowercase();
    let Some((section, key)) = lower.split_once('_') else {
        bail!("environment variable {name} does not name a config key (expected SMARTWAIT_<SECTION>_<KEY>)");
    };
    if !SECTIONS.contains(&section) || key.is_empty() {
        bail!(
            "environment variable {name}: unknown config section '{section}' (known: {})",
            SECTIONS.join(", ")
        );
    }
    let entry = table
        .entry(section)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let Some(section_table) = entry.as_table_mut() else {
        bail!("config section [{section}] is not a table");
    };
    section_table.insert(key.to_owned(), env_value(value));
    Ok(())
}

/// Reads an environment value as a TOML scalar when it is one (`8080`,
/// `true`), else as a plain string (`0.0.0.0:8080`, `5s`).
fn env_value(value: &str) -> toml::Value {
    format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut table| table.remove("v"))
        .filter(|parsed| !parsed.is_table())
        .unwrap_or_else(|| toml::Value::String(value.to_owned()))
}

/// Durations written as text: `"500ms"`, `"5s"`, `"10m"`, `"12h"`.
pub mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes a duration as `"5s"`.
    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(*value).to_string())
    }

    /// Reads a duration written `"500ms"`, `"5s"`, `"10m"`, `"12h"`.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(|err| {
            serde::de::Error::custom(format!(
                "invalid duration '{text}' ({err}); write it like \"5s\", \"10m\" or \"12h\""
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn defaults_apply_without_any_source() {
        let config = Config::from_sources("", &[]).unwrap();
        assert_eq!(config.server.listen.port(), 8080);
        assert_eq!(config.server.state_dir, PathBuf::from("./data"));
        assert_eq!(config.auth.secret_file, PathBuf::from("./data/jwt-secret"));
        assert_eq!(config.limits.client_queue, 1024);
        assert_eq!(config.ws.idle_timeout, Duration::from_secs(60));
    }

    #[test]
    fn env_overrides_file_and_parses_scalars() {
        let text = "[limits]\nclient_queue = 10\n[ws]\nping_interval = \"5s\"\n";
        let config = Config::from_sources(
            text,
            &env(&[
                ("SMARTWAIT_LIMITS_CLIENT_QUEUE", "99"),
                ("SMARTWAIT_SERVER_LISTEN", "127.0.0.1:9000"),
                ("SMARTWAIT_AUTH_PATIENTS_ROOM_PUBLIC", "false"),
                ("STATE_DIRECTORY", "/var/lib/smartwait-gateway"),
            ]),
        )
        .unwrap();
        assert_eq!(config.limits.client_queue, 99);
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:9000");
        assert!(!config.auth.patients_room_public);
        assert_eq!(config.ws.ping_interval, Duration::from_secs(5));
        assert_eq!(
            config.server.state_dir,
            PathBuf::from("/var/lib/smartwait-gateway")
        );
    }

    #[test]
    fn mistakes_are_clear_errors() {
        let unknown_key = Config::from_sources("[limits]\nclient_qeue = 1\n", &[]).unwrap_err();
        assert!(format!("{unknown_key:#}").contains("client_qeue"));
        let bad_duration =
            Config::from_sources("[ws]\nidle_timeout = \"soon\"\n", &[]).unwrap_err();
        assert!(format!("{bad_duration:#}").contains("invalid duration"));
        let unknown_section =
            Config::from_sources("", &env(&[("SMARTWAIT_LIMIT_CLIENT_QUEUE", "1")])).unwrap_err();
        assert!(format!("{unknown_section:#}").contains("unknown config section"));
        let zero = Config::from_sources("[limits]\nclient_queue = 0\n", &[]).unwrap_err();
        assert!(format!("{zero:#}").contains("client_queue"));
    }

    #[test]
    fn sentinels_or_cluster_nodes_replace_the_url_and_sentinels_wait_for_one_replica() {
        let config = Config::from_sources(
            "[redis]\nsentinels = [\"10.0.0.5:26379\"]\nsentinel_master = \"clinic\"\n",
            &[],
        )
        .unwrap();
        assert!(config.redis.enabled());
        assert_eq!(config.redis.url, "redis://clinic");
        assert_eq!(config.redis.replicas_to_wait_for(), 1);
        let plain = Config::from_sources("[redis]\nurl = \"redis://h:6379\"\n", &[]).unwrap();
        assert_eq!(plain.redis.replicas_to_wait_for(), 0);
        let nameless =
            Config::from_sources("[redis]\nsentinels = [\"h:26379\"]\n", &[]).unwrap_err();
        assert!(format!("{nameless:#}").contains("redis.sentinel_master"));
        let slow_wait = Config::from_sources(
            "[redis]\nurl = \"redis://h\"\nwait_replicas = 1\nwait_timeout = \"10s\"\n",
            &[],
        )
        .unwrap_err();
        assert!(format!("{slow_wait:#}").contains("redis.wait_timeout"));
        let cluster = Config::from_sources("[redis]\ncluster_nodes = [\"h:7000\"]\n", &[]).unwrap();
        assert!(cluster.redis.enabled());
        assert_eq!(cluster.redis.replicas_to_wait_for(), 0);
        let both = Config::from_sources(
            "[redis]\ncluster_nodes = [\"h:7000\"]\nsentinels = [\"h:26379\"]\nsentinel_master = \"m\"\n",
            &[],
        )
        .unwrap_err();
        assert!(format!("{both:#}").contains("redis.cluster_nodes"));
    }

    #[test]
    fn redis_passwords_are_masked() {
        assert_eq!(
            mask_url_password("redis://:s3cret@host:6379/0"),
            "redis://:***@host:6379/0"
        );
        assert_eq!(
            mask_url_password("rediss://app:s3cret@host"),
            "rediss://app:***@host"
        );
        assert_eq!(mask_url_password("redis://host:6379"), "redis://host:6379");
        let config = Config::from_sources("[redis]\nurl = \"redis://u:pw@h:1\"\n", &[]).unwrap();
        assert!(!config.to_toml().unwrap().contains("pw"));
    }

    #[test]
    fn rendered_config_loads_back() {
        let config = Config::from_sources("", &[]).unwrap();
        let again = Config::from_sources(&config.to_toml().unwrap(), &[]).unwrap();
        assert_eq!(again.to_toml().unwrap(), config.to_toml().unwrap());
    }
}
