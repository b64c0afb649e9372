//! The bytes leaving one WebSocket connection written to directly (native,
//! or Socket.IO opened over WebSocket), plain or TLS, and who writes them.
//!
//! The rooms core's fan-out writes a broadcast's frames — encoded once, header
//! included (server frames are not masked, so every recipient gets the same
//! bytes) — straight into each member's socket, with one non-blocking
//! `writev` per member per run of events, instead of waking one task per
//! member per event: that wake-up and the session's pass over its inputs
//! cost more than the write itself. Over TLS the run is encrypted first,
//! under the same lock, into as few records as fit (one, for a run under
//! 16 KiB): one encryption and one write per member per run. The
//! connection's rustls state lives here, not in the session: the session
//! decrypts what it reads under the same lock.
//!
//! What a socket does not take at once (its kernel buffer is full) waits:
//! over TLS first as records in rustls' own buffer (its default 64 KiB
//! bound), then, like plain, as frames in `pending`, at most `capacity`, and
//! the session writes it when the socket takes more. A client that lets more
//! pile up is told to close (1013) through `overflowed`.
//!
//! Everything sent on the connection — broadcasts, the session's replies and
//! tungstenite's own control frames (through [`OutboundIo`]) — goes through
//! the same `pending` queue under one mutex, so frames never interleave and
//! leave in the order they were given. The mutex is held for a
//! non-blocking read or write at most, never across an `.await`.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::task::AtomicWaker;
use rustls::ServerConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::sync::CancellationToken;

use crate::core::fanout::{DirectFraming, DirectLink, Handed};
use crate::net::peer_limit::PeerGuard;
use crate::net::tls::ClientStream;

/// Frames gathered into one `writev` (or one encryption).
const MAX_SLICES: usize = 64;

