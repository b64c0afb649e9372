//! [`TcpProxy`]: a TCP proxy on a free loopback port in front of a real
//! server, which can make chosen Redis connections that pass through it go
//! quiet: they stay open and the client's bytes still reach the server,
//! but nothing comes back — a NAT or firewall that dropped one flow. A
//! quiet subscription is what a subscription's canary exists to catch; a
//! quiet replica link makes writes that the primary acknowledged exist on
//! the primary alone (SIGSTOP on the replica does not: on loopback the
//! kernel buffers the stream, and the replica reads it when resumed).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One connection through the proxy.
#[derive(Default)]
struct Flow {
    /// The client sent SUBSCRIBE on it.
    subscriber: AtomicBool,
    /// The client is a replica (it sent PSYNC).
    replica: AtomicBool,
    /// Server-to-client bytes are dropped.
    frozen: AtomicBool,
}

/// Forwards every connection to `127.0.0.1:<target>` until dropped.
pub struct TcpProxy {
    pub port: u16,
    flows: Arc<Mutex<Vec<Arc<Flow>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy port");
        let port = listener.local_addr().expect("proxy address").port();
        let flows: Arc<Mutex<Vec<Arc<Flow>>>> = Arc::default();
        let accept = tokio::spawn({
            let flows = flows.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                        continue;
                    };
                    let flow = Arc::new(Flow::default());
                    flows.lock().expect("flows").push(flow.clone());
                    tokio::spawn(forward(client, server, flow));
                }
            }
        });
        Self {
            port,
            flows,
            accept,
        }
    }

    /// From now on, every connection that has subscribed gets nothing back
    /// (connections opened later pass normally). Returns how many.
    pub fn freeze_subscribers(&self) -> usize {
        self.freeze(|flow| flow.subscriber.load(Ordering::SeqCst))
    }

    /// From now on, every replica's link to the primary gets nothing more.
    pub fn freeze_replicas(&self) -> usize {
        self.freeze(|flow| flow.replica.load(Ordering::SeqCst))
    }

    fn freeze(&self, chosen: impl Fn(&Flow) -> bool) -> usize {
        let flows = self.flows.lock().expect("flows");
        let mut frozen = 0;
        for flow in flows.iter().filter(|flow| chosen(flow)) {
            flow.frozen.store(true, Ordering::SeqCst);
            frozen += 1;
        }
        frozen
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn forward(client: TcpStream, server: TcpStream, flow: Arc<Flow>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = {
        let flow = flow.clone();
        async move {
            let mut buffer = vec![0u8; 16 * 1024];
            loop {
                let n = match client_read.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let bytes = &buffer[..n];
                if says(bytes, b"SUBSCRIBE") {
                    flow.subscriber.store(true, Ordering::SeqCst);
                }
                if says(bytes, b"PSYNC") {
                    flow.replica.store(true, Ordering::SeqCst);
                }
                if server_write.write_all(bytes).await.is_err() {
                    return;
                }
            }
        }
    };
    let downstream = async move {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let n = match server_read.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if flow.frozen.load(Ordering::SeqCst) {
                continue;
            }
            if client_write.write_all(&buffer[..n]).await.is_err() {
                return;
            }
        }
    };
    // Either side ending ends the flow, as a real connection would.
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
    }
}

/// Whether `bytes` hold the command `word` (any case).
fn says(bytes: &[u8], word: &[u8]) -> bool {
    bytes
        .windows(word.len())
        .any(|window| window.eq_ignore_ascii_case(word))
}
