//! Dialing one static peer: connect, run the link, and after any failure
//! wait with exponential backoff and jitter. Never dials an address that
//! turned out to be this node, and does not dial while a link to the same
//! peer (opened by either side) is up.

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

pub(crate) async fn dial_loop(ctx: ConnCtx, cfg: NodeConfig, addr: SocketAddr) {
    let mut backoff = cfg.backoff_min;
    let mut shutdown = ctx.shutdown.clone();
    loop {
        if *shutdown.borrow() || ctx.registry.is_self(addr) {
            return;
        }
        let Some(mode) = ctx.registry.dial_mode(addr) else { return };
        let linked = ctx.registry.known_id(addr).is_some_and(|id| ctx.registry.is_linked(id));
        let mut outcome = None;
        if !linked {
            let started = Instant::now();
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let link = LinkConfig { mode, ..cfg.link.clone() };
                    let ended = connection::dialed(ctx.clone(), stream, addr, link).await;
                    if ended.handshaken && started.elapsed() >= STABLE {
                        backoff = cfg.backoff_min;
                    }
                    outcome = ended.reason;
                }
                Ok(Err(e)) => tracing::debug!(%addr, error = %e, "dial failed"),
                Err(_) => tracing::debug!(%addr, "dial timed out"),
            }
        }
        if outcome == Some(CloseReason::SelfConnection) {
            tracing::info!(%addr, "address is this node; not dialing it");
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
