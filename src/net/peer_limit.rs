//! The per-IP connection cap (`limits.connections_per_ip`): open TCP
//! connections are counted per address, and the count is held by the stream
//! itself, so it lasts exactly as long as the socket — also after a
//! WebSocket upgrade takes the socket out of hyper's hands.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

#[derive(Debug)]
pub struct PeerCounts {
    limit: usize,
    /// Held only to bump one entry.
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PeerCounts {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Counts a new connection from `ip`, or `None` when it has too many.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<PeerGuard> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(ip).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(PeerGuard {
            counts: self.clone(),
            ip,
        })
    }
}

/// One counted connection; dropping it frees the place.
#[derive(Debug)]
pub struct PeerGuard {
    counts: Arc<PeerCounts>,
    ip: IpAddr,
}

impl Drop for PeerGuard {
    fn drop(&mut self) {
        let mut open = self
            .counts
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// A TCP stream that carries its place under the per-IP cap.
#[derive(Debug)]
pub struct CountedStream {
    inner: TcpStream,
    _guard: PeerGuard,
}

impl CountedStream {
    pub fn new(inner: TcpStream, guard: PeerGuard) -> Self {
        Self {
            inner,
            _guard: guard,
        }
    }

    /// The socket and its place under the cap, to be kept together by the caller.
    pub fn into_parts(self) -> (TcpStream, PeerGuard) {
        (self.inner, self._guard)
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_address_and_frees_on_drop() {
        let counts = PeerCounts::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = counts.admit(a).unwrap();
        let _second = counts.admit(a).unwrap();
        assert!(counts.admit(a).is_none());
        assert!(
            counts.admit(b).is_some(),
            "other addresses are not affected"
        );
        drop(first);
        assert!(counts.admit(a).is_some());
    }
}
