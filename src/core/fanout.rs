//! Writing committed broadcasts to native WebSocket connections, on a
//! thread of its own so that the writer thread can commit the next batch
//! meanwhile.
//!
//! The rooms core collects, under its lock, which connections each run of
//! consecutive events of one room goes to ([`DirectWrites`]); this thread
//! hands each run to each connection's [`DirectLink`], which the transports
//! implement with one non-blocking `writev`. A run carries its events in
//! each [`DirectFraming`] its members speak (native, Socket.IO over
//! WebSocket), each encoded once. Batches that queued up while it was writing are
//! merged first: when a room's members did not change in between, their
//! runs become one, so under load more frames leave per write. Batches are
//! taken in commit order and each is finished before the next, so a client
//! gets its frames in seq order. The queue of batches is bounded: a
//! writer thread that gets too far ahead waits, which in turn makes
//! publishers wait — nothing accepted is dropped.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::event::{Encoder, Framing, RoomEvent};

/// The framings of the clients written to directly: each a complete
/// WebSocket frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectFraming {
    Native,
    SocketIo,
}

impl DirectFraming {
    const ALL: [DirectFraming; 2] = [DirectFraming::Native, DirectFraming::SocketIo];

    fn framing(self) -> Framing {
        match self {
            Self::Native => Framing::Native,
            Self::SocketIo => Framing::SocketIoFrame,
        }
    }
}

/// How each [`DirectFraming`] is encoded, handed in by the transports.
#[derive(Debug, Clone, Copy)]
pub struct DirectEncoders {
    pub native: Encoder,
    pub socketio: Encoder,
}

impl DirectEncoders {
    fn of(&self, framing: DirectFraming) -> Encoder {
        match framing {
            DirectFraming::Native => self.native,
            DirectFraming::SocketIo => self.socketio,
        }
    }
}
use super::room::Room;
use crate::metrics::Metrics;

/// Recipients of one run worth a core of their own: below this, starting a
/// helper thread costs more than the writes it would take over (a socket
/// write costs ~10 µs, a thread start ~50 µs on a small board).
const RECIPIENTS_PER_CORE: usize = 512;

/// Batches waiting for the fan-out thread before the writer thread waits.
/// One: the next batch is committed while this one is written, but a
/// longer queue only adds latency (measured with 64: burst p99 2-3x).
const QUEUED_BATCHES: usize = 1;

/// A connection that broadcasts are written to directly, from the fan-out
/// thread, instead of through a queue its session reads.
pub trait DirectLink: Send + Sync + std::fmt::Debug {
    /// The framing its frames are encoded in.
    fn framing(&self) -> DirectFraming {
        DirectFraming::Native
    }
    /// Hands a broadcast's frames (in order) to the connection without
    /// waiting on it.
    fn broadcast(&self, frames: &[Bytes]) -> Handed;
    /// Cancelled when the client fell too far behind and must be closed.
    fn overflowed(&self) -> &CancellationToken;
}

/// What became of a broadcast handed to [`DirectLink::broadcast`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handed {
    /// Written, or queued behind what the socket has not taken yet.
    Accepted,
    /// The client is too far behind: nothing was queued and it is told to close.
    Overflowed,
    /// The connection is ending; nothing was queued.
    Closed,
}

/// One batch's writes to native connections, in commit order.
#[must_use = "the frames are written by `write` or `Fanout::send`"]
pub struct DirectWrites {
    runs: Vec<Run>,
    metrics: Metrics,
    /// Cores the writes of one run may be spread over.
    cores: usize,
    /// How direct links' frames are encoded.
    encoders: DirectEncoders,
}

struct Run {
    room: Room,
    /// The run's events in each [`DirectFraming`] (by its index), for the
    /// framings its recipients speak; empty for the others.
    frames: [Vec<Bytes>; 2],
    recipients: Vec<Arc<dyn DirectLink>>,
    /// Which framings the recipients speak.
    spoken: [bool; 2],
    oldest: Instant,
}

