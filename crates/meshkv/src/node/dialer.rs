//! Dialing one peer: connect, run the link, and after any failure wait with
//! exponential backoff and jitter. Never dials an address that turned out to
//! be this node, and does not dial while a link to the same peer (opened by
//! either side) is up. A static peer is dialed until it is removed; one
//! learned through peer exchange or discovery is forgotten once it has not
//! been reachable for `NodeConfig::forget_learned_after`.

use super::connection::{self, ConnCtx};
use super::NodeConfig;
use crate::protocol::{CloseReason, LinkConfig};
use rand::Rng;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A link that stayed up this long resets the backoff.
const STABLE: Duration = Duration::from_secs(10);

/// Whether `cfg` allows dialing `addr`: without a secret, links are
/// plaintext and unauthenticated, so only loopback unless `allow_insecure`.
pub(crate) fn may_dial(cfg: &NodeConfig, addr: SocketAddr) -> bool {
    addr.ip().is_loopback() || cfg.security.is_enabled() || cfg.allow_insecure
}

/// Dials `addr` while the registry holds it as a dial target with `token`.
pub(crate) async fn dial_loop(ctx: ConnCtx, cfg: NodeConfig, addr: SocketAddr, token: u64) {
    let mut backoff = cfg.backoff_min;
    let mut shutdown = ctx.shutdown.clone();
    let mut failing_since: Option<Instant> = None;
    loop {
        if *shutdown.borrow() || ctx.registry.is_self(addr) {
            return;
        }
        let Some(mode) = ctx.registry.dial_mode(addr, token) else { return };
        let linked = ctx.registry.known_id(addr).is_some_and(|id| ctx.registry.is_linked(id));
        let mut outcome = None;
        if linked {
            failing_since = None;
        } else {
            let started = Instant::now();
            let mut answered = false;
            let connected = tokio::select! {
                res = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)) => res,
                _ = shutdown.changed() => return,
            };
            match connected {
                Ok(Ok(stream)) => {
                    let link = LinkConfig { mode, ..cfg.link.clone() };
                    let ended = connection::dialed(ctx.clone(), stream, addr, link).await;
                    if ended.handshaken && started.elapsed() >= STABLE {
                        backoff = cfg.backoff_min;
                    }
                    answered = ended.handshaken;
                    outcome = ended.reason;
                }
                Ok(Err(e)) => tracing::debug!(%addr, error = %e, "dial failed"),
                Err(_) => tracing::debug!(%addr, "dial timed out"),
            }
            if answered {
                failing_since = None;
            } else {
                failing_since.get_or_insert(started);
            }
        }
        if outcome == Some(CloseReason::SelfConnection) {
            tracing::info!(%addr, "address is this node; not dialing it");
            ctx.registry.forget_learned(addr);
            return;
        }
        if failing_since.is_some_and(|t| t.elapsed() >= cfg.forget_learned_after) && ctx.registry.is_learned(addr) {
            tracing::info!(%addr, "forgetting a learned peer that stopped answering");
            ctx.registry.forget_learned(addr);
            return;
        }
        let jitter = rand::rng().random_range(0.5..1.5);
        let wait = if linked {
            // The peer dialed us; check again soon in case that link drops.
            cfg.backoff_min.max(Duration::from_millis(200)).mul_f64(jitter)
        } else {
            let wait = backoff.mul_f64(jitter);
            backoff = (backoff * 2).min(cfg.backoff_max);
            wait
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secure::{Secret, Security};

    #[test]
    fn beyond_loopback_only_with_a_secret_or_explicitly_insecure() {
        let remote: SocketAddr = "10.0.0.2:7420".parse().expect("address");
        let local: SocketAddr = "127.0.0.1:7420".parse().expect("address");
        let plain = NodeConfig::default();
        assert!(may_dial(&plain, local));
        assert!(!may_dial(&plain, remote));
        assert!(may_dial(&NodeConfig { allow_insecure: true, ..NodeConfig::default() }, remote));
        let secured = NodeConfig { security: Security::with_secret(Secret::generate()), ..NodeConfig::default() };
        assert!(may_dial(&secured, remote));
    }
}