#[derive(Debug)]
struct State {
    /// The socket's write half, written by whoever holds the lock; `None`
    /// once the connection ended.
    direct: Option<OwnedWriteHalf>,
    /// Over TLS, the connection's rustls state: frames are encrypted into
    /// it and its records written from it. Boxed: a plain connection pays
    /// one pointer for it.
    tls: Option<Box<ServerConnection>>,
    /// Frames not yet (fully) written — over TLS, not yet encrypted —
    /// oldest first.
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
    /// Writes `pending` (over TLS: encrypts it, and writes the records)
    /// until it is empty or `write` cannot take more. Partly written frames
    /// stay at the front, advanced.
    fn send(
        &mut self,
        mut write: impl FnMut(&[IoSlice<'_>]) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<()>> {
        let Some(tls) = self.tls.as_deref_mut() else {
            return write_pending(&mut self.pending, write);
        };
        loop {
            ready!(write_records(tls, &mut write))?;
            if self.pending.is_empty() {
                self.pending = VecDeque::new();
                return Poll::Ready(Ok(()));
            }
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let count = gather(self.pending.iter(), &mut slices);
            let taken = tls.writer().write_vectored(&slices[..count])?;
            if taken == 0 && !tls.wants_write() {
                // rustls takes none only while its buffer is full, which
                // the records' write above has just emptied; anything else
                // (its record limit reached) would loop here for ever.
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            advance(&mut self.pending, taken);
        }
    }

    /// Records rustls has ready to write (its own replies, or broadcasts a
    /// full socket did not take).
    fn records_waiting(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.wants_write())
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

/// Writes `pending` from its front until it is empty or `write` cannot take
/// more.
fn write_pending(
    pending: &mut VecDeque<Bytes>,
    mut write: impl FnMut(&[IoSlice<'_>]) -> Poll<io::Result<usize>>,
) -> Poll<io::Result<()>> {
    while !pending.is_empty() {
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let count = gather(pending.iter(), &mut slices);
        match ready!(write(&slices[..count])) {
            Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Ok(written) => advance(pending, written),
            Err(err) => return Poll::Ready(Err(err)),
        }
    }
    // An idle connection keeps no queue memory.
    *pending = VecDeque::new();
    Poll::Ready(Ok(()))
}

/// Writes the records rustls holds until none is left or `write` cannot
/// take more.
fn write_records(
    tls: &mut ServerConnection,
    write: impl FnMut(&[IoSlice<'_>]) -> Poll<io::Result<usize>>,
) -> Poll<io::Result<()>> {
    let mut sink = PollWriter(write);
    while tls.wants_write() {
        match tls.write_tls(&mut sink) {
            Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
            Err(err) => return Poll::Ready(Err(err)),
        }
    }
    Poll::Ready(Ok(()))
}

/// A poll-style write as the `io::Write` rustls writes its records to
/// (`Pending` is `WouldBlock`).
struct PollWriter<F>(F);

impl<F: FnMut(&[IoSlice<'_>]) -> Poll<io::Result<usize>>> Write for PollWriter<F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match (self.0)(bufs) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The socket's read half as the `io::Read` rustls reads records from,
/// registering `cx` when nothing is there.
struct PollReader<'a, 'b> {
    read: &'a mut OwnedReadHalf,
    cx: &'a mut Context<'b>,
}

impl Read for PollReader<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut buf = ReadBuf::new(buf);
        match Pin::new(&mut *self.read).poll_read(self.cx, &mut buf) {
            Poll::Ready(Ok(())) => Ok(buf.filled().len()),
            Poll::Ready(Err(err)) => Err(err),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

fn advance(pending: &mut VecDeque<Bytes>, mut written: usize) {
    while written > 0 {
        let Some(front) = pending.front_mut() else {
            return;
        };
        if written < front.len() {
            front.advance(written);
            return;
        }
        written -= front.len();
        pending.pop_front();
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
        tls: Option<Box<ServerConnection>>,
        capacity: usize,
        framing: DirectFraming,
    ) -> Self {
        Self {
            state: Mutex::new(State {
                direct,
                tls,
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
            let State { direct, tls, .. } = &mut *state;
            if let Some(direct) = direct {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let count = gather(frames.iter(), &mut slices);
                let sent = match tls.as_deref_mut() {
                    None => try_write(direct, &slices[..count]).map_ok(|n| written = n),
                    Some(tls) => match tls.writer().write_vectored(&slices[..count]) {
                        Ok(taken) => {
                            written = taken;
                            write_records(tls, |slices| try_write(direct, slices))
                        }
                        Err(err) => Poll::Ready(Err(err)),
                    },
                };
                if let Poll::Ready(Err(_)) = sent {
                    // The read side will see the connection end; the session closes it.
                    return Handed::Closed;
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
        if !state.pending.is_empty() || state.records_waiting() {
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
        if (state.pending.is_empty() && !state.records_waiting()) || state.held.is_some() {
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
    /// half is released. Over TLS a close_notify goes first, if the socket
    /// takes it at once, so that the client sees the end of the stream and
    /// not a truncation (rustls clients report a bare TCP close as an error).
    /// A session whose close handshake completed has sent it already, with
    /// its shutdown (rustls sends it once); this covers the other endings:
    /// the client closed first, or never answered the Close.
    pub fn close(&self) {
        let mut state = self.state();
        let State { direct, tls, .. } = &mut *state;
        if let (Some(direct), Some(tls)) = (direct.as_ref(), tls.as_deref_mut()) {
            tls.send_close_notify();
            let _ = write_records(tls, |slices| try_write(direct, slices));
        }
        state.closed = true;
        state.direct = None;
        state.tls = None;
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
        let waiting = !state.pending.is_empty() || state.records_waiting();
        drop(state);
        if waiting {
            self.0.session.wake();
        }
    }
}

/// A WebSocket written through its [`Outbound`] queue.
pub type DirectSocket = tokio_tungstenite::WebSocketStream<OutboundIo>;

/// The stream tungstenite reads from and writes to: reads come from the
/// socket (over TLS, decrypted under the [`Outbound`]'s lock), writes go
/// through the connection's [`Outbound`] queue.
#[derive(Debug)]
pub struct OutboundIo {
    reader: OwnedReadHalf,
    /// Whether the connection is TLS (known without taking the lock).
    tls: bool,
    outbound: Arc<Outbound>,
    /// The connection's place under the per-IP cap.
    _peer: PeerGuard,
}

impl OutboundIo {
    /// Splits a client stream; `capacity` bounds the frames that may wait,
    /// `framing` is what its broadcasts are encoded in. A TLS stream's
    /// rustls state moves into the [`Outbound`]: what rustls already
    /// buffered (either way) stays in it.
    pub fn new(stream: ClientStream, capacity: usize, framing: DirectFraming) -> Self {
        let (counted, tls) = match stream {
            ClientStream::Plain(counted) => (counted, None),
            ClientStream::Tls(stream) => {
                let (counted, tls) = (*stream).into_inner();
                (counted, Some(Box::new(tls)))
            }
        };
        let (tcp, peer) = counted.into_parts();
        let (reader, writer) = tcp.into_split();
        Self {
            reader,
            tls: tls.is_some(),
            outbound: Arc::new(Outbound::new(Some(writer), tls, capacity, framing)),
            _peer: peer,
        }
    }

    pub fn outbound(&self) -> &Arc<Outbound> {
        &self.outbound
    }

    /// Reads and decrypts until `buf` has plaintext, the peer closed, or
    /// the socket has nothing more.
    fn poll_read_tls(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut state = self.outbound.state();
        let State { direct, tls, .. } = &mut *state;
        let Some(tls) = tls.as_deref_mut() else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        loop {
            // Ok(0) after the peer's close_notify; UnexpectedEof after a
            // bare TCP close, as tokio-rustls reports them.
            match tls.reader().read(buf.initialize_unfilled()) {
                Ok(read) => {
                    buf.advance(read);
                    return Poll::Ready(Ok(()));
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Poll::Ready(Err(err)),
            }
            let read = tls.read_tls(&mut PollReader {
                read: &mut self.reader,
                cx,
            });
            match read {
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(err) => return Poll::Ready(Err(err)),
            }
            let processed = tls.process_new_packets();
            // What reading made rustls send (an alert, a key update's
            // answer) goes now; what the socket does not take, the session
            // writes when woken.
            if tls.wants_write() {
                if let Some(direct) = direct {
                    let _ = write_records(tls, |slices| try_write(direct, slices));
                }
                if tls.wants_write() {
                    self.outbound.session.wake();
                }
            }
            if let Err(err) = processed {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, err)));
            }
        }
    }

    /// Writes what waits in the queue, registering `cx` for when the socket
    /// takes more.
    fn write_queued(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.outbound.state();
        let mut direct = state.direct.take();
        let result = match direct.as_mut() {
            Some(write) => {
                state.send(|slices| Pin::new(&mut *write).poll_write_vectored(cx, slices))
            }
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        };
        state.direct = direct;
        result
    }
}

impl AsyncRead for OutboundIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.tls {
            this.poll_read_tls(cx, buf)
        } else {
            Pin::new(&mut this.reader).poll_read(cx, buf)
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
        self.get_mut().write_queued(cx)
    }

    /// Writes what waits, then over TLS a close_notify (sent once), then
    /// shuts the socket's write side.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.write_queued(cx))?;
        if let Some(tls) = this.outbound.state().tls.as_deref_mut() {
            tls.send_close_notify();
        }
        ready!(this.write_queued(cx))?;
        let mut state = this.outbound.state();
        match state.direct.as_mut() {
            Some(direct) => Pin::new(direct).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        State {
            direct: None,
            tls: None,
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
        let result = state.send(|slices| {
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
        let result = state.send(|_| {
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
        let outbound = Arc::new(Outbound::new(None, None, 3, DirectFraming::Native));
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
