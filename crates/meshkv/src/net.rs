//! Framed, optionally encrypted connections over TCP, shared by the node
//! and the client: [`establish`] runs the handshake, then a [`FrameReader`]
//! decrypts and decodes frames and a [`FrameWriter`] encodes and encrypts
//! them. The byte-level work is done by the pure `secure` and `codec`
//! modules; this is only the IO around them.

use crate::protocol::{codec, Message};
use crate::secure::{Access, Handshake, Opener, Sealer, SecureError, Security, Side};
use std::io;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 64 * 1024;
/// Written bytes at the front of the send buffer are dropped past this.
const COMPACT_AFTER: usize = 1 << 20;

/// Why a connection could not be established. The connection is unusable
/// and no protocol frame was exchanged.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EstablishError {
    /// The socket failed or closed during the handshake.
    #[error("connection closed during the handshake: {0}")]
    Io(#[from] io::Error),
    /// The handshake failed (wrong secret, not meshkv, ...).
    #[error(transparent)]
    Secure(#[from] SecureError),
}

/// Runs the handshake on a fresh connection; the returned halves carry
/// frames, encrypted when `security` has a secret.
pub(crate) async fn establish(
    stream: TcpStream,
    side: Side,
    security: &Security,
    max_frame: usize,
) -> Result<(FrameReader, FrameWriter, Access), EstablishError> {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let mut hs = match side {
        Side::Initiator => Handshake::initiator(security)?,
        Side::Responder => Handshake::responder(security),
    };
    let mut chunk = vec![0u8; 1024];
    loop {
        let out = hs.take_output();
        if !out.is_empty() {
            wr.write_all(&out).await?;
        }
        if let Some(done) = hs.established() {
            let reader = FrameReader::new(rd, done.opener, done.plain, max_frame);
            return Ok((reader, FrameWriter::new(wr, done.sealer), done.access));
        }
        let n = rd.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        if let Err(e) = hs.read(&chunk[..n]) {
            // Say why (the preamble, a refusal) before closing.
            let _ = wr.write_all(&hs.take_output()).await;
            return Err(e.into());
        }
    }
}

/// Why a frame could not be read. The stream is out of step after it: the
/// connection must be closed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    /// The bytes do not decode as a frame (too large, malformed, or a
    /// `Hello` of another protocol version).
    #[error(transparent)]
    Codec(#[from] codec::CodecError),
    /// The bytes do not decrypt.
    #[error(transparent)]
    Secure(#[from] SecureError),
}

impl FrameError {
    /// The protocol version the other side speaks, if the frame is a
    /// `Hello` of another version than ours.
    pub fn other_version(&self) -> Option<u16> {
        match self {
            FrameError::Codec(codec::CodecError::OtherVersion { theirs, .. }) => Some(*theirs),
            _ => None,
        }
    }
}

/// Decodes frames from a socket, decrypting and buffering partial ones.
pub(crate) struct FrameReader {
    rd: OwnedReadHalf,
    opener: Opener,
    /// Decrypted bytes not yet decoded, from `start`.
    buf: Vec<u8>,
    /// Where socket reads land before decryption (allocated once).
    chunk: Box<[u8]>,
    start: usize,
    max_frame: usize,
    failed: bool,
    /// The socket reported end of stream or an error during [`Self::spin`].
    ended: bool,
    /// Bytes read during [`Self::spin`] failed to decrypt: reported by
    /// [`Self::try_next`] after the frames before them.
    broken: Option<SecureError>,
    /// Bytes of the frames decoded so far (plaintext, with their headers).
    decoded: u64,
}

impl FrameReader {
    fn new(rd: OwnedReadHalf, opener: Opener, plain: Vec<u8>, max_frame: usize) -> Self {
        let chunk = vec![0u8; READ_CHUNK].into_boxed_slice();
        FrameReader {
            rd,
            opener,
            buf: plain,
            chunk,
            start: 0,
            max_frame,
            failed: false,
            ended: false,
            broken: None,
            decoded: 0,
        }
    }

    /// Bytes of the frames decoded so far (plaintext, with their headers).
    pub fn decoded_bytes(&self) -> u64 {
        self.decoded
    }

    /// Drops the decoded bytes once they are at least as many as those
    /// after them: each byte is moved at most about once, and the buffer
    /// stays within twice a frame and a read.
    fn compact(&mut self) {
        if self.start > 0 && self.start >= self.buf.len() - self.start {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }

    /// Changes the largest frame accepted from now on.
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }

    /// A frame already buffered, without reading. After a malformed frame
    /// the reader yields nothing more.
    pub fn try_next(&mut self) -> Option<Result<Message, FrameError>> {
        if self.failed {
            return None;
        }
        match codec::decode(&self.buf[self.start..], self.max_frame) {
            Ok(Some((msg, used))) => {
                self.start += used;
                self.decoded += used as u64;
                Some(Ok(msg))
            }
            Ok(None) => {
                let e = self.broken.take()?;
                self.failed = true;
                Some(Err(e.into()))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e.into()))
            }
        }
    }

    /// The next frame; `None` at end of stream. Cancel-safe.
    pub async fn next(&mut self) -> Option<Result<Message, FrameError>> {
        loop {
            if let Some(m) = self.try_next() {
                return Some(m);
            }
            if self.failed || self.ended {
                return None;
            }
            self.compact();
            if self.opener.is_plain() {
                // Plaintext lands where it is decoded, without a copy.
                self.buf.reserve(READ_CHUNK);
                match self.rd.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => continue,
                }
            }
            match self.rd.read(&mut self.chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => {
                    if let Err(e) = self.opener.open(&self.chunk[..n], &mut self.buf) {
                        self.failed = true;
                        return Some(Err(e.into()));
                    }
                }
            }
        }
    }

    /// Busy-polls the socket for up to `budget` until a whole frame is
    /// buffered, without yielding to the runtime; returns whether [`Self::next`]
    /// would answer without waiting (a frame, an error, the end of stream).
    /// A round trip on an idle machine waits for the peer's thread to be
    /// woken, and on a virtual machine that wake-up (of a halted virtual
    /// CPU) costs far more than the request; a thread that spins instead is
    /// awake when the reply lands. Costs up to `budget` of CPU per call.
    pub fn spin(&mut self, budget: std::time::Duration) -> bool {
        let started = std::time::Instant::now();
        loop {
            if self.failed || self.broken.is_some() || self.ended {
                return true;
            }
            if codec::frame_ready(&self.buf[self.start..], self.max_frame) {
                return true;
            }
            self.compact();
            match read_now(&self.rd, &mut self.chunk) {
                Ok(0) => self.ended = true,
                Ok(n) => {
                    if let Err(e) = self.opener.open(&self.chunk[..n], &mut self.buf) {
                        self.broken = Some(e);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if started.elapsed() >= budget {
                        return false;
                    }
                    std::hint::spin_loop();
                }
                Err(_) => self.ended = true,
            }
        }
    }
}

