//! Prometheus metrics of a node (SPEC §7): read at scrape time from the
//! store's counters and the registry of links, and served over HTTP on an
//! address of their own (`NodeConfig::metrics`).

use super::registry::{PeerState, PeerStatus, Registry};
use crate::storage::Db;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{prometheus_text, DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry as PromRegistry;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Scrapes served at once; a connection past them is closed unanswered.
const MAX_SCRAPES: usize = 16;
/// Time a scraper has to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a scrape may take in all (one request per connection); a scraper
/// that does not read its answer loses its slot after this.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads a node's numbers when scraped.
pub(crate) struct NodeMetrics {
    db: Db,
    registry: Arc<Registry>,
    started: Instant,
}

impl NodeMetrics {
    pub fn new(db: Db, registry: Arc<Registry>, started: Instant) -> Self {
        NodeMetrics { db, registry, started }
    }

    /// The metrics in the Prometheus text format (version 0.0.4).
    pub fn render(self: &Arc<Self>) -> String {
        let mut registry = PromRegistry::with_prefix("meshkv");
        registry.register_collector(Box::new(Arc::clone(self)));
        let mut out = String::new();
        prometheus_text::encode(&mut out, &registry).unwrap_or_else(|_| unreachable!("writing to a String"));
        out
    }
}

impl std::fmt::Debug for NodeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeMetrics").field("node", &self.db.node_id()).finish_non_exhaustive()
    }
}

/// The label naming a peer: its node id, which stays the same across
/// reconnects (an inbound link's address changes with every connection).
fn peer_label(p: &PeerStatus) -> Option<[(&'static str, String); 1]> {
    p.node_id.map(|n| [("peer", n.to_string())])
}

fn state_name(state: PeerState) -> &'static str {
    match state {
        PeerState::Connecting => "connecting",
        PeerState::Connected => "connected",
        PeerState::Live => "live",
    }
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, value: f64) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

/// A metric with one series per peer.
struct PerPeer {
    name: &'static str,
    help: &'static str,
    /// A gauge, or else a counter.
    gauge: bool,
    /// The peer's value at a scrape made at the given instant.
    value: fn(&PeerStatus, Instant) -> f64,
}

const PER_PEER: [PerPeer; 6] = [
    PerPeer {
        name: "peer_lag_entries",
        help: "Writes this node holds that the peer is not yet known to hold",
        gauge: true,
        value: |p, _| p.lag as f64,
    },
    PerPeer {
        name: "peer_lag_seconds",
        help: "How long the peer has been lagging without interruption (0: caught up)",
        gauge: true,
        value: |p, now| p.behind_since.map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64()),
    },
    PerPeer {
        name: "peer_sent_records",
        help: "Records sent to the peer over the current connection",
        gauge: false,
        value: |p, _| p.sent as f64,
    },
    PerPeer {
        name: "peer_received_records",
        help: "Records received from the peer over the current connection",
        gauge: false,
        value: |p, _| p.received as f64,
    },
    PerPeer {
        name: "peer_sent_bytes",
        help: "Frame bytes sent to the peer over the current connection",
        gauge: false,
        value: |p, _| p.bytes_sent as f64,
    },
    PerPeer {
        name: "peer_received_bytes",
        help: "Frame bytes received from the peer over the current connection",
        gauge: false,
        value: |p, _| p.bytes_received as f64,
    },
];

impl PerPeer {
    fn encode(&self, enc: &mut DescriptorEncoder, peers: &[PeerStatus], now: Instant) -> Result<(), std::fmt::Error> {
        let kind = if self.gauge { ConstGauge::new(0.0).metric_type() } else { ConstCounter::new(0u64).metric_type() };
        let mut family = enc.encode_descriptor(self.name, self.help, None, kind)?;
        // A peer not connected yet has nothing to count.
        for (p, labels) in peers.iter().filter_map(|p| Some((p, peer_label(p)?))) {
            let series = family.encode_family(&labels)?;
            let value = (self.value)(p, now);
            if self.gauge {
                ConstGauge::new(value).encode(series)?;
            } else {
                ConstCounter::new(value).encode(series)?;
            }
        }
        Ok(())
    }
}

impl Collector for NodeMetrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let db = &self.db;
        counter(
            &mut enc,
            "local_writes",
            "Local writes (puts and deletes; a key written twice in one batch counts once) committed",
            db.local_write_count(),
        )?;
        counter(
            &mut enc,
            "remote_records_applied",
            "Records received from peers that changed the store",
            db.remote_applied_count(),
        )?;
        counter(&mut enc, "conflicts", "Concurrent writes settled by the conflict policy", db.conflict_count())?;
        gauge(&mut enc, "uptime_seconds", "Seconds since the node started", self.started.elapsed().as_secs_f64())?;
        let peers = self.registry.statuses(&db.version_vector());
        let mut states = enc.encode_descriptor(
            "peer_state",
            "1 for each peer's current state (connecting, connected, live)",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        for p in &peers {
            let node = p.node_id.map(|n| n.to_string()).unwrap_or_default();
            let labels = [("addr", p.addr.to_string()), ("peer", node), ("state", state_name(p.state).to_string())];
            ConstGauge::new(1i64).encode(states.encode_family(&labels)?)?;
        }
        let now = Instant::now();
        for metric in &PER_PEER {
            metric.encode(&mut enc, &peers, now)?;
        }
        Ok(())
    }
}

/// Serves `GET /metrics` on `listener` until shutdown.
pub(crate) async fn serve(listener: TcpListener, metrics: Arc<NodeMetrics>, mut shutdown: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(MAX_SCRAPES));
    while let Some((stream, addr)) = super::accept_next(&listener, &mut shutdown, "metrics").await {
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(%addr, "metrics: too many scrapes at once; closing");
            continue;
        };
        let metrics = Arc::clone(&metrics);
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let metrics = Arc::clone(&metrics);
                async move { Ok::<_, std::convert::Infallible>(answer(&req, &metrics)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                res = tokio::time::timeout(SCRAPE_TIMEOUT, conn) => match res {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(%addr, error = %e, "metrics: connection failed"),
                    Err(_) => tracing::debug!(%addr, "metrics: scrape took too long; closed"),
                },
                _ = stop.changed() => {}
            }
        });
    }
}

fn answer(req: &Request<Incoming>, metrics: &Arc<NodeMetrics>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        if let Ok(v) = content_type.parse() {
            resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        resp
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => reply(StatusCode::OK, prometheus_text::CONTENT_TYPE, metrics.render()),
        (_, "/metrics") => reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n".into()),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "metrics are at /metrics\n".into()),
    }
}
