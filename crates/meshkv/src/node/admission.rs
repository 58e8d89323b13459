//! Admission of accepted connections. A connection first *handshakes*: at
//! most `max_handshaking` sockets that have proved nothing yet (a new one
//! evicts the oldest, so silent or slow sockets cannot hold the door shut),
//! then, once it proved the secret, at most `max_handshaking` more waiting
//! for their first frame (evicted among themselves only, so a flood without
//! the secret cannot evict them). It is then *established*, holding one of
//! `max_connections` slots until it closes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

pub(crate) struct Admission {
    max_handshaking: usize,
    sets: Mutex<Sets>,
    next: AtomicU64,
    established: Arc<Semaphore>,
}

/// Connections in their handshake, oldest first, with the sender that
/// evicts each.
#[derive(Default)]
struct Sets {
    /// Nothing proved yet.
    unproven: VecDeque<(u64, oneshot::Sender<()>)>,
    /// Proved the secret; waiting for the first frame.
    proven: VecDeque<(u64, oneshot::Sender<()>)>,
}

/// Evicts the oldest entries of `set` until there is room for one more.
fn make_room(set: &mut VecDeque<(u64, oneshot::Sender<()>)>, max: usize) {
    while set.len() >= max {
        let Some((old, evict)) = set.pop_front() else { break };
        tracing::debug!(connection = old, "too many handshakes in progress; evicting the oldest");
        let _ = evict.send(());
    }
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
            sets: Mutex::new(Sets::default()),
            next: AtomicU64::new(0),
            established: Arc::new(Semaphore::new(max_connections.max(1))),
        })
    }

    /// Enters a new connection into the handshaking set, evicting the
    /// oldest one if the set is full.
    pub fn start(self: &Arc<Self>) -> Ticket {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, evicted) = oneshot::channel();
        let mut sets = self.lock();
        make_room(&mut sets.unproven, self.max_handshaking);
        sets.unproven.push_back((id, tx));
        Ticket { admission: Arc::clone(self), id, evicted }
    }

    /// Connection `id` proved the secret (or none is required): from now on
    /// only other proven connections can evict it.
    pub fn proven(&self, id: u64) {
        let mut sets = self.lock();
        if let Some(pos) = sets.unproven.iter().position(|(other, _)| *other == id) {
            let entry = sets.unproven.remove(pos).unwrap_or_else(|| unreachable!("position found"));
            make_room(&mut sets.proven, self.max_handshaking);
            sets.proven.push_back(entry);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sets> {
        self.sets.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn leave(&self, id: u64) {
        let mut sets = self.lock();
        sets.unproven.retain(|(other, _)| *other != id);
        sets.proven.retain(|(other, _)| *other != id);
    }

    /// Connections handshaking right now.
    #[cfg(test)]
    fn handshaking(&self) -> usize {
        let sets = self.lock();
        sets.unproven.len() + sets.proven.len()
    }
}

impl Ticket {
    /// Marks this connection proven; see [`Admission::proven`].
    pub fn prover(&self) -> impl Fn() + Send + 'static {
        let (admission, id) = (Arc::clone(&self.admission), self.id);
        move || admission.proven(id)
    }

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

    #[test]
    fn proven_connections_are_not_evicted_by_unproven_ones() {
        let adm = Admission::new(2, 8);
        let mut honest = adm.start();
        honest.prover()();
        let mut flood: Vec<Ticket> = (0..10).map(|_| adm.start()).collect();
        assert!(honest.evicted.try_recv().is_err(), "a flood evicted a proven connection");
        assert!(flood[0].evicted.try_recv().is_ok(), "unproven ones evict each other");
        assert_eq!(adm.handshaking(), 3);
        assert!(honest.admit().is_some());
    }
}