/// Busy-polling of a [`FrameReader`] with a budget per wait, yielding to
/// the runtime at least every [`BusyPoll::YIELD_EVERY`] of spinning and
/// serving: a task that is always ready would otherwise keep its worker's
/// other tasks, and the IO driver if that worker holds it, waiting.
pub(crate) struct BusyPoll {
    budget: std::time::Duration,
    since_yield: std::time::Instant,
}

impl BusyPoll {
    const YIELD_EVERY: std::time::Duration = std::time::Duration::from_micros(500);

    /// Polls for up to `budget` per wait; zero turns it off.
    pub fn new(budget: std::time::Duration) -> Self {
        BusyPoll { budget, since_yield: std::time::Instant::now() }
    }

    /// Spins on `reader` until a frame is buffered or the budget is spent,
    /// yielding whenever it is time to, also within a long budget.
    pub async fn wait(&mut self, reader: &mut FrameReader) {
        let started = std::time::Instant::now();
        while !self.budget.is_zero() {
            let left = self.budget.saturating_sub(started.elapsed());
            let ready = reader.spin(left.min(Self::YIELD_EVERY.saturating_sub(self.since_yield.elapsed())));
            if self.since_yield.elapsed() >= Self::YIELD_EVERY {
                tokio::task::yield_now().await;
                self.since_yield = std::time::Instant::now();
            }
            if ready || started.elapsed() >= self.budget {
                return;
            }
        }
    }
}

/// Reads what the socket holds without waiting. Asks the socket itself:
/// tokio's `try_read` trusts its cached readiness, which only its IO driver
/// refreshes, so a thread polling with it would wait for that driver's
/// wake-up all the same.
fn read_now(rd: &OwnedReadHalf, buf: &mut [u8]) -> io::Result<usize> {
    let socket = socket2::SockRef::from(rd.as_ref());
    io::Read::read(&mut &*socket, buf)
}

/// Encodes and encrypts frames into a send buffer and writes it out.
pub(crate) struct FrameWriter {
    wr: OwnedWriteHalf,
    sealer: Sealer,
    plain: Vec<u8>,
    wire: Vec<u8>,
    written: usize,
}

