//! Admission of accepted connections. A connection first *handshakes*
//! (at most `max_handshaking` at once: a new one evicts the oldest, so a
//! flood of silent or slow sockets delays honest ones by at most one
//! handshake instead of locking them out) and is then *established*,
//! holding one of `max_connections` slots until it closes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

pub(crate) struct Admission {
    max_handshaking: usize,
    /// Handshaking connections, oldest first, with the sender that evicts each.
    handshaking: Mutex<VecDeque<(u64, oneshot::Sender<()>)>>,
    next: AtomicU64,
    established: Arc<Semaphore>,
}

/// A connection in its handshake. Completes when evicted; dropping it
/// leaves the handshaking set.
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    id: u64,
    pub evicted: oneshot::Receiver<()>,
}

impl Admission {
    pub fn new(max_handshaking: usize, max_connections: usize) -> Arc<Self> {
        Arc::new(Admission {
            max_handshaking: max_handshaking.max(1),
            handshaking: Mutex::new(VecDeque::new()),
            next: AtomicU64::new(0),
            established: Arc::new(Semaphore::new(max_connections.max(1))),
        })
    }

    /// Enters a new connection into the handshaking set, evicting the
    /// oldest one if the set is full.
    pub fn start(self: &Arc<Self>) -> Ticket {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, evicted) = oneshot::channel();
        let mut set = self.handshaking.lock().unwrap_or_else(|p| p.into_inner());
        while set.len() >= self.max_handshaking {
            match set.pop_front() {
                Some((old, evict)) => {
                    tracing::debug!(connection = old, "too many handshakes in progress; evicting the oldest");
                    let _ = evict.send(());
                }
                None => break,
            }
        }
        set.push_back((id, tx));
        Ticket { admission: Arc::clone(self), id, evicted }
    }

    fn leave(&self, id: u64) {
        let mut set = self.handshaking.lock().unwrap_or_else(|p| p.into_inner());
        set.retain(|(other, _)| *other != id);
    }

    /// Connections handshaking right now.
    #[cfg(test)]
    fn handshaking(&self) -> usize {
        self.handshaking.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Ticket {
    /// The handshake succeeded: leaves the handshaking set and takes an
    /// established slot, or `None` if all are taken.
    pub fn admit(self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.admission.established).try_acquire_owned().ok()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.leave(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_handshake_is_evicted_and_slots_are_bounded() {
        let adm = Admission::new(2, 1);
        let mut a = adm.start();
        let b = adm.start();
        let c = adm.start();
        assert!(a.evicted.try_recv().is_ok(), "the oldest is evicted");
        assert_eq!(adm.handshaking(), 2);
        drop(a);
        let slot = b.admit().expect("a free slot");
        assert_eq!(adm.handshaking(), 1);
        assert!(c.admit().is_none(), "every established slot is taken");
        assert_eq!(adm.handshaking(), 0);
        drop(slot);
        assert!(adm.start().admit().is_some());
    }
}
