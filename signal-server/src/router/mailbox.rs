//! A session's inbox. Hand-rolled instead of a tokio mpsc channel because an idle connection
//! should cost little: an mpsc channel allocates ~800 bytes up front (cache-padded halves and
//! a 32-slot block), this ~100 until frames actually queue.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::Delivery;

/// Slots per mailbox.
pub const MAILBOX_CAPACITY: usize = 64;
/// Slots one sending session may hold in another's mailbox: a flood from one viewer leaves
/// room for the others (and for the server's notices).
pub const MAILBOX_PER_SENDER: usize = 32;
/// Slots only the server's own notices (presence, refusals) may take: peers' frames stop
/// short of them, so a notice is never lost to a peer's burst.
const NOTICE_RESERVE: usize = 8;

#[derive(Debug, Default)]
pub struct Mailbox {
    queue: Mutex<VecDeque<Arc<Delivery>>>,
    notify: Notify,
    closed: AtomicBool,
    /// The client resumed the session on another socket: the one reading this mailbox lets
    /// go of the session.
    taken_over: AtomicBool,
    /// A digest of the session's user and role ([`Who::tag`](super::Who::tag)): a resume by
    /// anyone else does not disturb the socket.
    owner: std::sync::atomic::AtomicU64,
}

/// Why a delivery was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The sender's share is used up: the sender is told to slow down, the receiver keeps
    /// its mailbox.
    SenderFull,
    /// Not even a notice fits: the receiver is far behind.
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
        match delivery.sender() {
            Some(sender) => {
                let from_sender = queue.iter().filter(|d| d.sender() == Some(sender)).count();
                if from_sender >= MAILBOX_PER_SENDER
                    || queue.len() >= MAILBOX_CAPACITY - NOTICE_RESERVE
                {
                    return Err(Refused::SenderFull);
                }
            }
            None if queue.len() >= MAILBOX_CAPACITY => return Err(Refused::Full),
            None => {}
        }
        queue.push_back(delivery);
        drop(queue);
        // notify_one keeps a permit when nobody waits, so a push between the reader's empty
        // `pop` and its next `wait` is not lost.
        self.notify.notify_one();
        Ok(())
    }

    pub fn pop(&self) -> Option<Arc<Delivery>> {
        // A drained queue keeps its buffer (a few words): freeing it made every delivery to
        // a busy session allocate again, which cost more CPU per relayed message than the
        // memory it saved per idle connection.
        self.queue.lock().pop_front()
    }

    /// Puts deliveries that waited elsewhere (on the replica the session moved from) before
    /// anything queued here. Not limited: the other replica already admitted them.
    pub fn prepend(&self, deliveries: Vec<Delivery>) {
        if deliveries.is_empty() {
            return;
        }
        let mut queue = self.queue.lock();
        for d in deliveries.into_iter().rev() {
            queue.push_front(Arc::new(d));
        }
        drop(queue);
        self.notify.notify_one();
    }

    /// Takes every queued delivery, oldest first.
    pub fn drain(&self) -> Vec<Delivery> {
        std::mem::take(&mut *self.queue.lock())
            .into_iter()
            .map(Arc::unwrap_or_clone)
            .collect()
    }

    pub fn set_owner(&self, tag: u64) {
        self.owner.store(tag, Ordering::Release);
    }

    /// Asks the socket reading this mailbox to let go of the session (see
    /// [`taken_over`](Self::taken_over)), if `owner` is the session's; returns whether it did.
    pub fn take_over(&self, owner: u64) -> bool {
        if self.owner.load(Ordering::Acquire) != owner {
            return false;
        }
        self.taken_over.store(true, Ordering::Release);
        self.notify.notify_one();
        true
    }

    /// Whether a resume asked for the session; reading clears it, so the next socket (the
    /// resuming one) is not asked too.
    pub fn taken_over(&self) -> bool {
        self.taken_over.swap(false, Ordering::AcqRel)
    }

    /// Ends the mailbox; the reader sees it once the queue is empty.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Resolves after a push or close since the last wait. The `Notified` itself, not an
    /// async fn around it: every idle connection's task holds this future.
    pub fn wait(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn notice() -> Arc<Delivery> {
        Arc::new(Delivery::Replaced { camera: "c".into() })
    }

    fn frame(from: &str) -> Arc<Delivery> {
        Arc::new(Delivery::Relay {
            from: Arc::from(from),
            text: String::new(),
            sent_at_us: 0,
        })
    }

    #[tokio::test]
    async fn a_push_before_the_wait_is_not_lost() {
        let m = Mailbox::new();
        assert!(m.pop().is_none());
        m.push(notice()).expect("room");
        tokio::time::timeout(Duration::from_secs(5), m.wait())
            .await
            .expect("woken");
        assert!(m.pop().is_some());
    }

    #[test]
    fn a_flooding_sender_is_refused_its_share_and_others_still_get_in() {
        let m = Mailbox::new();
        for _ in 0..MAILBOX_PER_SENDER {
            m.push(frame("v1")).expect("within v1's share");
        }
        assert_eq!(m.push(frame("v1")), Err(Refused::SenderFull));
        assert!(!m.is_closed(), "the receiver keeps its mailbox");
        for _ in 0..MAILBOX_CAPACITY - NOTICE_RESERVE - MAILBOX_PER_SENDER {
            m.push(frame("v2")).expect("room for another sender");
        }
        assert_eq!(m.push(frame("v3")), Err(Refused::SenderFull));
        for _ in 0..NOTICE_RESERVE {
            m.push(notice()).expect("notices have their reserve");
        }
        assert_eq!(m.push(notice()), Err(Refused::Full));
        m.pop();
        m.push(notice())
            .expect("room again once the reader catches up");
    }

    #[test]
    fn closed_mailboxes_refuse() {
        let m = Mailbox::new();
        m.close();
        assert!(m.is_closed());
        assert_eq!(m.push(notice()), Err(Refused::Closed));
        assert_eq!(m.push(frame("v1")), Err(Refused::Closed));
    }
}
