//! The `smartwait-gateway` command: parses arguments, loads the config,
//! starts logging, runs the gateway until SIGTERM/SIGINT, or runs one of the
//! helper commands (`token`, `check-config`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use smartwait_gateway::auth::{Authenticator, Role};
use smartwait_gateway::{
    fleet_command, fleet_serve, Config, FleetCommand, Gateway, StopReason, TlsReloader,
};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "WebSocket rooms gateway for clinic waiting-room screens"
)]
struct Cli {
    /// Config file; default: ./config/gateway.toml, then /etc/smartwait-gateway/gateway.toml.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Log format; the level comes from RUST_LOG (default: info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve clients (the default).
    Run,
    /// Print a token signed with the configured secret.
    Token {
        #[arg(long, value_enum)]
        role: Role,
        /// Who the token is for (a staff login, a display name, a system).
        #[arg(long, default_value = "smartwait")]
        sub: String,
        /// The patient's id (role patient).
        #[arg(long)]
        patient_id: Option<String>,
        /// Lifetime, e.g. 30m, 12h, 30d.
        #[arg(long, default_value = "12h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Also print the token's claims (its `jti` included, by which it
        /// alone can be revoked) on standard error, as JSON.
        #[arg(long)]
        show_claims: bool,
    },
    /// Validate the config and print the effective values.
    CheckConfig,
    /// Central operations: every box of every clinic that reports to the
    /// central Redis — up, degraded, stopped or missing, since when and why.
    /// Exit status 0 when every box is up, 1 when any is degraded or
    /// missing, 2 when Redis cannot be reached.
    Fleet {
        #[command(subcommand)]
        action: Option<FleetAction>,
        /// The central Redis (default: the config's redis.url).
        #[arg(long, global = true)]
        redis: Option<String>,
        /// Only this clinic's boxes.
        #[arg(long)]
        clinic: Option<String>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Refresh in place every 2 s until interrupted.
        #[arg(long)]
        watch: bool,
        /// Remove a decommissioned box, given as CLINIC/NODE.
        #[arg(long, value_name = "CLINIC/NODE")]
        forget: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum FleetAction {
    /// The central fleet service: GET /metrics (every box, one series each,
    /// for Prometheus) and GET /fleet/api/boxes, with a monitor or service
    /// token. It reads the central Redis and never connects to a box.
    Serve {
        #[arg(long, default_value = "127.0.0.1:9464")]
        listen: std::net::SocketAddr,
        /// A directory with one file per clinic that signs its events
        /// (`<dir>/<clinic>`, the clinic's redis.signing_key_file):
        /// announcements to that clinic are signed with it.
        #[arg(long)]
        signing_keys: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Plain stderr, not the log: these are read by a person at a terminal or in the journal.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let (config, path) = Config::load(cli.config.as_deref())?;
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => serve(config, path),
        Command::Token {
            role,
            sub,
            patient_id,
            ttl,
            show_claims,
        } => {
            if role == Role::Patient && patient_id.is_none() {
                anyhow::bail!("a patient token needs --patient-id");
            }
            let auth = Authenticator::from_config(&config.auth)?;
            let claims = auth.claims_for(role, &sub, patient_id.as_deref(), ttl)?;
            println!("{}", auth.mint_claims(&claims)?);
            if show_claims {
                eprintln!("{}", serde_json::to_string(&claims)?);
            }
            Ok(())
        }
        Command::Fleet {
            action,
            redis,
            clinic,
            json,
            watch,
            forget,
        } => {
            let mut redis_config = config.redis;
            if let Some(url) = redis {
                redis_config.url = url;
                redis_config.sentinels.clear();
                redis_config.sentinel_master.clear();
                redis_config.cluster_nodes.clear();
            }
            if !redis_config.enabled() {
                eprintln!(
                    "error: no central Redis: set redis.url in the config or pass --redis URL"
                );
                std::process::exit(2);
            }
            if let Some(FleetAction::Serve {
                listen,
                signing_keys,
            }) = action
            {
                let auth = Authenticator::from_config(&config.auth)?;
                let runtime =
                    tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
                return runtime.block_on(fleet_serve(
                    redis_config,
                    auth,
                    listen,
                    signing_keys,
                    &config.server,
                ));
            }
            let command = FleetCommand {
                clinic,
                json,
                watch,
                forget,
            };
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let status = runtime.block_on(fleet_command(&redis_config, &command));
            let _ = std::io::Write::flush(&mut std::io::stdout());
            std::process::exit(i32::from(status));
        }
        Command::CheckConfig => {
            let source = path
                .as_ref()
                .map_or("built-in defaults".to_owned(), |path| {
                    path.display().to_string()
                });
            println!(
                "# configuration is valid (from {source}, plus SMARTWAIT_* environment overrides)"
            );
            print!("{}", config.to_toml()?);
            for warning in config.warnings(path.as_deref()) {
                eprintln!("warning: {warning}");
            }
            Ok(())
        }
    }
}

fn serve(config: Config, path: Option<PathBuf>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        match &path {
            Some(path) => tracing::info!(config = %path.display(), "configuration loaded"),
            None => tracing::info!("no config file found; running on built-in defaults"),
        }
        for warning in config.warnings(path.as_deref()) {
            tracing::warn!("{warning}");
        }
        let shutdown = CancellationToken::new();
        let gateway = Gateway::new(config.clone(), shutdown.clone())?;
        let listener = smartwait_gateway::bind(&config).await?;
        let address = listener.local_addr().context("cannot read the listen address")?;
        let health_host = if address.ip().is_unspecified() {
            format!("127.0.0.1:{}", address.port())
        } else {
            address.to_string()
        };
        let scheme = if config.server.tls_cert.as_os_str().is_empty() { "http" } else { "https" };
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            "listening on {scheme}://{address} (WebSocket at /ws); health: {scheme}://{health_host}/health; \
             mint a token: smartwait-gateway token --role staff --sub nurse-1"
        );
        tokio::spawn(stop_on_signal(shutdown, gateway.stop_reason()));
        tokio::spawn(reload_on_hangup(gateway.tls_reloader(), gateway.authenticator()));
        gateway.run(listener).await?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Re-reads the TLS certificate and the JWT keys on SIGHUP (a clinic
/// rotates its certificate or its keys, docs/security.md).
async fn reload_on_hangup(tls: TlsReloader, auth: Authenticator) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot listen for SIGHUP");
        return;
    };
    while hangup.recv().await.is_some() {
        match tls.reload() {
            Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
            Err(err) => tracing::error!(
                error = format!("{err:#}"),
                "SIGHUP: TLS certificate not reloaded; keeping the current one"
            ),
        }
        match auth.reload_keys() {
            Ok(keys) => tracing::info!(
                keys,
                "SIGHUP: JWT keys reloaded; new tokens are signed with the first"
            ),
            Err(err) => tracing::error!(
                error = format!("{err:#}"),
                "SIGHUP: JWT keys not reloaded; keeping the current ones"
            ),
        }
    }
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
async fn stop_on_signal(shutdown: CancellationToken, reason: StopReason) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(err) => {
            tracing::error!(error = %err, "cannot listen for SIGTERM");
            return;
        }
    };
    let received = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    };
    tracing::info!("{received} received");
    reason.set(received);
    shutdown.cancel();
}