impl FrameWriter {
    fn new(wr: OwnedWriteHalf, sealer: Sealer) -> Self {
        FrameWriter { wr, sealer, plain: Vec::new(), wire: Vec::new(), written: 0 }
    }

    /// Queues already-encoded frames.
    pub fn queue_frames(&mut self, frames: &[u8]) -> io::Result<()> {
        // Drop what was written, so a connection that is never idle does
        // not keep every byte it ever sent.
        if self.written == self.wire.len() || self.written >= COMPACT_AFTER {
            self.wire.drain(..self.written);
            self.written = 0;
        }
        self.sealer.seal(frames, &mut self.wire).map_err(io::Error::other)
    }

    /// Queues one message.
    pub fn queue(&mut self, msg: &Message) -> io::Result<()> {
        let mut plain = std::mem::take(&mut self.plain);
        plain.clear();
        codec::encode(msg, &mut plain);
        let res = self.queue_frames(&plain);
        self.plain = plain;
        res
    }

    /// Bytes queued and not yet written.
    pub fn pending(&self) -> usize {
        self.wire.len() - self.written
    }

    /// Writes some of what is queued (one `write` call). Cancel-safe: an
    /// interrupted call wrote nothing, or what it returned.
    pub async fn write_some(&mut self) -> io::Result<usize> {
        let n = self.wr.write(&self.wire[self.written..]).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        self.written += n;
        Ok(n)
    }

    /// Writes what the socket takes right now, without waiting.
    pub fn try_flush(&mut self) -> io::Result<()> {
        while self.pending() > 0 {
            match self.wr.try_write(&self.wire[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> io::Result<()> {
        while self.pending() > 0 {
            self.write_some().await?;
        }
        Ok(())
    }

    /// Queues `msg` and writes everything queued.
    pub async fn send(&mut self, msg: &Message) -> io::Result<()> {
        self.queue(msg)?;
        self.flush().await
    }

    /// Closes the sending direction after writing what is queued.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.flush().await?;
        self.wr.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Hlc;
    use crate::protocol::codec::DEFAULT_MAX_FRAME;
    use crate::protocol::Item;
    use crate::storage::{EncodedRecord, Record, Version};
    use crate::version::{Dot, NodeId, VersionVector};

    /// A catch-up batch of `n` items with `key_len`-byte keys.
    fn batch(id: u64, n: usize, key_len: usize) -> Message {
        let items = (0..n)
            .map(|i| {
                let version = Version {
                    dot: Dot::new(NodeId(1), id * 1000 + i as u64 + 1),
                    hlc: Hlc::new(1_700_000_000_000, 0),
                    deps: VersionVector::new(),
                    value: Some(vec![i as u8; 10]),
                };
                Item {
                    key: vec![(id % 251) as u8; key_len],
                    record: EncodedRecord::from_record(&Record::single(version)),
                }
            })
            .collect();
        Message::CatchUp { id, items, position: None }
    }

    /// Frames of mixed sizes, sent in pieces that cut them anywhere, arrive
    /// whole and in order, and the reader's buffer stays within a few frames.
    #[tokio::test]
    async fn frames_cut_anywhere_arrive_whole_in_a_bounded_buffer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let sent: Vec<Message> = (0..60)
            .map(|i| if i % 3 == 0 { batch(i, 40, 8 * 1024) } else { batch(i, 1 + i as usize % 5, 16) })
            .collect();
        let mut wire = Vec::new();
        let mut largest = 0;
        for m in &sent {
            largest = largest.max(codec::encode(m, &mut wire));
        }
        let writer = tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            // Piece sizes that cut headers and payloads at varying places.
            let pieces = [1usize, 3, 70_000, 5, 200_000, 4096, 2, 131_071];
            let mut at = 0;
            for size in pieces.iter().cycle() {
                if at == wire.len() {
                    break;
                }
                let end = (at + size).min(wire.len());
                stream.write_all(&wire[at..end]).await.expect("write");
                stream.flush().await.expect("flush");
                at = end;
                tokio::task::yield_now().await;
            }
        });
        let (socket, _) = listener.accept().await.expect("accept");
        let (rd, _wr) = socket.into_split();
        let mut reader = FrameReader::new(rd, Opener::Plain, Vec::new(), DEFAULT_MAX_FRAME);
        let mut received = Vec::new();
        let mut most = 0;
        while received.len() < sent.len() {
            received.push(reader.next().await.expect("a frame").expect("decodes"));
            most = most.max(reader.buf.capacity());
        }
        writer.await.expect("writer");
        assert_eq!(received, sent);
        assert!(most <= 4 * (largest + READ_CHUNK), "buffer grew to {most} bytes for frames of at most {largest}");
    }
}
