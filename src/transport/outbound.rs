//! The bytes leaving one WebSocket connection written to directly (native,
//! or Socket.IO opened over WebSocket), and who writes them.
//!
//! The rooms core's fan-out writes a broadcast's frames — encoded once, header
//! included (server frames are not masked, so every recipient gets the same
//! bytes) — straight into each member's socket, with one non-blocking
//! `writev` per member per run of events, instead of waking one task per
//! member per event: that wake-up and the session's pass over its inputs
//! cost more than the write itself. What a socket does not take at once
//! (its kernel buffer is full, or the connection is TLS, whose encryption
//! state belongs to the session) waits in `pending`, at most `capacity`
//! frames, and the session writes it when the socket takes more. A client
//! that lets more pile up is told to close (1013) through `overflowed`.
//!
//! Everything sent on the connection — broadcasts, the session's replies and
//! tungstenite's own control frames (through [`OutboundIo`]) — goes through
//! the same `pending` queue under one mutex, so frames never interleave and
//! leave in the order they were given. The mutex is held for a
//! non-blocking write at most, never across an `.await`.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::core::fanout::{DirectFraming, DirectLink, Handed};
use crate::net::peer_limit::{CountedStream, PeerGuard};
use crate::net::tls::ClientStream;

/// Frames gathered into one `writev`.
const MAX_SLICES: usize = 64;

#[derive(Debug)]
struct State {
    /// Plain TCP: the socket's write half, written by whoever holds the lock.
    /// `None` over TLS (the session writes) and once the connection ended.
    direct: Option<OwnedWriteHalf>,
    /// Frames not yet (fully) written, oldest first.
    pending: VecDeque<Bytes>,
    /// While the session writes a reply and the backlog that must precede
    /// live events, broadcasts wait here.
    held: Option<Vec<Bytes>>,
    closed: bool,
    /// `overflowed` was cancelled (kept here too: the token's own check
    /// takes a lock of its own on every broadcast).
    overflowed: bool,
}

impl State {
    /// Writes `pending` from its front until it is empty or `write` cannot
    /// take more. Partly written frames stay at the front, advanced.
    fn write_pending(
        &mut self,
        mut write: impl FnMut(&[IoSlice<'_>]) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let count = gather(self.pending.iter(), &mut slices);
            match write(&slices[..count]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(written)) => self.advance(written),
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => return Poll::Pending,
            }
        }
        // An idle connection keeps no queue memory.
        self.pending = VecDeque::new();
        Poll::Ready(Ok(()))
    }

    fn advance(&mut self, mut written: usize) {
        while written > 0 {
            let Some(front) = self.pending.front_mut() else {
                return;
            };
            if written < front.len() {
                front.advance(written);
                return;
            }
            written -= front.len();
            self.pending.pop_front();
        }
    }

    /// Appends `frames` minus the first `written` bytes of them; returns
    /// whether the first frame appended is the rest of one partly written.
    fn queue_rest(&mut self, frames: &[Bytes], mut written: usize) -> bool {
        let mut partial = false;
        for frame in frames {
            if written >= frame.len() {
                written -= frame.len();
                continue;
            }
            partial |= written > 0;
            self.pending.push_back(frame.slice(written..));
            written = 0;
        }
        partial
    }
}

/// Fills `slices` with the frames' bytes; returns how many were filled.
fn gather<'a>(frames: impl Iterator<Item = &'a Bytes>, slices: &mut [IoSlice<'a>]) -> usize {
    let mut count = 0;
    for (slot, frame) in slices.iter_mut().zip(frames) {
        *slot = IoSlice::new(frame);
        count += 1;
    }
    count
}

fn try_write(direct: &OwnedWriteHalf, slices: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
    match direct.try_write_vectored(slices) {
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
        result => Poll::Ready(result),
    }
}

/// One connection's outgoing bytes; shared by its session (through
/// [`OutboundIo`]) and by the rooms it is a member of.
#[derive(Debug)]
pub struct Outbound {
    state: Mutex<State>,
    /// The session, woken when `pending` needs it.
    session: AtomicWaker,
    overflowed: CancellationToken,
    capacity: usize,
    /// The framing the fan-out encodes this connection's broadcasts in.
    framing: DirectFraming,
}

