//! Peer exchange (SPEC §4): a node tells each peer where it listens and
//! where its other peers listen; the receiving node dials the addresses it
//! did not know, so a cluster configured as a chain or a star becomes a mesh.
//!
//! Links (and LAN discovery, `node/discovery.rs`) forward what they hear to
//! one task per node, which filters the addresses ([`admissible`]) and runs
//! a dial loop for each new one. Learned targets are bounded
//! ([`MAX_LEARNED`]) and forgotten when they stop answering or lead back to
//! this node ([`dialer::dial_loop`](super::dialer::dial_loop)). Two targets
//! that reach the same node cost one link: a dial loop does not dial while
//! its node is linked.

use super::connection::ConnCtx;
use super::{dialer, NodeConfig};
use std::net::{IpAddr, SocketAddr};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Dial targets a node learns through peer exchange, at most.
pub(crate) const MAX_LEARNED: usize = 64;
/// Peer lists waiting for the exchange task, at most; a link whose list
/// finds the queue full drops it (the next change sends a new one).
pub(crate) const QUEUE: usize = 64;

/// Dials the admissible addresses that links report, until shutdown.
pub(crate) async fn run(ctx: ConnCtx, cfg: NodeConfig, mut lists: mpsc::Receiver<Vec<SocketAddr>>) {
    let mut dials = JoinSet::new();
    let mut shutdown = ctx.shutdown.clone();
    let insecure_ok = ctx.security.is_enabled() || cfg.allow_insecure;
    loop {
        tokio::select! {
            list = lists.recv() => {
                let Some(list) = list else { break };
                for addr in list {
                    if !admissible(addr, ctx.local_addr, insecure_ok) || ctx.registry.is_linked_addr(addr) {
                        continue;
                    }
                    if let Some(token) = ctx.registry.add_learned(addr, cfg.accept_mode, MAX_LEARNED) {
                        tracing::info!(%addr, "learned a peer through peer exchange");
                        dials.spawn(dialer::dial_loop(ctx.clone(), cfg.clone(), addr, token));
                    }
                }
            }
            Some(_) = dials.join_next(), if !dials.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    // The dial loops end at shutdown too.
    while dials.join_next().await.is_some() {}
}

/// Whether an address a peer shared may be dialed: a concrete unicast
/// address that is not our own listener, and, unless `non_loopback_ok` (a
/// secret, or insecure listening allowed), a loopback one: a node without
/// credentials only listens there, and its peers are not authenticated.
pub(crate) fn admissible(addr: SocketAddr, ours: Option<SocketAddr>, non_loopback_ok: bool) -> bool {
    let ip = addr.ip();
    let unicast = match ip {
        IpAddr::V4(v4) => !v4.is_broadcast() && !v4.is_multicast() && !v4.is_unspecified(),
        IpAddr::V6(v6) => !v6.is_multicast() && !v6.is_unspecified(),
    };
    unicast && addr.port() != 0 && Some(addr) != ours && (non_loopback_ok || ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    #[test]
    fn only_concrete_foreign_addresses_are_dialed() {
        let ours = Some(a("127.0.0.1:7420"));
        assert!(admissible(a("127.0.0.1:7421"), ours, false));
        assert!(admissible(a("[::1]:7421"), ours, false));
        assert!(!admissible(a("127.0.0.1:7420"), ours, true), "our own listener");
        assert!(!admissible(a("127.0.0.1:0"), ours, true), "no port");
        assert!(!admissible(a("0.0.0.0:7421"), ours, true), "unspecified");
        assert!(!admissible(a("[::]:7421"), ours, true), "unspecified");
        assert!(!admissible(a("224.0.0.1:7421"), ours, true), "multicast");
        assert!(!admissible(a("255.255.255.255:7421"), ours, true), "broadcast");
    }

    #[test]
    fn without_a_secret_only_loopback_addresses_are_learned() {
        assert!(!admissible(a("10.0.0.5:7420"), None, false));
        assert!(!admissible(a("[fd00::5]:7420"), None, false));
        assert!(admissible(a("10.0.0.5:7420"), None, true));
    }
}
