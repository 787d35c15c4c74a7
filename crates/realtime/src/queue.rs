//! A socket's outbound queue: the hub pushes events without waiting, the
//! socket's task takes them off and writes them.
//!
//! It is the bounded buffer of the slow-consumer policy ([`crate::hub`]):
//! a push to a full queue is refused at once, and the hub evicts that
//! socket. What it needs is less than a general channel gives: one
//! consumer, producers that never wait, and a length the hub can read to
//! find the socket furthest behind. So it is a `VecDeque` behind a mutex,
//! with the consumer's waker beside it:
//!
//! ```text
//!  hub ──try_send──▶ [ items | waiter ] ──poll_recv / try_recv──▶ socket task
//!        (full: refused)        │
//!                               └─ set only while the task waits on an empty
//!                                  queue; the push that finds it takes it and
//!                                  wakes the task, the others wake nobody
//! ```
//!
//! Why not `tokio::sync::mpsc`, which it replaces: a bounded tokio channel
//! is a semaphore plus a block list, and every receive gives a permit back
//! under the semaphore's lock; every send wakes the receiver, even one
//! that is already running; and each channel costs about 1.5 KiB (its
//! cache-padded halves and first block) whether or not anything is ever
//! sent, which is a good part of what an idle socket costs. Here an idle
//! socket's queue is one small allocation (the buffer is allocated by the
//! first push), a send or receive takes one uncontended lock, and a burst
//! of events wakes the task once.
//!
//! The lock is a `std::sync::Mutex`: each critical section is one push or
//! pop on the deque, or a waker swap, never an `.await`; the hub holds it
//! while pushing to one socket, the socket's task while taking one event.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{Context, Poll, Waker},
};

/// A queue of at most `capacity` items (at least one).
pub fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        capacity: capacity.max(1),
        state: Mutex::new(State {
            items: VecDeque::new(),
            waiter: None,
            closed: false,
        }),
    });
    (
        Sender {
            shared: Arc::clone(&shared),
        },
        Receiver { shared },
    )
}

struct Shared<T> {
    capacity: usize,
    state: Mutex<State<T>>,
}

struct State<T> {
    items: VecDeque<T>,
    /// The consumer, while it waits on an empty queue.
    waiter: Option<Waker>,
    /// The receiver is gone: nobody will take anything again.
    closed: bool,
}

impl<T> Shared<T> {
    /// A panic while the lock was held cannot leave the deque half-updated
    /// (each section is one push, pop or swap), so a poisoned lock is used
    /// as is.
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrySendError {
    /// The queue holds `capacity` items: the consumer is not keeping up.
    Full,
    /// The receiver was dropped (the socket's task ended).
    Closed,
}

/// The hub's end; cheap to clone (one per channel the socket joined).
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> Sender<T> {
    /// Adds `item` at the back without waiting, and wakes the consumer if it
    /// was waiting for one.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError> {
        let mut state = self.shared.lock();
        if state.closed {
            return Err(TrySendError::Closed);
        }
        if state.items.len() >= self.shared.capacity {
            return Err(TrySendError::Full);
        }
        state.items.push_back(item);
        let waiter = state.waiter.take();
        drop(state);
        // Woken outside the lock: the task may run on another thread at
        // once and take it.
        if let Some(waiter) = waiter {
            waiter.wake();
        }
        Ok(())
    }

    /// How many items wait to be taken.
    pub fn len(&self) -> usize {
        self.shared.lock().items.len()
    }

    /// Whether nothing waits to be taken.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Nothing is queued right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Empty;

/// The socket task's end. The queue never ends from the sending side: it
/// is empty or it is not (the socket's own membership keeps a sender).
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Receiver<T> {
    /// The item at the front, if there is one.
    pub fn try_recv(&mut self) -> Result<T, Empty> {
        self.shared.lock().items.pop_front().ok_or(Empty)
    }

    /// The item at the front; when there is none, the task is woken by the
    /// next push.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<T> {
        let mut state = self.shared.lock();
        if let Some(item) = state.items.pop_front() {
            return Poll::Ready(item);
        }
        match &mut state.waiter {
            Some(waiter) if waiter.will_wake(cx.waker()) => {}
            waiter => *waiter = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Waits for the item at the front.
    pub async fn recv(&mut self) -> T {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }
}

impl<T> Drop for Receiver<T> {
    /// Later pushes are refused as [`TrySendError::Closed`], and what was
    /// queued is dropped now rather than with the last sender.
    fn drop(&mut self) {
        let items = {
            let mut state = self.shared.lock();
            state.closed = true;
            state.waiter = None;
            std::mem::take(&mut state.items)
        };
        drop(items);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    /// Counts its wake-ups.
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn items_come_out_in_order_and_a_full_queue_refuses_without_waiting() {
        let (sender, mut receiver) = bounded(2);
        assert_eq!(sender.try_send(1), Ok(()));
        assert_eq!(sender.try_send(2), Ok(()));
        assert_eq!(sender.try_send(3), Err(TrySendError::Full));
        assert_eq!(sender.len(), 2);
        assert_eq!(receiver.try_recv(), Ok(1));
        assert_eq!(sender.try_send(3), Ok(()));
        assert_eq!(receiver.try_recv(), Ok(2));
        assert_eq!(receiver.try_recv(), Ok(3));
        assert_eq!(receiver.try_recv(), Err(Empty));
        assert!(sender.is_empty());
    }

    #[test]
    fn a_waiting_consumer_is_woken_once_by_a_burst_of_pushes() {
        let (sender, mut receiver) = bounded(8);
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&counter));
        let mut cx = Context::from_waker(&waker);

        assert!(receiver.poll_recv(&mut cx).is_pending());
        for i in 0..3 {
            sender.try_send(i).unwrap();
        }
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            1,
            "one wake for the burst"
        );
        assert_eq!(receiver.poll_recv(&mut cx), Poll::Ready(0));
        assert_eq!(receiver.try_recv(), Ok(1));
        assert_eq!(receiver.try_recv(), Ok(2));
        // Not waiting (it never saw the queue empty): a push wakes nobody.
        sender.try_send(3).unwrap();
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert_eq!(receiver.poll_recv(&mut cx), Poll::Ready(3));
        assert!(receiver.poll_recv(&mut cx).is_pending());
        sender.try_send(4).unwrap();
        assert_eq!(counter.0.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn pushes_after_the_receiver_is_dropped_are_refused_and_the_queued_items_dropped() {
        let (sender, receiver) = bounded(4);
        let item = Arc::new(());
        sender.try_send(Arc::clone(&item)).unwrap();
        drop(receiver);
        assert_eq!(Arc::strong_count(&item), 1, "the queued item went with it");
        assert_eq!(sender.try_send(item), Err(TrySendError::Closed));
    }

    #[tokio::test]
    async fn a_task_waiting_on_an_empty_queue_gets_the_item_pushed_from_another_thread() {
        let (sender, mut receiver) = bounded(4);
        let pusher = std::thread::spawn(move || {
            std::thread::yield_now();
            sender.try_send(7).unwrap();
            sender
        });
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), receiver.recv())
            .await
            .expect("woken within the deadline");
        assert_eq!(got, 7);
        drop(pusher.join().unwrap());
    }
}
