//! Statistics of a run: which protocol paths ran.

use meshkv::protocol::{CatchUpOrder, Message};
use std::collections::BTreeMap;

// ---------------------------------------------------------------------------
// Statistics: which protocol paths ran

#[derive(Clone, Debug, Default)]
pub(crate) struct Stats {
    pub(crate) seeds: u64,
    pub(crate) writes: u64,
    pub(crate) crashes: u64,
    pub(crate) partitions: u64,
    pub(crate) silent_cuts: u64,
    pub(crate) resets: u64,
    pub(crate) shutdowns: u64,
    pub(crate) timeouts: u64,
    pub(crate) connects: u64,
    pub(crate) catch_ups: u64,
    pub(crate) multi_batch_catch_ups: u64,
    pub(crate) resumed_digests: u64,
    pub(crate) key_order_catch_ups: u64,
    pub(crate) log_order_catch_ups: u64,
    pub(crate) key_order_resumes: u64,
    pub(crate) lag_fallbacks: u64,
    pub(crate) feed_lagged: u64,
    pub(crate) split_frames: u64,
    pub(crate) conflicts: u64,
    /// Connections on which data flows one way only, or not at all.
    pub(crate) one_way_links: u64,
    pub(crate) no_flow_links: u64,
    pub(crate) late_joins: u64,
    /// Late joiners started from a copy of another node's store.
    pub(crate) joins_from_copy: u64,
    pub(crate) departures: u64,
    pub(crate) wipes: u64,
    /// Wiped nodes restored from a backup instead of starting empty.
    pub(crate) restores: u64,
    /// Writes whose origin's store was lost before they reached a peer's.
    pub(crate) lost_writes: u64,
    /// Records sent in catch-up and live batches.
    pub(crate) sent_items: u64,
    pub(crate) sent: BTreeMap<&'static str, u64>,
    pub(crate) steps: u64,
    pub(crate) sim_ms: u64,
    /// Digest of the final state of one run (not summed).
    pub(crate) fingerprint: u64,
}

impl Stats {
    pub(crate) fn add(&mut self, o: &Stats) {
        self.seeds += o.seeds;
        self.writes += o.writes;
        self.crashes += o.crashes;
        self.partitions += o.partitions;
        self.silent_cuts += o.silent_cuts;
        self.resets += o.resets;
        self.shutdowns += o.shutdowns;
        self.timeouts += o.timeouts;
        self.connects += o.connects;
        self.catch_ups += o.catch_ups;
        self.multi_batch_catch_ups += o.multi_batch_catch_ups;
        self.resumed_digests += o.resumed_digests;
        self.key_order_catch_ups += o.key_order_catch_ups;
        self.log_order_catch_ups += o.log_order_catch_ups;
        self.key_order_resumes += o.key_order_resumes;
        self.lag_fallbacks += o.lag_fallbacks;
        self.feed_lagged += o.feed_lagged;
        self.split_frames += o.split_frames;
        self.conflicts += o.conflicts;
        self.one_way_links += o.one_way_links;
        self.no_flow_links += o.no_flow_links;
        self.late_joins += o.late_joins;
        self.joins_from_copy += o.joins_from_copy;
        self.departures += o.departures;
        self.wipes += o.wipes;
        self.restores += o.restores;
        self.lost_writes += o.lost_writes;
        for (k, v) in &o.sent {
            *self.sent.entry(k).or_default() += v;
        }
        self.steps += o.steps;
        self.sim_ms += o.sim_ms;
    }
}

/// Per-direction bookkeeping for statistics.
#[derive(Default)]
pub(crate) struct Direction {
    caught_up: bool,
    batches: u64,
}

pub(crate) fn describe(msg: &Message) -> String {
    match msg {
        Message::Digest { vv, resume, held } => format!("digest vv {vv} resume {resume:?} held {held:?}"),
        Message::CatchUpStart { since, snapshot, order } => {
            format!("catch-up-start since {since} snapshot {snapshot} order {order:?}")
        }
        Message::CatchUp { id, items, position } => {
            format!("catch-up #{id} {} items, position {position:?}", items.len())
        }
        Message::CaughtUp { id, vv } => format!("caught-up #{id} vv {vv}"),
        Message::Live { id, items, vv } => format!("live #{id} {} items, vv {vv}", items.len()),
        Message::Ack { id } => format!("ack #{id}"),
        other => other.kind().to_string(),
    }
}

pub(crate) fn observe_sent(stats: &mut Stats, dir: &mut Direction, msg: &Message) {
    *stats.sent.entry(msg.kind()).or_default() += 1;
    match msg {
        Message::Digest { resume: Some(_), .. } => stats.resumed_digests += 1,
        Message::CatchUpStart { order, .. } => {
            match order {
                CatchUpOrder::Log => stats.log_order_catch_ups += 1,
                CatchUpOrder::Key { skip: None } => stats.key_order_catch_ups += 1,
                CatchUpOrder::Key { skip: Some(_) } => {
                    stats.key_order_catch_ups += 1;
                    stats.key_order_resumes += 1;
                }
            }
            if dir.caught_up {
                stats.lag_fallbacks += 1; // a second catch-up on one connection
            }
            dir.batches = 0;
        }
        Message::CatchUp { items, .. } => {
            stats.sent_items += items.len() as u64;
            dir.batches += 1;
        }
        Message::Live { items, .. } => stats.sent_items += items.len() as u64,
        Message::CaughtUp { .. } => {
            if dir.batches >= 2 {
                stats.multi_batch_catch_ups += 1;
            }
            dir.caught_up = true;
        }
        _ => {}
    }
}
