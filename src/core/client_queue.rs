//! One client's bounded queue of room events, from the rooms core's fan-out
//! (many senders: one per room the client is in) to the client's session
//! (one receiver). Socket.IO sessions (whose framing and transport — polling
//! or WebSocket — is the session's business) and the readiness probe use it;
//! native WebSocket connections are written to directly
//! (through a [`super::fanout::DirectLink`]).
//!
//! A `VecDeque` behind a mutex and a waker, not tokio's `mpsc`: an idle
//! client — most of them, most of the time — holds an empty deque, which
//! allocates nothing, where an `mpsc` channel costs ~800 bytes per client
//! (cache-padded halves and a first block of 32 slots). The mutex is held
//! only to push or pop, never across an `.await`.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;

use futures_util::task::AtomicWaker;

/// Capacity kept after a burst has drained; more is given back.
const KEEP_CAPACITY: usize = 8;

#[derive(Debug)]
struct Queue<T> {
    items: Mutex<VecDeque<T>>,
    receiver_waiting: AtomicWaker,
    receiver_gone: AtomicBool,
    capacity: usize,
}

impl<T> Queue<T> {
    fn items(&self) -> MutexGuard<'_, VecDeque<T>> {
        // Push and pop cannot leave the deque half-updated.
        self.items.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Why an item was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The queue holds `capacity` items: the client is too slow.
    Full,
    /// The receiver is gone (the client is leaving).
    Closed,
}

/// The sending side; clones share the queue.
#[derive(Debug)]
pub struct Sender<T>(Arc<Queue<T>>);

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

/// The receiving side, owned by the client's session.
#[derive(Debug)]
pub struct Receiver<T>(Arc<Queue<T>>);

/// A queue of at most `capacity` items.
pub fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let queue = Arc::new(Queue {
        items: Mutex::new(VecDeque::new()),
        receiver_waiting: AtomicWaker::new(),
        receiver_gone: AtomicBool::new(false),
        capacity,
    });
    (Sender(queue.clone()), Receiver(queue))
}

impl<T> Sender<T> {
    /// Queues `item` without waiting, or says why not.
    pub fn try_send(&self, item: T) -> Result<(), SendError> {
        if self.0.receiver_gone.load(Ordering::Acquire) {
            return Err(SendError::Closed);
        }
        {
            let mut items = self.0.items();
            if items.len() >= self.0.capacity {
                return Err(SendError::Full);
            }
            items.push_back(item);
        }
        self.0.receiver_waiting.wake();
        Ok(())
    }
}

impl<T> Receiver<T> {
    /// The next item, waiting for one.
    pub async fn recv(&mut self) -> T {
        poll_fn(|cx| {
            if let Some(item) = self.try_recv() {
                return Poll::Ready(item);
            }
            // Registered before looking again, so a push in between wakes us.
            self.0.receiver_waiting.register(cx.waker());
            match self.try_recv() {
                Some(item) => Poll::Ready(item),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// An item already queued, without waiting.
    pub fn try_recv(&mut self) -> Option<T> {
        let mut items = self.0.items();
        let item = items.pop_front();
        if items.is_empty() && items.capacity() > KEEP_CAPACITY {
            items.shrink_to(KEEP_CAPACITY);
        }
        item
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.0.receiver_gone.store(true, Ordering::Release);
        self.0.items().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_in_order_and_wakes_the_receiver() {
        let (sender, mut receiver) = bounded(2);
        assert_eq!(sender.try_send(1), Ok(()));
        assert_eq!(sender.clone().try_send(2), Ok(()));
        assert_eq!(sender.try_send(3), Err(SendError::Full));
        assert_eq!(receiver.recv().await, 1);
        assert_eq!(receiver.try_recv(), Some(2));
        assert_eq!(receiver.try_recv(), None);

        let waiting = tokio::spawn(async move {
            let item = receiver.recv().await;
            (item, receiver)
        });
        tokio::task::yield_now().await;
        sender.try_send(4).unwrap();
        let (item, receiver) = waiting.await.unwrap();
        assert_eq!(item, 4);
        drop(receiver);
        assert_eq!(sender.try_send(5), Err(SendError::Closed));
    }

    #[test]
    fn a_drained_burst_gives_its_memory_back() {
        let (sender, mut receiver) = bounded(1024);
        for n in 0..1000 {
            sender.try_send(n).unwrap();
        }
        while receiver.try_recv().is_some() {}
        assert!(receiver.0.items().capacity() <= KEEP_CAPACITY);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_item_is_lost_between_threads() {
        let (sender, mut receiver) = bounded(64);
        let producer = std::thread::spawn(move || {
            let mut sent = 0u32;
            while sent < 100_000 {
                if sender.try_send(sent).is_ok() {
                    sent += 1;
                } else {
                    std::thread::yield_now();
                }
            }
        });
        for expected in 0..100_000u32 {
            assert_eq!(receiver.recv().await, expected);
        }
        producer.join().unwrap();
    }
}
