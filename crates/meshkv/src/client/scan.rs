//! Client-side scans: chunked, pulled one chunk at a time, and resumed
//! after a reconnect exactly after the last key received.

use super::{Client, Result};
use crate::protocol::request::{ErrorCode, Request, Response};
use crate::storage::{Entry, ScanOptions};
use std::collections::VecDeque;

/// A remote scan; see [`Client::scan`]. Call [`next`](Self::next) until `None`.
pub struct ScanStream {
    client: Client,
    /// The caller's options.
    options: ScanOptions,
    chunk: u32,
    buffered: VecDeque<Entry>,
    cursor: Option<u64>,
    /// Last key handed out (resume point).
    last: Option<Vec<u8>>,
    delivered: usize,
    done: bool,
    /// A request is out: if `next` is entered again with this set, the
    /// call that sent it was cancelled.
    in_flight: bool,
}

impl ScanStream {
    pub(crate) fn new(client: Client, options: ScanOptions, chunk: u32) -> Self {
        ScanStream {
            client,
            options,
            chunk: chunk.max(1),
            buffered: VecDeque::new(),
            cursor: None,
            last: None,
            delivered: 0,
            done: false,
            in_flight: false,
        }
    }

    /// The next entry, `None` at the end. Cancel-safe: after a call
    /// dropped before it returned, the next one goes on right after the
    /// last entry returned.
    pub async fn next(&mut self) -> Option<Result<Entry>> {
        loop {
            if let Some(mut e) = self.buffered.pop_front() {
                self.delivered += 1;
                self.last = Some(e.key.clone());
                if !self.options.keys {
                    e.key.clear();
                }
                return Some(Ok(e));
            }
            if self.done || self.options.limit.is_some_and(|l| self.delivered >= l) {
                return None;
            }
            if let Err(e) = self.fetch().await {
                self.done = true;
                return Some(Err(e));
            }
        }
    }

    /// Collects the rest of the stream.
    pub async fn collect(mut self) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        while let Some(e) = self.next().await {
            out.push(e?);
        }
        Ok(out)
    }

    async fn fetch(&mut self) -> Result<()> {
        if self.in_flight {
            // A cancelled call left its request unanswered: the chunk it
            // asked for is dropped when it comes (and its cursor closed),
            // so the cursor's position is unknown. Reopen after the last
            // entry handed out instead.
            if let Some(cursor) = self.cursor.take() {
                self.client.forget(Request::ScanClose { cursor });
            }
        }
        loop {
            let request = match self.cursor {
                Some(cursor) => Request::ScanMore { cursor },
                None => Request::Scan { options: self.resume_options(), chunk: self.chunk },
            };
            // A timeout ends the scan (as it ends any call): the request may
            // still open a cursor, which is closed when its reply comes;
            // resuming instead would open one more cursor per timeout.
            self.in_flight = true;
            let reply = self.client.call_within(request).await;
            self.in_flight = false;
            let Some(reply) = reply else { return Err(super::timed_out()) };
            match reply {
                Ok(Response::Chunk { cursor, entries, done }) => {
                    self.cursor = (!done).then_some(cursor);
                    self.done = done;
                    self.buffered.extend(entries);
                    return Ok(());
                }
                Ok(other) => return Err(super::unexpected(other)),
                // The cursor lived on the lost connection: reopen after the
                // last key received.
                Err(e) if self.client.retries() && is_lost_cursor(&e) => self.cursor = None,
                Err(e) => return Err(e),
            }
        }
    }

    /// The caller's options narrowed to what has not been delivered yet.
    fn resume_options(&self) -> ScanOptions {
        let mut o = self.options.clone();
        o.keys = true; // needed to resume, stripped before handing out
        if let Some(last) = &self.last {
            if o.reverse {
                o.range.lt = Some(last.clone());
            } else {
                o.range.gt = Some(last.clone());
            }
        }
        o.limit = o.limit.map(|l| l - self.delivered);
        o
    }
}

fn is_lost_cursor(e: &super::Error) -> bool {
    e.code == ErrorCode::ConnectionLost
}

impl Drop for ScanStream {
    /// Closes the node-side cursor of a scan abandoned before its end.
    fn drop(&mut self) {
        if let Some(cursor) = self.cursor.take() {
            self.client.forget(Request::ScanClose { cursor });
        }
    }
}
