//! Admission of accepted connections. A connection first *handshakes*: at
//! most `max_handshaking` sockets that have proved nothing yet (a new one
//! evicts the oldest socket of the address holding the most, so silent or
//! slow sockets cannot hold the door shut, and a flood from one address
//! evicts its own sockets before anyone else's), then, once it proved the secret, at most `max_handshaking` more waiting
//! for their first frame (evicted among themselves only, so a flood without
//! the secret cannot evict them). It is then *established*, holding one of
//! `max_connections` slots until it closes.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

pub(crate) struct Admission {
    max_handshaking: usize,
    sets: Mutex<Sets>,
    next: AtomicU64,
    established: Arc<Semaphore>,
}

/// A handshaking connection: its id, its peer's address and the sender
/// that evicts it.
type Entry = (u64, IpAddr, oneshot::Sender<()>);

/// Connections in their handshake, oldest first.
#[derive(Default)]
struct Sets {
    /// Nothing proved yet.
    unproven: VecDeque<Entry>,
    /// Proved the secret; waiting for the first frame.
    proven: VecDeque<Entry>,
}

/// Evicts entries of `set` until there is room for one more: each time the
/// oldest of the address that holds the most.
fn make_room(set: &mut VecDeque<Entry>, max: usize) {
    while set.len() >= max {
        let mut counts: HashMap<IpAddr, usize> = HashMap::new();
        for (_, ip, _) in set.iter() {
            *counts.entry(*ip).or_default() += 1;
        }
        let Some(busiest) = counts.into_iter().max_by_key(|(_, n)| *n).map(|(ip, _)| ip) else { break };
        let Some(pos) = set.iter().position(|(_, ip, _)| *ip == busiest) else { break };
        let Some((old, ip, evict)) = set.remove(pos) else { break };
        tracing::debug!(connection = old, %ip, "too many handshakes in progress; evicting one");
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
            established: Arc::new(Semaphore::new(max_connections.clamp(1, Semaphore::MAX_PERMITS))),
        })
    }

    /// Enters a new connection from `ip` into the handshaking set, evicting
    /// one if the set is full (see [`make_room`]).
    pub fn start(self: &Arc<Self>, ip: IpAddr) -> Ticket {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, evicted) = oneshot::channel();
        let mut sets = self.lock();
        make_room(&mut sets.unproven, self.max_handshaking);
        sets.unproven.push_back((id, ip, tx));
        Ticket { admission: Arc::clone(self), id, evicted }
    }

    /// Connection `id` proved the secret (or none is required): from now on
    /// only other proven connections can evict it.
    pub fn proven(&self, id: u64) {
        let mut sets = self.lock();
        if let Some(pos) = sets.unproven.iter().position(|(other, _, _)| *other == id) {
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
        sets.unproven.retain(|(other, _, _)| *other != id);
        sets.proven.retain(|(other, _, _)| *other != id);
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

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn oldest_handshake_is_evicted_and_slots_are_bounded() {
        let adm = Admission::new(2, 1);
        let mut a = adm.start(LOCAL);
        let b = adm.start(LOCAL);
        let c = adm.start(LOCAL);
        assert!(a.evicted.try_recv().is_ok(), "the oldest is evicted");
        assert_eq!(adm.handshaking(), 2);
        drop(a);
        let slot = b.admit().expect("a free slot");
        assert_eq!(adm.handshaking(), 1);
        assert!(c.admit().is_none(), "every established slot is taken");
        assert_eq!(adm.handshaking(), 0);
        drop(slot);
        assert!(adm.start(LOCAL).admit().is_some());
    }

    #[test]
    fn proven_connections_are_not_evicted_by_unproven_ones() {
        let adm = Admission::new(2, 8);
        let mut honest = adm.start(LOCAL);
        honest.prover()();
        let mut flood: Vec<Ticket> = (0..10).map(|_| adm.start(LOCAL)).collect();
        assert!(honest.evicted.try_recv().is_err(), "a flood evicted a proven connection");
        assert!(flood[0].evicted.try_recv().is_ok(), "unproven ones evict each other");
        assert_eq!(adm.handshaking(), 3);
        assert!(honest.admit().is_some());
    }

    #[test]
    fn a_flood_from_one_address_evicts_its_own_sockets_first() {
        let adm = Admission::new(4, 8);
        let other: IpAddr = "10.0.0.7".parse().unwrap();
        let mut early = adm.start(LOCAL);
        let mut honest = adm.start(other);
        let flood: Vec<Ticket> = (0..20).map(|_| adm.start(LOCAL)).collect();
        assert!(early.evicted.try_recv().is_ok(), "the flooding address loses its own sockets");
        assert!(honest.evicted.try_recv().is_err(), "a flood from another address evicted an honest socket");
        assert_eq!(adm.handshaking(), 4);
        drop(flood);
    }
}
