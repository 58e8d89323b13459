//! The machine baseline of `bench client`: plain tokio TCP ping-pong over
//! loopback, with no meshkv code in the path.
//!
//! A round trip over loopback costs at least two thread wake-ups, and on
//! small VMs those dominate: they bound the sequential throughput of any
//! client and server, however little work each request takes. Measured in
//! the same run as meshkv, meshkv ÷ ping-pong says how much of that bound
//! meshkv reaches, whatever the machine's speed that day.
//!
//! The server is a task on the node's runtime that answers each
//! `request`-byte request with a `reply`-byte reply ([`Sizes`]), all the
//! requests one read delivered with one write. The client ([`Conn`]) runs on
//! the runtime the meshkv client runs on, one round trip at a time or with a
//! window of requests in flight on the same connection, refilled as replies
//! arrive. With a busy-poll budget, both sides poll their socket for that
//! long before sleeping, as the node and client do with theirs.

use anyhow::{bail, Context, Result};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A measurement that takes longer than this has stalled and fails.
const STALLED: Duration = Duration::from_secs(30);
const READ_BUF: usize = 64 * 1024;

/// Request and reply sizes in bytes.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Bytes the client sends per round trip.
    pub request: usize,
    /// Bytes the server answers with.
    pub reply: usize,
}

/// Binds 127.0.0.1 on an ephemeral port and spawns a server for one
/// connection on the current runtime; it ends when the client closes the
/// connection.
pub async fn start_server(sizes: Sizes, busy_poll: Duration) -> Result<(SocketAddr, JoinHandle<Result<()>>)> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.context("ping-pong: cannot bind")?;
    let addr = listener.local_addr().context("ping-pong: no local address")?;
    Ok((addr, tokio::spawn(serve(listener, sizes, busy_poll))))
}

async fn serve(listener: TcpListener, sizes: Sizes, busy_poll: Duration) -> Result<()> {
    let (mut stream, _) = listener.accept().await.context("ping-pong: accept")?;
    stream.set_nodelay(true).context("ping-pong: nodelay")?;
    let mut buf = vec![0u8; READ_BUF];
    let mut replies = Vec::new();
    let mut partial = 0;
    loop {
        let n = read_polling(&mut stream, &mut buf, busy_poll).await.context("ping-pong server: read")?;
        if n == 0 {
            return Ok(());
        }
        let count = (partial + n) / sizes.request;
        partial = (partial + n) % sizes.request;
        if count > 0 {
            replies.resize(count * sizes.reply, b'v');
            stream.write_all(&replies).await.context("ping-pong server: write")?;
        }
    }
}

/// The client's connection.
pub struct Conn {
    stream: TcpStream,
    sizes: Sizes,
    buf: Vec<u8>,
    busy_poll: Duration,
}

impl Conn {
    /// Connects to a server from [`start_server`].
    pub async fn connect(addr: SocketAddr, sizes: Sizes, busy_poll: Duration) -> Result<Conn> {
        let stream = TcpStream::connect(addr).await.context("ping-pong: cannot connect")?;
        stream.set_nodelay(true).context("ping-pong: nodelay")?;
        Ok(Conn { stream, sizes, buf: vec![0u8; READ_BUF], busy_poll })
    }

    /// Time taken by `n` round trips, one at a time.
    pub async fn sequential(&mut self, n: u64) -> Result<Duration> {
        let request = vec![b'r'; self.sizes.request];
        let reply_len = self.sizes.reply;
        let started = Instant::now();
        let run = async {
            for _ in 0..n {
                self.stream.write_all(&request).await?;
                let mut got = 0;
                while got < reply_len {
                    match read_polling(&mut self.stream, &mut self.buf[got..reply_len], self.busy_poll).await? {
                        0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                        n => got += n,
                    }
                }
            }
            Ok::<_, std::io::Error>(())
        };
        tokio::time::timeout(STALLED, run).await.context("ping-pong stalled")?.context("ping-pong client")?;
        Ok(started.elapsed())
    }

    /// Time taken by `n` round trips with up to `window` in flight.
    pub async fn in_flight(&mut self, n: u64, window: u64) -> Result<Duration> {
        let started = Instant::now();
        tokio::time::timeout(STALLED, self.windowed(n, window)).await.context("ping-pong stalled")??;
        Ok(started.elapsed())
    }

    async fn windowed(&mut self, n: u64, window: u64) -> Result<()> {
        let Sizes { request, reply } = self.sizes;
        let requests = vec![b'r'; request * window as usize];
        let mut sent = window.min(n);
        self.stream.write_all(&requests[..sent as usize * request]).await.context("ping-pong client: write")?;
        let (mut done, mut partial) = (0, 0);
        while done < sent {
            let got = read_polling(&mut self.stream, &mut self.buf, self.busy_poll)
                .await
                .context("ping-pong client: read")?;
            if got == 0 {
                bail!("ping-pong server closed the connection");
            }
            let replies = ((partial + got) / reply) as u64;
            partial = (partial + got) % reply;
            done += replies;
            // Never more than `window` outstanding, so `more <= window`.
            let more = replies.min(n - sent);
            if more > 0 {
                self.stream.write_all(&requests[..more as usize * request]).await.context("ping-pong client: write")?;
                sent += more;
            }
        }
        Ok(())
    }
}

/// Reads what has arrived, polling without sleeping for up to `budget`
/// first; 0 at end of stream.
async fn read_polling(stream: &mut TcpStream, buf: &mut [u8], budget: Duration) -> std::io::Result<usize> {
    let started = Instant::now();
    while !budget.is_zero() {
        // Not `try_read`: it trusts tokio's cached readiness (see
        // `meshkv::net`), so it would wait for tokio's IO driver anyway.
        match std::io::Read::read(&mut &*socket2::SockRef::from(&*stream), buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if started.elapsed() >= budget {
                    break;
                }
                std::hint::spin_loop();
            }
            done => return done,
        }
    }
    stream.read(buf).await
}
