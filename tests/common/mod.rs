//! The tests' vocabulary, one file per thing it provides: a gateway served
//! in-process ([`gateway`]), the real binary ([`process`]), a native
//! WebSocket client ([`ws_client`]), HTTP requests ([`http_client`]), a
//! real Redis ([`redis_server`]), its sentinels ([`sentinel`]) and a Redis
//! Cluster ([`cluster`]), Node.js drivers ([`node`]) for the official
//! socket.io-client ([`sio`]) and headless Chromium ([`browser`]), the
//! fault-injecting file system ([`faultfs`]) and a TCP proxy that silences
//! a flow ([`proxy`]). Everything uses real sockets.

// Each suite compiles this module and uses a part of it.
#![allow(dead_code)]

pub mod browser;
pub mod cluster;
pub mod faultfs;
pub mod fleet;
pub mod gateway;
pub mod http_client;
pub mod node;
pub mod process;
pub mod proxy;
pub mod redis_server;
pub mod sentinel;
pub mod sio;
pub mod ws_client;

use std::time::Duration;

// Re-exported for the suites, each of which uses a part.
#[allow(unused_imports)]
pub use cluster::*;
#[allow(unused_imports)]
pub use faultfs::*;
#[allow(unused_imports)]
pub use fleet::*;
#[allow(unused_imports)]
pub use gateway::*;
#[allow(unused_imports)]
pub use http_client::*;
#[allow(unused_imports)]
pub use node::*;
#[allow(unused_imports)]
pub use process::*;
#[allow(unused_imports)]
pub use proxy::*;
#[allow(unused_imports)]
pub use redis_server::*;
#[allow(unused_imports)]
pub use sentinel::*;
#[allow(unused_imports)]
pub use ws_client::*;

/// How long a test waits for something that should happen promptly. Generous
/// on purpose: this is a liveness bound, not a speed assertion.
pub const PROMPTLY: Duration = Duration::from_secs(10);

/// How long a test listens to be sure something does *not* arrive.
pub const QUIET_PERIOD: Duration = Duration::from_millis(300);

/// Polls `check` every 20 ms until it is true, failing after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free TCP port on 127.0.0.1 (for servers that cannot bind port 0 and report it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port()
}