impl Outbound {
    pub(crate) fn new(
        direct: Option<OwnedWriteHalf>,
        capacity: usize,
        framing: DirectFraming,
    ) -> Self {
        Self {
            state: Mutex::new(State {
                direct,
                pending: VecDeque::new(),
                held: None,
                closed: false,
                overflowed: false,
            }),
            session: AtomicWaker::new(),
            overflowed: CancellationToken::new(),
            capacity,
            framing,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every update leaves the queue consistent, so a poisoned lock is safe to reuse.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Cancelled when the client fell `capacity` frames behind.
    pub fn overflowed(&self) -> &CancellationToken {
        &self.overflowed
    }

    /// Hands a broadcast's frames (in order) to the connection without
    /// waiting: written now when the socket takes them, else queued for the
    /// session to write.
    pub fn broadcast(&self, frames: &[Bytes]) -> Handed {
        let mut state = self.state();
        if state.closed || state.overflowed {
            return Handed::Closed;
        }
        let pending = state.pending.len();
        if let Some(held) = &mut state.held {
            if held.len() + frames.len() + pending > self.capacity {
                return self.overflow(&mut state);
            }
            held.extend_from_slice(frames);
            return Handed::Accepted;
        }
        let mut written = 0;
        if state.pending.is_empty() {
            if let Some(direct) = &state.direct {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let count = gather(frames.iter(), &mut slices);
                match try_write(direct, &slices[..count]) {
                    Poll::Ready(Ok(n)) => written = n,
                    // The read side will see the connection end; the session closes it.
                    Poll::Ready(Err(_)) => return Handed::Closed,
                    Poll::Pending => {}
                }
            }
        }
        let before = state.pending.len();
        let partial = state.queue_rest(frames, written);
        let handed = if state.pending.len() > self.capacity {
            // Only the rest of a frame already started may stay: the stream
            // must stay well-framed for the Close frame that follows.
            state.pending.truncate(before + usize::from(partial));
            self.overflow(&mut state)
        } else {
            Handed::Accepted
        };
        if !state.pending.is_empty() {
            drop(state);
            self.session.wake();
        }
        handed
    }

    fn overflow(&self, state: &mut State) -> Handed {
        state.overflowed = true;
        self.overflowed.cancel();
        Handed::Overflowed
    }

    /// Completes when frames wait for the session to write them.
    pub fn poll_has_pending(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.session.register(cx.waker());
        let state = self.state();
        if state.pending.is_empty() || state.held.is_some() {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }

    /// Broadcasts wait until the guard is dropped: what the session writes
    /// meanwhile (a join's reply and backlog) goes out first.
    pub fn hold(self: &Arc<Self>) -> Hold {
        let mut state = self.state();
        if state.held.is_none() {
            state.held = Some(Vec::new());
        }
        Hold(self.clone())
    }

    /// Queues the session's own frames (replies, backlog), after what waits.
    pub fn push(&self, frames: &[Bytes]) {
        let mut state = self.state();
        if !state.closed {
            state.pending.extend(frames.iter().cloned());
        }
    }

    /// Drops the frames not yet started, so that a Close frame queued next
    /// goes out without waiting behind them (the client is being closed).
    pub fn discard_unsent(&self) {
        let mut state = self.state();
        // The front frame may be partly written: it must be finished.
        state.pending.truncate(1);
        state.held = None;
    }

    /// The connection has ended: nothing more is accepted and the write
    /// half is released.
    pub fn close(&self) {
        let mut state = self.state();
        state.closed = true;
        state.direct = None;
        state.pending = VecDeque::new();
        state.held = None;
    }
}

impl DirectLink for Outbound {
    fn framing(&self) -> DirectFraming {
        self.framing
    }

    fn broadcast(&self, frames: &[Bytes]) -> Handed {
        Outbound::broadcast(self, frames)
    }

    fn overflowed(&self) -> &CancellationToken {
        Outbound::overflowed(self)
    }
}

/// Keeps broadcasts back while it lives; see [`Outbound::hold`].
pub struct Hold(Arc<Outbound>);

impl Drop for Hold {
    fn drop(&mut self) {
        let mut state = self.0.state();
        if let Some(held) = state.held.take() {
            state.pending.extend(held);
        }
        let waiting = !state.pending.is_empty();
        drop(state);
        if waiting {
            self.0.session.wake();
        }
    }
}

/// A WebSocket written through its [`Outbound`] queue.
pub type DirectSocket = tokio_tungstenite::WebSocketStream<OutboundIo>;

/// The reading end of the connection, and over TLS the whole stream.
#[derive(Debug)]
enum Reader {
    Plain(OwnedReadHalf),
    Tls(Box<TlsStream<CountedStream>>),
}

/// The stream tungstenite reads from and writes to: reads come from the
/// socket, writes go through the connection's [`Outbound`] queue.
#[derive(Debug)]
pub struct OutboundIo {
    reader: Reader,
    outbound: Arc<Outbound>,
    /// A plain connection's place under the per-IP cap (a TLS stream carries its own).
    _peer: Option<PeerGuard>,
}

impl OutboundIo {
    /// Splits a client stream; `capacity` bounds the frames that may wait,
    /// `framing` is what its broadcasts are encoded in.
    pub fn new(stream: ClientStream, capacity: usize, framing: DirectFraming) -> Self {
        match stream {
            ClientStream::Plain(counted) => {
                let (tcp, peer) = counted.into_parts();
                let (read, write) = tcp.into_split();
                Self {
                    reader: Reader::Plain(read),
                    outbound: Arc::new(Outbound::new(Some(write), capacity, framing)),
                    _peer: Some(peer),
                }
            }
            ClientStream::Tls(tls) => Self {
                reader: Reader::Tls(tls),
                outbound: Arc::new(Outbound::new(None, capacity, framing)),
                _peer: None,
            },
        }
    }

    pub fn outbound(&self) -> &Arc<Outbound> {
        &self.outbound
    }
}

impl AsyncRead for OutboundIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().reader {
            Reader::Plain(read) => Pin::new(read).poll_read(cx, buf),
            Reader::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for OutboundIo {
    /// Takes the whole buffer into the queue: tungstenite's writes are
    /// replies and control frames, few and small.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.outbound.push(&[Bytes::copy_from_slice(buf)]);
        // Start writing now; what the socket does not take waits for a flush.
        if let Poll::Ready(Err(err)) = this.write_queued(cx) {
            return Poll::Ready(Err(err));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.write_queued(cx) {
            Poll::Ready(Ok(())) => match &mut this.reader {
                Reader::Plain(_) => Poll::Ready(Ok(())),
                Reader::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
            },
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.write_queued(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        match &mut this.reader {
            Reader::Plain(_) => {
                let mut state = this.outbound.state();
                match state.direct.as_mut() {
                    Some(direct) => Pin::new(direct).poll_shutdown(cx),
                    None => Poll::Ready(Ok(())),
                }
            }
            Reader::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

impl OutboundIo {
    /// Writes what waits in the queue, registering `cx` for when the socket
    /// takes more.
    fn write_queued(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.outbound.state();
        match &mut self.reader {
            Reader::Plain(_) => {
                let mut direct = state.direct.take();
                let result = match direct.as_mut() {
                    Some(write) => state.write_pending(|slices| {
                        Pin::new(&mut *write).poll_write_vectored(cx, slices)
                    }),
                    None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
                };
                state.direct = direct;
                result
            }
            Reader::Tls(tls) => {
                state.write_pending(|slices| Pin::new(tls.as_mut()).poll_write_vectored(cx, slices))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        State {
            direct: None,
            pending: VecDeque::new(),
            held: None,
            closed: false,
            overflowed: false,
        }
    }

    #[test]
    fn partial_writes_resume_mid_frame() {
        let mut state = state();
        let frames = [Bytes::from_static(b"abc"), Bytes::from_static(b"defg")];
        assert!(state.queue_rest(&frames, 4));
        assert_eq!(state.pending, [Bytes::from_static(b"efg")]);

        let mut state = self::state();
        state.queue_rest(&frames, 0);
        let mut out = Vec::new();
        let budget = [2usize, 3, 100];
        let mut turn = 0;
        let result = state.write_pending(|slices| {
            let take = budget[turn];
            turn += 1;
            let mut written = 0;
            for slice in slices {
                let n = slice.len().min(take - written);
                out.extend_from_slice(&slice[..n]);
                written += n;
                if written == take {
                    break;
                }
            }
            Poll::Ready(Ok(written))
        });
        assert!(matches!(result, Poll::Ready(Ok(()))));
        assert_eq!(out, b"abcdefg");
        assert!(state.pending.is_empty());
    }

    #[test]
    fn a_blocked_socket_keeps_the_rest_in_order() {
        let mut state = state();
        state.queue_rest(&[Bytes::from_static(b"abc")], 0);
        let mut calls = 0;
        let result = state.write_pending(|_| {
            calls += 1;
            if calls == 1 {
                Poll::Ready(Ok(1))
            } else {
                Poll::Pending
            }
        });
        assert!(result.is_pending());
        assert_eq!(state.pending, [Bytes::from_static(b"bc")]);
    }

    #[test]
    fn held_broadcasts_follow_the_sessions_frames_and_overflow_counts_them() {
        let outbound = Arc::new(Outbound::new(None, 3, DirectFraming::Native));
        let hold = outbound.hold();
        assert_eq!(
            outbound.broadcast(&[Bytes::from_static(b"live")]),
            Handed::Accepted
        );
        outbound.push(&[Bytes::from_static(b"reply"), Bytes::from_static(b"backlog")]);
        assert_eq!(
            outbound.broadcast(&[Bytes::from_static(b"more")]),
            Handed::Overflowed
        );
        drop(hold);
        let order: Vec<_> = outbound.state().pending.iter().cloned().collect();
        assert_eq!(order, ["reply", "backlog", "live"].map(Bytes::from));
        outbound.close();
        assert_eq!(
            outbound.broadcast(&[Bytes::from_static(b"x")]),
            Handed::Closed
        );
    }
}
