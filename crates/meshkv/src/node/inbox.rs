//! The queue of decoded frames from a connection's reader task to its link
//! task, bounded by the bytes of the frames they came in (not by their
//! count), so a link holds at most [`INBOX_BYTES`] of received frames
//! however large they are, and many small ones when they are small.

use crate::net::FrameError;
use crate::protocol::Message;
use std::sync::Arc;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Frame bytes a link's inbox holds (a larger frame takes all of it): room
/// for a full window of batches at their default size, so a sender keeps
/// streaming while the receiver applies what came before.
pub(super) const INBOX_BYTES: usize = 16 << 20;

/// What the reader task hands over: a decoded frame or why decoding failed.
pub(super) type Frame = Result<Message, FrameError>;

/// A frame taken from the inbox, holding its room until dropped.
pub(super) struct Received {
    pub frame: Frame,
    _room: OwnedSemaphorePermit,
}

/// The reader task's end.
pub(super) struct InboxSender {
    tx: mpsc::UnboundedSender<Received>,
    room: Arc<Semaphore>,
    budget: usize,
}

/// The link task's end.
pub(super) struct Inbox {
    rx: mpsc::UnboundedReceiver<Received>,
}

/// An inbox holding at most `budget` bytes of frames (and at least one).
pub(super) fn inbox(budget: usize) -> (InboxSender, Inbox) {
    let budget = budget.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let (tx, rx) = mpsc::unbounded_channel();
    (InboxSender { tx, room: Arc::new(Semaphore::new(budget)), budget }, Inbox { rx })
}

impl InboxSender {
    /// Queues `frame`, which took `bytes` on the wire, once there is room
    /// for it. `Err` if the link task is gone.
    pub async fn send(&self, frame: Frame, bytes: usize) -> Result<(), ()> {
        let want = bytes.clamp(1, self.budget) as u32;
        let room = Arc::clone(&self.room).acquire_many_owned(want).await.map_err(|_| ())?;
        self.tx.send(Received { frame, _room: room }).map_err(|_| ())
    }
}

impl Inbox {
    /// The next frame; `None` once the reader task has ended and every
    /// frame was taken.
    pub async fn recv(&mut self) -> Option<Received> {
        self.rx.recv().await
    }

    /// Whether no frame is waiting.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn the_reader_waits_while_the_frames_held_fill_the_budget() {
        let (tx, mut rx) = inbox(100);
        tx.send(Ok(Message::Ping), 60).await.unwrap();
        // 60 + 60 > 100: the second frame waits for the first to be handled.
        let second = tokio::spawn(async move {
            tx.send(Ok(Message::Ping), 60).await.unwrap();
            tx
        });
        let first = rx.recv().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(rx.is_empty(), "a frame over the budget was queued");
        drop(first);
        let _tx = second.await.unwrap();
        assert!(rx.recv().await.is_some());
    }

    #[tokio::test]
    async fn a_frame_larger_than_the_budget_takes_all_of_it() {
        let (tx, mut rx) = inbox(100);
        tx.send(Ok(Message::Ping), 10_000).await.unwrap();
        let held = rx.recv().await.unwrap();
        let waiting = tokio::spawn(async move { tx.send(Ok(Message::Ping), 1).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the budget was exceeded");
        drop(held);
        assert!(waiting.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn sending_fails_once_the_link_task_is_gone() {
        let (tx, rx) = inbox(100);
        drop(rx);
        assert!(tx.send(Ok(Message::Ping), 1).await.is_err());
    }
}
