//! Shared bookkeeping of a node's connections: one live link per peer,
//! status for operators, and the addresses that turned out to be ourselves.

use crate::protocol::{CloseReason, Mode};
use crate::version::{NodeId, VersionVector};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;
use tokio::sync::oneshot;

/// Lifecycle of a peer as shown by [`Node::peers`](super::Node::peers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerState {
    /// Dialing or waiting to redial.
    Connecting,
    /// Handshake done; catch-up running.
    Connected,
    /// Caught up; changes flow live.
    Live,
}

/// One peer as seen from this node.
#[derive(Clone, Debug)]
pub struct PeerStatus {
    /// The address we dial; for a peer that dialed us, where it accepts
    /// connections if it said so (peer exchange), else the connection's
    /// remote address.
    pub addr: SocketAddr,
    /// The peer's node id, once known.
    pub node_id: Option<NodeId>,
    /// Current state.
    pub state: PeerState,
    /// Records sent and received over the current connection.
    pub sent: u64,
    /// Records received over the current connection.
    pub received: u64,
    /// Writes this node covers that the peer is not yet known to cover
    /// (what our sending half has not sent yet; 0 for receive-only links).
    /// While a peer we dial is disconnected, counted against what it held
    /// when its link closed.
    pub lag: u64,
    /// While a catch-up from the peer runs: records applied and an upper
    /// bound of the total.
    pub sync: Option<(u64, u64)>,
    /// Frame bytes sent over the current connection (plaintext, with headers).
    pub bytes_sent: u64,
    /// Frame bytes received over the current connection.
    pub bytes_received: u64,
    /// Since when `lag` has been above zero without interruption (`None`
    /// while it is zero).
    pub behind_since: Option<Instant>,
}

impl PeerStatus {
    fn new(addr: SocketAddr, node_id: Option<NodeId>) -> Self {
        PeerStatus {
            addr,
            node_id,
            state: PeerState::Connecting,
            sent: 0,
            received: 0,
            lag: 0,
            sync: None,
            bytes_sent: 0,
            bytes_received: 0,
            behind_since: None,
        }
    }
}

/// What a connection reports about its link.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LinkCounts {
    pub sent: u64,
    pub received: u64,
    pub lag: u64,
    pub sync: Option<(u64, u64)>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// Addresses remembered as leading to this node, at most.
const MAX_OWN_ADDRS: usize = 1024;

pub(crate) struct Registry {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next_conn: u64,
    /// Live links by peer: connection id, whether we dialed it, closer.
    links: HashMap<NodeId, (u64, bool, Option<oneshot::Sender<CloseReason>>)>,
    status: HashMap<u64, PeerStatus>,
    /// Dial targets: their modes and the token of the one dial loop that
    /// serves each (a loop whose token is gone stops).
    dial: HashMap<SocketAddr, (Mode, u64)>,
    next_dial_token: u64,
    /// Addresses that led back to this node.
    own_addrs: HashSet<SocketAddr>,
    /// Peer id learned for a dialed address.
    addr_ids: HashMap<SocketAddr, NodeId>,
    /// Dial targets learned through peer exchange or discovery (a subset
    /// of `dial`).
    learned: HashSet<SocketAddr>,
    /// Where each linked peer accepts connections: the address we dialed,
    /// or the one it advertised (peer exchange).
    listen: HashMap<NodeId, SocketAddr>,
    /// Bumped whenever the addresses [`Registry::shared_addrs`] returns may
    /// have changed.
    generation: u64,
    /// Peers we dial whose sending link closed: what they were known to
    /// cover, and since when they lag.
    away: HashMap<NodeId, Away>,
}

struct Away {
    vv: VersionVector,
    behind_since: Option<Instant>,
}

impl Inner {
    /// Whether some dial target is known to lead to `peer`.
    fn dials(&self, peer: NodeId) -> bool {
        self.addr_ids.iter().any(|(addr, id)| *id == peer && self.dial.contains_key(addr))
    }

    /// Forgets the away peers no dial target leads to any more.
    fn prune_away(&mut self) {
        let dialed: HashSet<NodeId> =
            self.addr_ids.iter().filter(|(addr, _)| self.dial.contains_key(*addr)).map(|(_, id)| *id).collect();
        self.away.retain(|id, _| dialed.contains(id));
    }
}