impl Run {
    fn same_members(&self, other: &Run) -> bool {
        self.room == other.room
            && self.recipients.len() == other.recipients.len()
            && self
                .recipients
                .iter()
                .zip(&other.recipients)
                .all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

impl DirectWrites {
    pub fn new(metrics: Metrics, cores: usize, encoders: DirectEncoders) -> Self {
        Self {
            runs: Vec::new(),
            metrics,
            cores,
            encoders,
        }
    }

    /// Adds `event` for its room's direct members; `recipients` is asked
    /// only when the event starts a new run (the previous event was for
    /// another room). Called under the rooms lock, so the members of
    /// consecutive events of one room are the same.
    pub fn add(
        &mut self,
        event: &RoomEvent,
        recipients: impl FnOnce() -> Vec<Arc<dyn DirectLink>>,
    ) {
        let encoders = self.encoders;
        let run = match self.runs.last_mut().filter(|run| run.room == event.room) {
            Some(run) => run,
            None => {
                let recipients = recipients();
                let mut spoken = [false; 2];
                for link in &recipients {
                    spoken[link.framing() as usize] = true;
                }
                self.runs.push(Run {
                    room: event.room.clone(),
                    frames: Default::default(),
                    recipients,
                    spoken,
                    oldest: event.published_at,
                });
                let Some(run) = self.runs.last_mut() else {
                    return;
                };
                run
            }
        };
        for framing in DirectFraming::ALL {
            if run.spoken[framing as usize] {
                let frame = event.encoded(framing.framing(), encoders.of(framing));
                run.frames[framing as usize].push(frame);
            }
        }
    }

    /// Appends a later batch, joining its first run to this batch's last
    /// when they go to exactly the same connections.
    fn merge(&mut self, later: DirectWrites) {
        let mut runs = later.runs.into_iter();
        if let Some(first) = runs.next() {
            match self.runs.last_mut() {
                Some(last) if last.same_members(&first) => {
                    for (frames, more) in last.frames.iter_mut().zip(first.frames) {
                        frames.extend(more);
                    }
                }
                _ => self.runs.push(first),
            }
        }
        self.runs.extend(runs);
    }

    /// Writes the frames to their connections, without waiting on any.
    pub fn write(self) {
        for run in self.runs {
            // A large room is split among the cores: each part's writes are
            // independent, and every part is done before the next run starts,
            // so each client still gets its frames in order.
            let parts = self
                .cores
                .min(run.recipients.len() / RECIPIENTS_PER_CORE)
                .max(1);
            let metrics = &self.metrics;
            if parts == 1 {
                write_run(&run.recipients, &run.frames, metrics);
            } else {
                let mut chunks = run.recipients.chunks(run.recipients.len().div_ceil(parts));
                let here = chunks.next().unwrap_or_default();
                std::thread::scope(|scope| {
                    for chunk in chunks {
                        let helper = std::thread::Builder::new()
                            .name("fan-out-part".into())
                            .spawn_scoped(scope, || write_run(chunk, &run.frames, metrics));
                        if helper.is_err() {
                            // No thread to be had: write that part here.
                            write_run(chunk, &run.frames, metrics);
                        }
                    }
                    write_run(here, &run.frames, metrics);
                });
            }
            // One sample per run: the oldest frame, at its last recipient.
            metrics
                .publish_to_send_seconds
                .observe(run.oldest.elapsed().as_secs_f64());
        }
    }
}

fn write_run(recipients: &[Arc<dyn DirectLink>], frames: &[Vec<Bytes>; 2], metrics: &Metrics) {
    for link in recipients {
        if link.broadcast(&frames[link.framing() as usize]) == Handed::Overflowed {
            metrics.slow_consumer_disconnects.inc();
        }
    }
}

/// The fan-out thread; it ends, after writing what it was given, when the
/// handle is dropped.
pub struct Fanout {
    batches: Option<SyncSender<DirectWrites>>,
    thread: Option<JoinHandle<()>>,
}

impl Fanout {
    pub fn start() -> std::io::Result<Self> {
        let (batches, receiver) = sync_channel(QUEUED_BATCHES);
        let thread = std::thread::Builder::new()
            .name("fan-out".into())
            .spawn(move || run(receiver))?;
        Ok(Self {
            batches: Some(batches),
            thread: Some(thread),
        })
    }

    /// Hands a batch to the thread, waiting while it is far behind.
    pub fn send(&self, writes: DirectWrites) {
        let unsent = match &self.batches {
            Some(batches) => batches.send(writes).err().map(|failed| failed.0),
            None => Some(writes),
        };
        if let Some(writes) = unsent {
            // The thread is gone (it cannot end by itself): write here.
            writes.write();
        }
    }
}

impl Drop for Fanout {
    fn drop(&mut self) {
        self.batches = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(batches: Receiver<DirectWrites>) {
    while let Ok(mut writes) = batches.recv() {
        while let Ok(later) = batches.try_recv() {
            writes.merge(later);
        }
        writes.write();
    }
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;
    use crate::core::room::EventName;

    #[derive(Debug, Default)]
    struct Link(CancellationToken);

    impl DirectLink for Link {
        fn broadcast(&self, _: &[Bytes]) -> Handed {
            Handed::Accepted
        }
        fn overflowed(&self) -> &CancellationToken {
            &self.0
        }
    }

    fn event(seq: u64, room: Room) -> RoomEvent {
        let data = Arc::from(RawValue::NULL.to_owned());
        RoomEvent::new(seq, room, EventName::known("x"), data, Instant::now())
    }

    fn batch(events: &[RoomEvent], recipients: &[Arc<dyn DirectLink>]) -> DirectWrites {
        let encoders = DirectEncoders {
            native: |event| Bytes::from(event.seq.to_string()),
            socketio: |event| Bytes::from(format!("sio {}", event.seq)),
        };
        let mut writes = DirectWrites::new(Metrics::default(), 1, encoders);
        for event in events {
            writes.add(event, || recipients.to_vec());
        }
        writes
    }

    /// A link that keeps what it was handed, in its framing.
    #[derive(Debug)]
    struct Recording(
        DirectFraming,
        std::sync::Mutex<Vec<Bytes>>,
        CancellationToken,
    );

    impl DirectLink for Recording {
        fn framing(&self) -> DirectFraming {
            self.0
        }
        fn broadcast(&self, frames: &[Bytes]) -> Handed {
            self.1.lock().unwrap().extend_from_slice(frames);
            Handed::Accepted
        }
        fn overflowed(&self) -> &CancellationToken {
            &self.2
        }
    }

    #[test]
    fn each_member_gets_the_run_in_its_own_framing() {
        let native = Arc::new(Recording(
            DirectFraming::Native,
            Default::default(),
            Default::default(),
        ));
        let socketio = Arc::new(Recording(
            DirectFraming::SocketIo,
            Default::default(),
            Default::default(),
        ));
        let members: [Arc<dyn DirectLink>; 2] = [native.clone(), socketio.clone()];
        let writes = batch(
            &[event(1, Room::Patients), event(2, Room::Patients)],
            &members,
        );
        assert_eq!(writes.runs.len(), 1, "one run for both framings");
        writes.write();
        assert_eq!(
            *native.1.lock().unwrap(),
            [Bytes::from("1"), Bytes::from("2")]
        );
        assert_eq!(
            *socketio.1.lock().unwrap(),
            [Bytes::from("sio 1"), Bytes::from("sio 2")]
        );
    }

    #[test]
    fn queued_batches_merge_only_when_the_members_are_the_same() {
        let (a, b): (Arc<dyn DirectLink>, Arc<dyn DirectLink>) =
            (Arc::new(Link::default()), Arc::new(Link::default()));
        let both = [a.clone(), b.clone()];
        let mut writes = batch(&[event(1, Room::Patients), event(2, Room::Patients)], &both);
        assert_eq!(
            writes.runs.len(),
            1,
            "consecutive events of a room form one run"
        );
        writes.merge(batch(&[event(3, Room::Patients)], &both));
        assert_eq!(writes.runs.len(), 1);
        assert_eq!(writes.runs[0].frames[0].len(), 3);
        assert!(
            writes.runs[0].frames[1].is_empty(),
            "no Socket.IO member: not encoded"
        );
        // Someone left in between: another run, after the first.
        writes.merge(batch(&[event(4, Room::Patients)], std::slice::from_ref(&a)));
        writes.merge(batch(&[event(5, Room::Staff)], std::slice::from_ref(&a)));
        let shape: Vec<_> = writes
            .runs
            .iter()
            .map(|run| (run.frames[0].len(), run.recipients.len()))
            .collect();
        assert_eq!(shape, [(3, 2), (1, 1), (1, 1)]);
    }
}
