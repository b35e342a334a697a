//! A session's inbox. Hand-rolled instead of a tokio mpsc channel because an idle connection
//! should cost little: an mpsc channel allocates ~800 bytes up front (cache-padded halves and
//! a 32-slot block), this ~100 until frames actually queue.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::Delivery;

/// Slots per mailbox. A session this far behind is dropped rather than buffered without bound.
pub const MAILBOX_CAPACITY: usize = 32;

#[derive(Debug, Default)]
pub struct Mailbox {
    queue: Mutex<VecDeque<Arc<Delivery>>>,
    notify: Notify,
    closed: AtomicBool,
}

/// Why a delivery was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Full,
    Closed,
}

impl Mailbox {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    pub fn push(&self, delivery: Arc<Delivery>) -> Result<(), Refused> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Refused::Closed);
        }
        let mut queue = self.queue.lock();
        if queue.len() >= MAILBOX_CAPACITY {
            return Err(Refused::Full);
        }
        queue.push_back(delivery);
        drop(queue);
        // notify_one keeps a permit when nobody waits, so a push between the reader's empty
        // `pop` and its next `wait` is not lost.
        self.notify.notify_one();
        Ok(())
    }

    pub fn pop(&self) -> Option<Arc<Delivery>> {
        self.queue.lock().pop_front()
    }

    /// Ends the mailbox; the reader sees it once the queue is empty.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Resolves after a push or close since the last wait.
    pub async fn wait(&self) {
        self.notify.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn d() -> Arc<Delivery> {
        Arc::new(Delivery::Replaced { camera: "c".into() })
    }

    #[tokio::test]
    async fn a_push_before_the_wait_is_not_lost() {
        let m = Mailbox::new();
        assert!(m.pop().is_none());
        m.push(d()).expect("room");
        tokio::time::timeout(Duration::from_secs(5), m.wait())
            .await
            .expect("woken");
        assert!(m.pop().is_some());
    }

    #[test]
    fn full_and_closed_mailboxes_refuse() {
        let m = Mailbox::new();
        for _ in 0..MAILBOX_CAPACITY {
            m.push(d()).expect("room");
        }
        assert_eq!(m.push(d()), Err(Refused::Full));
        m.close();
        assert!(m.is_closed());
        assert_eq!(m.push(d()), Err(Refused::Closed));
    }
}