/// Outcome of registering a freshly handshaken connection.
pub(crate) enum Claim {
    /// This connection is the peer's link; `replaced`: it takes over from
    /// another connection to the same peer (the peer stayed linked).
    Keep { replaced: bool },
    /// Another connection to the same peer wins; close this one.
    Duplicate,
    /// We dialed this connection, but its address was removed meanwhile.
    Removed,
}

impl Registry {
    pub fn new() -> Self {
        Registry { inner: Mutex::new(Inner::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn new_connection(&self, addr: SocketAddr) -> u64 {
        let mut g = self.lock();
        g.next_conn += 1;
        let id = g.next_conn;
        g.status.insert(id, PeerStatus::new(addr, None));
        id
    }

    /// Registers `conn` as the link to `peer`. Of two connections between the
    /// same pair, both sides keep the one dialed by the smaller node id.
    pub fn claim(
        &self,
        me: NodeId,
        peer: NodeId,
        conn: u64,
        dialed: Option<SocketAddr>,
        closer: oneshot::Sender<CloseReason>,
    ) -> Claim {
        let mut g = self.lock();
        // Under the lock `remove_peer` takes: a removal either sees this
        // link (and closes it) or is seen here.
        if dialed.is_some_and(|addr| !g.dial.contains_key(&addr)) {
            return Claim::Removed;
        }
        let dialed = dialed.is_some();
        if let Some(s) = g.status.get_mut(&conn) {
            s.node_id = Some(peer);
            s.state = PeerState::Connected;
        }
        let dialer_of = |we_dialed: bool| if we_dialed { me } else { peer };
        let new_dialer = dialer_of(dialed);
        let keep_new = match g.links.get(&peer) {
            None => true,
            // A newer connection from the same dialer replaces a stale one;
            // between crossing dials, the smaller dialer's wins.
            Some(&(_, old_dialed, _)) => {
                let old_dialer = dialer_of(old_dialed);
                old_dialer == new_dialer || new_dialer < old_dialer
            }
        };
        if !keep_new {
            return Claim::Duplicate;
        }
        g.away.remove(&peer);
        let old = g.links.insert(peer, (conn, dialed, Some(closer)));
        let replaced = old.is_some();
        if let Some((_, _, Some(close_old))) = old {
            let _ = close_old.send(CloseReason::Duplicate);
        }
        g.generation += 1;
        Claim::Keep { replaced }
    }

    pub fn set_live(&self, conn: u64) {
        if let Some(s) = self.lock().status.get_mut(&conn) {
            s.state = PeerState::Live;
        }
    }

    pub fn set_counts(&self, conn: u64, c: LinkCounts) {
        if let Some(s) = self.lock().status.get_mut(&conn) {
            s.sent = c.sent;
            s.received = c.received;
            s.lag = c.lag;
            s.sync = c.sync;
            s.bytes_sent = c.bytes_sent;
            s.bytes_received = c.bytes_received;
            s.behind_since = if c.lag == 0 { None } else { s.behind_since.or_else(|| Some(Instant::now())) };
        }
    }

    /// Forgets `conn`. If it was its peer's link and sent to it, `peer_vv`
    /// is what the peer was known to cover: while we dial the peer again,
    /// its lag is counted against that.
    pub fn release(&self, conn: u64, peer_vv: Option<&VersionVector>) {
        let mut g = self.lock();
        let status = g.status.remove(&conn);
        let gone: Vec<NodeId> = g.links.iter().filter(|(_, (c, _, _))| *c == conn).map(|(p, _)| *p).collect();
        for peer in gone {
            g.links.remove(&peer);
            g.listen.remove(&peer);
            g.generation += 1;
            if let (Some(vv), true) = (peer_vv, g.dials(peer)) {
                let behind_since = status.as_ref().and_then(|s| s.behind_since);
                g.away.insert(peer, Away { vv: vv.clone(), behind_since });
            }
        }
    }

    /// Records where the linked `peer` accepts connections.
    pub fn set_listen(&self, peer: NodeId, addr: SocketAddr) {
        let mut g = self.lock();
        if g.links.contains_key(&peer) && g.listen.insert(peer, addr) != Some(addr) {
            g.generation += 1;
        }
    }

    /// The listen addresses of the linked peers other than `except`, and
    /// the generation they belong to (compare with [`Registry::generation`]).
    pub fn shared_addrs(&self, except: NodeId) -> (u64, Vec<SocketAddr>) {
        let g = self.lock();
        let mut addrs: Vec<SocketAddr> = g
            .listen
            .iter()
            .filter(|(peer, _)| **peer != except && g.links.contains_key(peer))
            .map(|(_, addr)| *addr)
            .collect();
        addrs.sort();
        (g.generation, addrs)
    }

    /// See [`Registry::shared_addrs`].
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Whether `addr` is where a linked peer accepts connections.
    pub fn is_linked_addr(&self, addr: SocketAddr) -> bool {
        let g = self.lock();
        g.listen.iter().any(|(peer, a)| *a == addr && g.links.contains_key(peer))
    }

    /// Adds `addr`, learned through peer exchange or discovery, as a dial target with
    /// `mode`, unless it is one already or `max` learned targets exist.
    /// Returns the token of the dial loop the caller then starts, if added.
    pub fn add_learned(&self, addr: SocketAddr, mode: Mode, max: usize) -> Option<u64> {
        let mut g = self.lock();
        if g.dial.contains_key(&addr) || g.own_addrs.contains(&addr) || g.learned.len() >= max {
            return None;
        }
        g.next_dial_token += 1;
        let token = g.next_dial_token;
        g.dial.insert(addr, (mode, token));
        g.learned.insert(addr);
        Some(token)
    }

    /// Whether `addr` is a learned dial target (not a static peer).
    pub fn is_learned(&self, addr: SocketAddr) -> bool {
        self.lock().learned.contains(&addr)
    }

    /// Stops dialing a learned `addr` (a static peer is kept).
    pub fn forget_learned(&self, addr: SocketAddr) {
        let mut g = self.lock();
        if g.learned.remove(&addr) {
            g.dial.remove(&addr);
            g.addr_ids.remove(&addr);
            g.prune_away();
        }
    }

    pub fn is_linked(&self, peer: NodeId) -> bool {
        self.lock().links.contains_key(&peer)
    }

    /// Live connections, plus configured peers that are not connected now
    /// (lagging by what `ours` holds beyond what they were last known to
    /// hold). A peer is shown where it accepts connections when that is
    /// known (it said so, or we dial it there), not at an inbound
    /// connection's port.
    pub fn statuses(&self, ours: &VersionVector) -> Vec<PeerStatus> {
        let mut guard = self.lock();
        let g = &mut *guard;
        let dialed_at = |id: NodeId| g.dial.keys().filter(|a| g.addr_ids.get(*a) == Some(&id)).min().copied();
        let mut v: Vec<_> = g
            .status
            .values()
            .map(|s| {
                let listen = s.node_id.and_then(|id| g.listen.get(&id).copied().or_else(|| dialed_at(id)));
                PeerStatus { addr: listen.unwrap_or(s.addr), ..s.clone() }
            })
            .collect();
        for addr in g.dial.keys() {
            let connected = g.addr_ids.get(addr).is_some_and(|id| g.links.contains_key(id));
            if !connected && !g.own_addrs.contains(addr) && !v.iter().any(|s| s.addr == *addr) {
                let id = g.addr_ids.get(addr).copied();
                let mut s = PeerStatus::new(*addr, id);
                if let Some(away) = id.and_then(|id| g.away.get_mut(&id)) {
                    s.lag = ours.beyond(&away.vv);
                    away.behind_since =
                        if s.lag == 0 { None } else { away.behind_since.or_else(|| Some(Instant::now())) };
                    s.behind_since = away.behind_since;
                }
                v.push(s);
            }
        }
        v.sort_by_key(|s| (s.addr, s.node_id));
        v
    }

    /// Remembers that `addr` leads to this node (up to [`MAX_OWN_ADDRS`]
    /// addresses; past that, such an address is only dialed again if a peer
    /// shares it again).
    pub fn mark_self(&self, addr: SocketAddr) {
        let mut g = self.lock();
        if g.own_addrs.len() < MAX_OWN_ADDRS {
            g.own_addrs.insert(addr);
        }
    }

    pub fn is_self(&self, addr: SocketAddr) -> bool {
        self.lock().own_addrs.contains(&addr)
    }

    /// Records that the dialed `addr` leads to `peer`.
    pub fn learn(&self, addr: SocketAddr, peer: NodeId) {
        self.lock().addr_ids.insert(addr, peer);
    }

    /// The peer id behind a dialed address, if a handshake told us.
    pub fn known_id(&self, addr: SocketAddr) -> Option<NodeId> {
        self.lock().addr_ids.get(&addr).copied()
    }

    /// Makes `addr` a static dial target with `mode` (a learned target
    /// set here becomes static). Returns the token of the dial loop the
    /// caller must start, or `None` if a loop already serves it.
    pub fn set_dial(&self, addr: SocketAddr, mode: Mode) -> Option<u64> {
        let mut g = self.lock();
        g.learned.remove(&addr);
        if let Some((m, _)) = g.dial.get_mut(&addr) {
            *m = mode;
            return None;
        }
        g.next_dial_token += 1;
        let token = g.next_dial_token;
        g.dial.insert(addr, (mode, token));
        Some(token)
    }

    /// Stops dialing `addr`: its dial loop ends at its next round.
    pub fn remove_dial(&self, addr: SocketAddr) {
        let mut g = self.lock();
        g.learned.remove(&addr);
        g.dial.remove(&addr);
        g.prune_away();
    }

    /// The mode the dial loop holding `token` dials `addr` with, or `None`
    /// if that loop must stop (the target was removed, perhaps re-added
    /// and served by a newer loop).
    pub fn dial_mode(&self, addr: SocketAddr, token: u64) -> Option<Mode> {
        self.lock().dial.get(&addr).filter(|(_, t)| *t == token).map(|(m, _)| *m)
    }

    /// Closes the live link to `peer`, if any.
    pub fn close_peer(&self, peer: NodeId) {
        if let Some((_, _, closer)) = self.lock().links.get_mut(&peer) {
            if let Some(c) = closer.take() {
                let _ = c.send(CloseReason::Shutdown);
            }
        }
    }

    /// Closes every live link (shutdown).
    pub fn close_all(&self) {
        for (_, (_, _, closer)) in self.lock().links.iter_mut() {
            if let Some(c) = closer.take() {
                let _ = c.send(CloseReason::Shutdown);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `behind_since` keeps the moment the lag started until it is zero again.
    #[test]
    fn lag_start_is_kept_until_caught_up() {
        let r = Registry::new();
        let conn = r.new_connection(SocketAddr::from(([127, 0, 0, 1], 1)));
        let status = |r: &Registry| r.statuses(&VersionVector::new()).into_iter().next().expect("one connection");
        r.set_counts(conn, LinkCounts { lag: 3, ..LinkCounts::default() });
        let since = status(&r).behind_since.expect("lagging");
        std::thread::sleep(std::time::Duration::from_millis(5));
        r.set_counts(conn, LinkCounts { lag: 7, ..LinkCounts::default() });
        assert_eq!(status(&r).behind_since, Some(since), "still the same stretch of lag");
        r.set_counts(conn, LinkCounts { lag: 0, bytes_sent: 9, ..LinkCounts::default() });
        assert_eq!((status(&r).behind_since, status(&r).bytes_sent), (None, 9));
        r.set_counts(conn, LinkCounts { lag: 1, ..LinkCounts::default() });
        assert!(status(&r).behind_since.expect("lagging again") > since);
    }

    /// A dialed peer whose link closed keeps lagging by what we write while
    /// it is away, from the lag it had, until we stop dialing it.
    #[test]
    fn a_dialed_peer_that_went_away_lags_by_what_it_misses() {
        let r = Registry::new();
        let (me, peer) = (NodeId(1), NodeId(2));
        let addr = SocketAddr::from(([127, 0, 0, 1], 2));
        let token = r.set_dial(addr, Mode::Sync).expect("new target");
        let conn = r.new_connection(addr);
        r.learn(addr, peer);
        assert!(matches!(r.claim(me, peer, conn, Some(addr), oneshot::channel().0), Claim::Keep { .. }));
        r.set_counts(conn, LinkCounts { lag: 1, ..LinkCounts::default() });
        let since = r.statuses(&VersionVector::new())[0].behind_since.expect("lagging");
        let held: VersionVector = [(me, 4)].into_iter().collect();
        r.release(conn, Some(&held));

        let ours: VersionVector = [(me, 5)].into_iter().collect();
        let away = r.statuses(&ours);
        assert_eq!((away.len(), away[0].state, away[0].node_id), (1, PeerState::Connecting, Some(peer)));
        assert_eq!((away[0].lag, away[0].behind_since), (1, Some(since)), "the same stretch of lag goes on");
        let ours: VersionVector = [(me, 9), (NodeId(3), 2)].into_iter().collect();
        assert_eq!(r.statuses(&ours)[0].lag, 7);

        r.remove_dial(addr);
        assert!(r.dial_mode(addr, token).is_none());
        assert!(r.statuses(&ours).is_empty());
        assert!(r.lock().away.is_empty(), "nothing kept for a peer no longer dialed");
    }
}
