//! Two protocol links wired back to back in memory, through the real codec,
//! each fed by its store's change feed: the runtime's work without sockets.

use meshkv::protocol::{codec, Link, LinkConfig, Message};
use meshkv::storage::{FeedError, Subscription};
use meshkv::{Db, KeyRange};
use std::ops::ControlFlow;

/// What an end does when its link refuses a message (the link then closes
/// itself and queues its `Close`).
#[derive(Clone, Copy, Debug)]
pub enum OnRefusal {
    /// The test fails: every message must be accepted.
    Panic,
    /// Nothing more, as the runtime would drop the connection: the
    /// exchange goes on, and the closed link ignores what follows.
    Ignore,
}

/// One side of a link: the protocol state machine and its store's feed.
pub struct End {
    /// The store's change feed, subscribed before the link was created.
    pub sub: Subscription,
    /// The protocol state machine.
    pub link: Link,
    /// Frame bytes this end sent.
    pub bytes_out: usize,
    on_refusal: OnRefusal,
}

impl End {
    /// A fresh link on `db` with `cfg`, subscribed before it is created.
    pub fn new(db: &Db, cfg: LinkConfig, on_refusal: OnRefusal) -> End {
        let sub = db.subscribe(KeyRange::all());
        End { sub, link: Link::new(db.clone(), cfg, 0), bytes_out: 0, on_refusal }
    }

    /// Hands the link every commit its feed holds.
    pub fn pump_feed(&mut self) {
        loop {
            match self.sub.try_recv_commit() {
                Ok(Some(c)) => self.link.handle_commit(c),
                Ok(None) => break,
                Err(FeedError::Lagged { .. }) => self.link.handle_feed_lagged(),
                Err(e) => panic!("{e}"),
            }
        }
    }
}

/// Sends up to `max` messages from `from` to `to`, through the codec;
/// returns how many it sent.
pub fn transmit(from: &mut End, to: &mut End, max: usize) -> usize {
    transmit_inspecting(from, to, max, |_| ControlFlow::Continue(()))
}

/// [`transmit`], showing each message to `inspect` before it is sent; a
/// `Break` stops there, and that message is not sent.
pub fn transmit_inspecting(
    from: &mut End,
    to: &mut End,
    max: usize,
    mut inspect: impl FnMut(&Message) -> ControlFlow<()>,
) -> usize {
    let mut n = 0;
    while n < max {
        let Some(msg) = from.link.poll_transmit(0).expect("poll") else { break };
        if inspect(&msg).is_break() {
            break;
        }
        let mut buf = Vec::new();
        from.bytes_out += codec::encode(&msg, &mut buf);
        let (msg, _) = codec::decode(&buf, codec::DEFAULT_MAX_FRAME).expect("decode").expect("frame");
        let handled = to.link.handle_message(msg, 0);
        if matches!(to.on_refusal, OnRefusal::Panic) {
            handled.expect("handle");
        }
        n += 1;
    }
    n
}
