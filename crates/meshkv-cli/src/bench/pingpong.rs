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
//! `request_len`-byte request with a `reply_len`-byte reply, all the
//! requests one read delivered with one write. The client runs on the
//! runtime the meshkv client runs on. Sequential: one round trip at a time.
//! In flight: a window of requests on the same connection, refilled as
//! replies arrive. Each measurement stops issuing requests after
//! [`MAX_PHASE`].

use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Longest a measurement issues new requests for.
pub const MAX_PHASE: Duration = Duration::from_secs(10);
const READ_BUF: usize = 64 * 1024;

/// Round trips per second of both measurements.
#[derive(Debug, Clone, Copy)]
pub struct PingPong {
    /// One round trip at a time.
    pub seq_per_s: f64,
    /// With a window of requests in flight.
    pub in_flight_per_s: f64,
}

/// Request and reply sizes in bytes.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Bytes the client sends per round trip.
    pub request: usize,
    /// Bytes the server answers with.
    pub reply: usize,
}

/// Binds 127.0.0.1 on an ephemeral port and spawns a server for one
/// connection on the current runtime; the handle ends when the client
/// closes the connection.
pub async fn start_server(sizes: Sizes) -> Result<(SocketAddr, JoinHandle<Result<()>>)> {
    let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await.context("ping-pong: cannot bind")?;
    let addr = listener.local_addr().context("ping-pong: no local address")?;
    Ok((addr, tokio::spawn(serve(listener, sizes))))
}

async fn serve(listener: TcpListener, sizes: Sizes) -> Result<()> {
    let (mut stream, _) = listener.accept().await.context("ping-pong: accept")?;
    stream.set_nodelay(true).context("ping-pong: nodelay")?;
    let mut buf = vec![0u8; READ_BUF];
    let mut replies = Vec::new();
    let mut partial = 0;
    loop {
        let n = stream.read(&mut buf).await.context("ping-pong server: read")?;
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

/// Connects to `addr` and measures `round_trips` sequential round trips,
/// then `round_trips` with `window` in flight.
pub async fn measure(addr: SocketAddr, sizes: Sizes, round_trips: u64, window: u64) -> Result<PingPong> {
    let mut stream = TcpStream::connect(addr).await.context("ping-pong: cannot connect")?;
    stream.set_nodelay(true).context("ping-pong: nodelay")?;
    let seq_per_s = sequential(&mut stream, sizes, round_trips).await?;
    let in_flight_per_s = windowed(&mut stream, sizes, round_trips, window).await?;
    Ok(PingPong { seq_per_s, in_flight_per_s })
}

async fn sequential(stream: &mut TcpStream, sizes: Sizes, round_trips: u64) -> Result<f64> {
    let request = vec![b'r'; sizes.request];
    let mut reply = vec![0u8; sizes.reply];
    let started = Instant::now();
    let mut done = 0;
    while done < round_trips && started.elapsed() < MAX_PHASE {
        stream.write_all(&request).await.context("ping-pong client: write")?;
        stream.read_exact(&mut reply).await.context("ping-pong client: read")?;
        done += 1;
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

async fn windowed(stream: &mut TcpStream, sizes: Sizes, round_trips: u64, window: u64) -> Result<f64> {
    let requests = vec![b'r'; sizes.request * window as usize];
    let mut buf = vec![0u8; READ_BUF];
    let started = Instant::now();
    let mut sent = window.min(round_trips);
    stream.write_all(&requests[..sent as usize * sizes.request]).await.context("ping-pong client: write")?;
    let (mut done, mut partial) = (0, 0);
    while done < sent {
        let n = stream.read(&mut buf).await.context("ping-pong client: read")?;
        if n == 0 {
            bail!("ping-pong server closed the connection");
        }
        let replies = ((partial + n) / sizes.reply) as u64;
        partial = (partial + n) % sizes.reply;
        done += replies;
        // At most `window` are outstanding, so `replies <= window`.
        let more = if started.elapsed() < MAX_PHASE { replies.min(round_trips - sent) } else { 0 };
        if more > 0 {
            stream.write_all(&requests[..more as usize * sizes.request]).await.context("ping-pong client: write")?;
            sent += more;
        }
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}
