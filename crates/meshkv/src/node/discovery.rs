//! LAN discovery (SPEC §4): a node sends a sealed [`Announcement`] to a
//! UDP multicast group at an interval and listens on that group; an
//! authentic announcement of another node of its cluster names an address
//! to dial, which goes to the same task as peer-exchange lists
//! (`node/exchange.rs`), with the same filters and bounds. Of each announcing
//! node only announcements newer than the last one heard count, so replaying
//! one leads nowhere new — except that the newest one may lead to a few
//! addresses: an announcement of an unspecified IP is dialed at its
//! datagram's source, and a replay from a forged source must not shadow the
//! genuine copy (the forged target is forgotten when it does not answer).

use super::connection::ConnCtx;
use crate::protocol::announce::{Announcement, MAX_DATAGRAM};
use crate::secure::Secret;
use crate::version::NodeId;
use rand::Rng;
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// The multicast group (organisation-local scope) and port announcements
/// go to by default.
pub const DEFAULT_GROUP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(239, 255, 77, 75)), 7429);

/// How a node discovers peers on its LAN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discovery {
    /// Where announcements are received (default `0.0.0.0:7429`). With a
    /// multicast target the socket binds this port on every interface and
    /// joins the group on the interface of this IP (unspecified: the one
    /// the routing table picks). Several nodes of one host can share the
    /// port (on Linux).
    pub bind: SocketAddr,
    /// Where announcements are sent (default [`DEFAULT_GROUP`]). A
    /// multicast group is joined, with a TTL of 1 (the local network only);
    /// unicast addresses are sent to as they are.
    pub announce_to: Vec<SocketAddr>,
    /// Between two announcements (default 5 s, ±20 % jitter).
    pub interval: Duration,
}

impl Default for Discovery {
    fn default() -> Self {
        Discovery {
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_GROUP.port()),
            announce_to: vec![DEFAULT_GROUP],
            interval: Duration::from_secs(5),
        }
    }
}

/// Why `cfg` cannot run with the node's settings `node`: no secret to seal
/// announcements with, a cluster name too long to fit one, or a loopback
/// listener announced beyond loopback.
pub(crate) fn check(cfg: &Discovery, node: &super::NodeConfig) -> Result<(), String> {
    let Some(secret) = &node.security.secret else {
        return Err("discovery needs the cluster secret: it authenticates announcements".into());
    };
    let widest = SocketAddr::new(Ipv6Addr::from(u128::MAX).into(), u16::MAX);
    if Announcement::new(&node.link.cluster, NodeId(u64::MAX), widest, u64::MAX).seal(secret).is_none() {
        return Err("the cluster name is too long for discovery announcements".into());
    }
    let beyond = cfg.announce_to.iter().any(|t| !t.ip().is_loopback());
    if beyond && node.listen.is_some_and(|l| l.ip().is_loopback()) {
        return Err(
            "discovery would announce a loopback listener to the network; listen on an address peers can reach".into(),
        );
    }
    Ok(())
}

/// Binds the discovery socket and joins the multicast groups among the
/// targets. Errors are the operating system's (a port in use without
/// address reuse, no multicast route).
pub(crate) fn bind(cfg: &Discovery) -> std::io::Result<UdpSocket> {
    let multicast = cfg.announce_to.iter().any(|t| t.ip().is_multicast());
    let local = match (multicast, cfg.bind.ip()) {
        (true, IpAddr::V4(_)) => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), cfg.bind.port()),
        (true, IpAddr::V6(_)) => SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), cfg.bind.port()),
        (false, _) => cfg.bind,
    };
    let socket = Socket::new(Domain::for_address(local), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&local.into())?;
    for target in &cfg.announce_to {
        match target.ip() {
            IpAddr::V4(group) if group.is_multicast() => {
                let interface = match cfg.bind.ip() {
                    IpAddr::V4(ip) => ip,
                    IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
                };
                socket.join_multicast_v4(&group, &interface)?;
                socket.set_multicast_ttl_v4(1)?;
                socket.set_multicast_loop_v4(true)?;
            }
            IpAddr::V6(group) if group.is_multicast() => {
                socket.join_multicast_v6(&group, 0)?;
                socket.set_multicast_hops_v6(1)?;
            }
            _ => {}
        }
    }
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket.into())
}

