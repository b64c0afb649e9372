//! How long an HTTP connection may keep the gateway waiting, in its two
//! phases: a request head must be complete within `limits.header_timeout`
//! of its first byte — and a new connection's first request within that
//! time of the accept — while a kept-alive connection may sit idle between
//! requests for `limits.keepalive_timeout`. hyper has a single timer for
//! both (its header read timeout starts when the previous response is
//! done), so a keep-alive would be cut at the header timeout; this module
//! tells the phases apart by watching the bytes read and the requests
//! served.
//!
//! The watch lives only as long as hyper owns the connection: a WebSocket
//! upgrade takes the stream out of [`Watched`] and the session's own
//! heartbeat (`ws.idle_timeout`) takes over.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a request head (or waiting for a new connection's first bytes).
    Head,
    /// A request is being served: hyper and the handler bound it.
    Serving,
    /// Between requests on a kept-alive connection.
    Idle,
}

/// Why a connection was closed by its watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// The request head did not arrive in time (slow or silent client).
    Head,
    /// The kept-alive connection sat idle too long.
    Idle,
}

impl std::fmt::Display for Expired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Head => "the request head did not arrive within limits.header_timeout",
            Self::Idle => "idle for limits.keepalive_timeout between requests",
        })
    }
}

/// The phase of one connection and since when it has been in it.
#[derive(Debug)]
pub struct ConnectionWatch {
    state: Mutex<(Phase, Instant)>,
    /// Wakes [`ConnectionWatch::expired`] when a head begins on an idle
    /// connection: its deadline is then earlier than the idle one.
    head_began: Notify,
    header_timeout: Duration,
    keepalive_timeout: Duration,
}

impl ConnectionWatch {
    /// A watch for a connection accepted now: its first head is due within
    /// `header_timeout`.
    pub fn new(header_timeout: Duration, keepalive_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new((Phase::Head, Instant::now())),
            head_began: Notify::new(),
            header_timeout,
            keepalive_timeout,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, (Phase, Instant)> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes arrived: on an idle connection, a new head has begun.
    fn bytes_read(&self) {
        let mut state = self.state();
        if state.0 == Phase::Idle {
            *state = (Phase::Head, Instant::now());
            drop(state);
            self.head_began.notify_one();
        }
    }

    /// hyper has the head and called the handler.
    pub fn request_started(&self) {
        *self.state() = (Phase::Serving, Instant::now());
    }

    /// The handler answered; the connection waits for the next request.
    pub fn request_finished(&self) {
        *self.state() = (Phase::Idle, Instant::now());
    }

    /// When the current phase runs out, if it can.
    fn deadline(&self) -> Option<(Instant, Expired)> {
        let (phase, since) = *self.state();
        match phase {
            Phase::Head => Some((since + self.header_timeout, Expired::Head)),
            Phase::Idle => Some((since + self.keepalive_timeout, Expired::Idle)),
            Phase::Serving => None,
        }
    }

    /// Resolves when the connection has overstayed its current phase.
    pub async fn expired(&self) -> Expired {
        loop {
            match self.deadline() {
                Some((deadline, why)) if deadline <= Instant::now() => return why,
                Some((deadline, _)) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(deadline) => {}
                        () = self.head_began.notified() => {}
                    }
                }
                // A request in progress: look again later. A request that
                // ends starts an idle phase, whose deadline is later than
                // this look, so nothing is missed by not being woken.
                None => tokio::time::sleep(self.header_timeout).await,
            }
        }
    }
}

/// A stream that reports the bytes it reads to its [`ConnectionWatch`].
#[derive(Debug)]
pub struct Watched<S> {
    inner: S,
    watch: Arc<ConnectionWatch>,
}

impl<S> Watched<S> {
    pub fn new(inner: S, watch: Arc<ConnectionWatch>) -> Self {
        Self { inner, watch }
    }

    /// The stream without its watch (after a WebSocket upgrade).
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.watch.bytes_read();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
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

    #[tokio::test(start_paused = true)]
    async fn phases_have_their_own_deadlines() {
        let watch = ConnectionWatch::new(Duration::from_secs(10), Duration::from_secs(60));
        assert_eq!(watch.deadline().map(|(_, why)| why), Some(Expired::Head));
        watch.request_started();
        assert_eq!(
            watch.deadline(),
            None,
            "a request in progress has no deadline here"
        );
        watch.request_finished();
        let (idle_until, why) = watch.deadline().unwrap();
        assert_eq!(why, Expired::Idle);
        assert_eq!(idle_until - Instant::now(), Duration::from_secs(60));
        tokio::time::advance(Duration::from_secs(30)).await;
        watch.bytes_read();
        let (head_until, why) = watch.deadline().unwrap();
        assert_eq!(why, Expired::Head);
        assert_eq!(head_until - Instant::now(), Duration::from_secs(10));
        assert_eq!(watch.expired().await, Expired::Head);
    }
}
