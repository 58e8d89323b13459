//! The retry memory of a node's client server: replies to writes by
//! (client, request id), so a request re-sent after a reconnect is answered once.
//! It lives as long as the node's process: the incarnation in the node's
//! `Hello` tells clients when it is gone (after a restart).

use crate::protocol::request::{RemoteError, Response};
use crate::version::NodeId;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Replies to writes by `(client, request id)`, so a request re-sent after a
/// reconnect is answered from here instead of being applied twice.
pub(crate) struct RetryCache {
    inner: Mutex<Remembered>,
    capacity: usize,
}

pub(super) type RequestKey = (NodeId, u64);
pub(super) type Outcome = Result<Response, RemoteError>;

/// Replies by request, and the order they arrived in (for eviction).
#[derive(Default)]
struct Remembered {
    replies: HashMap<RequestKey, Outcome>,
    order: VecDeque<RequestKey>,
}

impl RetryCache {
    pub fn new(capacity: usize) -> Self {
        RetryCache { inner: Mutex::new(Remembered::default()), capacity: capacity.max(1) }
    }

    /// The remembered reply to each of `keys` (distinct), the others
    /// answered by running `apply` once on their positions in `keys`, which
    /// returns their replies in that order; those are remembered. The lock
    /// is held while `apply` runs, so a request retried on a new connection
    /// while the original is still being applied waits for it instead of
    /// applying again. (Writes are serialized by the store anyway.)
    pub(super) fn once_each(&self, keys: &[RequestKey], apply: impl FnOnce(&[usize]) -> Vec<Outcome>) -> Vec<Outcome> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut replies: Vec<Option<Outcome>> = keys.iter().map(|k| g.replies.get(k).cloned()).collect();
        let fresh: Vec<usize> = (0..keys.len()).filter(|&i| replies[i].is_none()).collect();
        if !fresh.is_empty() {
            let applied = apply(&fresh);
            debug_assert_eq!(applied.len(), fresh.len());
            for (i, reply) in fresh.into_iter().zip(applied) {
                g.replies.insert(keys[i], reply.clone());
                g.order.push_back(keys[i]);
                replies[i] = Some(reply);
            }
            while g.order.len() > self.capacity {
                if let Some(old) = g.order.pop_front() {
                    g.replies.remove(&old);
                }
            }
        }
        replies.into_iter().map(|r| r.unwrap_or_else(|| unreachable!("every request answered"))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::Dot;

    /// Sends request `id` of one client; if applied, it is written at `seq`.
    /// Returns the seq of the reply and whether `apply` ran.
    fn send(cache: &RetryCache, id: u64, seq: u64) -> (u64, bool) {
        let mut ran = false;
        let replies = cache.once_each(&[(NodeId(7), id)], |fresh| {
            ran = true;
            vec![Ok(Response::Written(Some(Dot::new(NodeId(1), seq)))); fresh.len()]
        });
        match replies.as_slice() {
            [Ok(Response::Written(Some(dot)))] => (dot.seq, ran),
            other => panic!("unexpected replies {other:?}"),
        }
    }

    #[test]
    fn a_retry_is_answered_from_memory_until_evicted() {
        let cache = RetryCache::new(2);
        assert_eq!(send(&cache, 1, 10), (10, true));
        assert_eq!(send(&cache, 1, 11), (10, false), "the remembered reply, not applied again");
        assert_eq!(send(&cache, 2, 12), (12, true));
        assert_eq!(send(&cache, 3, 13), (13, true));
        assert_eq!(send(&cache, 1, 14), (14, true), "beyond capacity the oldest is forgotten");
        assert_eq!(send(&cache, 3, 15), (13, false));
    }
}