/// Announces the node's listen address (if it listens) and hands the
/// addresses of authentic announcements from other nodes of the cluster to
/// `learned`, until shutdown.
pub(crate) async fn run(
    ctx: ConnCtx,
    cfg: Discovery,
    socket: UdpSocket,
    secret: Secret,
    learned: mpsc::Sender<Vec<SocketAddr>>,
) {
    let mut shutdown = ctx.shutdown.clone();
    let me = ctx.db.node_id();
    let mut next = tokio::time::Instant::now();
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    let mut heard = Heard::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {
                if let Some(listen) = ctx.local_addr {
                    announce(&socket, &cfg.announce_to, &Announcement::new(&ctx.cluster, me, listen, now_ms()), &secret).await;
                }
                next += cfg.interval.mul_f64(rand::rng().random_range(0.8..1.2));
            }
            got = socket.recv_from(&mut buf) => {
                let (len, from) = match got {
                    Ok(got) => got,
                    Err(e) => {
                        tracing::debug!(error = %e, "discovery socket error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                match Announcement::open(&buf[..len], &secret, now_ms()) {
                    Ok(a) if a.node != me && a.cluster == ctx.cluster && heard.newer(&a, a.dial_addr(from)) => {
                        // A full queue drops it; the next announcement comes soon.
                        let _ = learned.try_send(vec![a.dial_addr(from)]);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(%from, error = %e, "ignored a discovery datagram"),
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Addresses one announcement may lead to (copies of it from different
/// sources, for an unspecified IP), at most.
const ADDRS_PER_ANNOUNCEMENT: usize = 4;

/// Of each node, for at most [`super::exchange::MAX_LEARNED`] nodes at a
/// time: the newest announcement time heard, and the addresses copies of
/// that announcement led to.
#[derive(Default)]
struct Heard(HashMap<NodeId, (u64, Vec<SocketAddr>)>);

impl Heard {
    /// Whether `a`, leading to `dial`, is news: newer than anything heard
    /// from its node, or the same announcement leading to a further address
    /// (a replay from a forged source may arrive before the genuine copy;
    /// a few of those cannot shadow it). Notes it.
    fn newer(&mut self, a: &Announcement, dial: SocketAddr) -> bool {
        if !self.0.contains_key(&a.node) && self.0.len() >= super::exchange::MAX_LEARNED {
            // Nodes silent for longer than an announcement stays fresh go first.
            let horizon = a.sent_ms.saturating_sub(2 * crate::protocol::announce::MAX_AGE_MS);
            self.0.retain(|_, (sent, _)| *sent >= horizon);
            if self.0.len() >= super::exchange::MAX_LEARNED {
                return false;
            }
        }
        let (last, addrs) = self.0.entry(a.node).or_insert((0, Vec::new()));
        if a.sent_ms > *last {
            *last = a.sent_ms;
            *addrs = vec![dial];
            return true;
        }
        if a.sent_ms == *last && !addrs.contains(&dial) && addrs.len() < ADDRS_PER_ANNOUNCEMENT {
            addrs.push(dial);
            return true;
        }
        false
    }
}

async fn announce(socket: &UdpSocket, targets: &[SocketAddr], a: &Announcement, secret: &Secret) {
    let Some(datagram) = a.seal(secret) else {
        tracing::warn!("the cluster name is too long to announce; discovery sends nothing");
        return;
    };
    for target in targets {
        if let Err(e) = socket.send_to(&datagram, target).await {
            tracing::debug!(%target, error = %e, "cannot send a discovery announcement");
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(node: u64, sent_ms: u64) -> Announcement {
        Announcement::new("c", NodeId(node), SocketAddr::from(([0, 0, 0, 0], 7420)), sent_ms)
    }

    fn at(last_octet: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, last_octet], 7420))
    }

    #[test]
    fn only_announcements_newer_than_the_last_one_of_their_node_count() {
        let mut heard = Heard::default();
        assert!(heard.newer(&from(1, 100), at(1)));
        assert!(!heard.newer(&from(1, 100), at(1)), "a replay");
        assert!(!heard.newer(&from(1, 99), at(1)), "an older one");
        assert!(heard.newer(&from(1, 101), at(1)));
        assert!(heard.newer(&from(2, 50), at(1)), "another node");
    }

    #[test]
    fn a_replay_leading_elsewhere_does_not_shadow_the_genuine_copy() {
        let mut heard = Heard::default();
        assert!(heard.newer(&from(1, 100), at(2)), "the replay from a forged source came first");
        assert!(heard.newer(&from(1, 100), at(1)), "the genuine copy still counts");
        assert!(!heard.newer(&from(1, 100), at(1)));
        // Replays from many sources take a few addresses, not the table.
        let taken = (3..40).filter(|&i| heard.newer(&from(1, 100), at(i))).count();
        assert_eq!(taken, ADDRS_PER_ANNOUNCEMENT - 2);
        assert_eq!(heard.0.len(), 1);
        assert!(heard.newer(&from(2, 100), at(1)), "another node is still heard");
    }

    #[test]
    fn the_nodes_remembered_are_bounded_and_silent_ones_go_first() {
        let mut heard = Heard::default();
        let max = crate::node::exchange::MAX_LEARNED as u64;
        for n in 0..max {
            assert!(heard.newer(&from(n, 1_000), at(1)));
        }
        assert!(!heard.newer(&from(max, 1_000), at(1)), "full of nodes heard just now");
        let later = 1_000 + 3 * crate::protocol::announce::MAX_AGE_MS;
        assert!(heard.newer(&from(max, later), at(1)), "the silent ones made room");
        assert_eq!(heard.0.len(), 1);
    }
}
