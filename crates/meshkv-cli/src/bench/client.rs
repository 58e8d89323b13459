//! `meshkv bench client`: remote put and get throughput through
//! `meshkv::Client` against a node in this process, over loopback TCP —
//! one request at a time (each waits for its reply) and with many in flight.
//!
//! The node runs on a fresh store (default durability) on a multi-thread
//! tokio runtime; the client on its own single-threaded one (or, with
//! `--shared-runtime`, on the node's). Sequential: one task issues `--ops`
//! puts, then `--ops` gets of the same keys, each awaited before the next.
//! In flight: `--in-flight` tasks share one client (one connection,
//! requests pipelined) and split the same number of operations.
//! Batched: the same tasks send `--batch` operations per request (an atomic
//! `batch` of puts, or one `get_many`); throughput counts operations.
//! Keys are 16 bytes (scattered), values `--value-size` bytes.
//!
//! The machine's baseline is measured alongside: a plain TCP ping-pong (see
//! [`pingpong`]) between the same two runtimes with a plaintext get's frame
//! sizes. Sequential ping-pong round trips alternate with the sequential
//! puts and gets in chunks of [`CHUNK`], so that each ratio (meshkv ÷
//! ping-pong) compares the two under the same conditions. The ping-pong
//! with `--in-flight` round trips in flight runs once, before meshkv's
//! in-flight measurements.

use super::machine;
use super::pingpong::{self, Sizes};
use super::workload::{key_at, push_value};
use anyhow::{Context, Result};
use clap::Args;
use meshkv::client::{Client, ClientOptions};
use meshkv::node::{Node, NodeConfig, ServerOptions};
use meshkv::protocol::{codec, BatchOp, Message, Request, Response};
use meshkv::secure::{Secret, Security};
use meshkv::{Db, Options};
use serde_json::json;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Sequential operations measured between two switches to the ping-pong.
const CHUNK: u64 = 500;

/// Arguments of `meshkv bench client`.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// Operations per measurement.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    ops: u64,
    /// Operations of each sequential measurement [default: `--ops`]. On a
    /// VM with slow thread wake-ups these dominate the run; a small number
    /// leaves a profile of the in-flight and batched measurements.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    sequential_ops: Option<u64>,
    /// Requests in flight for the pipelined measurements.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    in_flight: u64,
    /// Operations per request for the batched measurements (`batch`, `get_many`).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    batch: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Where the temporary store goes (default: the system temp directory).
    #[arg(long, env = "MESHKV_BENCH_DIR")]
    dir: Option<PathBuf>,
    /// Authenticate and encrypt the connection with a fresh cluster secret
    /// (measures what Noise costs).
    #[arg(long)]
    secret: bool,
    /// Run the client on the node's runtime instead of its own
    /// single-threaded one (as a client in another process would be).
    #[arg(long)]
    shared_runtime: bool,
    /// Busy-poll for replies and requests this many microseconds before
    /// sleeping, on the node, the client and the ping-pong baseline alike
    /// (`ServerOptions::busy_poll`, `ClientOptions::busy_poll`; 0: off).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    busy_poll_us: u64,
}

impl ClientArgs {
    fn busy_poll(&self) -> Duration {
        Duration::from_micros(self.busy_poll_us)
    }
}

/// Runs `meshkv bench client`.
pub fn run(args: ClientArgs) -> Result<()> {
    let base = super::base_dir(args.dir.as_deref())?;
    let dir = super::temp_dir(&base, "meshkv-bench-client-")?;
    let node_rt = super::runtime()?;
    let (node, addr, secret) = node_rt.block_on(start_node(&args, dir.path()))?;
    let own_rt = if args.shared_runtime {
        None
    } else {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the client's runtime")?;
        Some(rt)
    };
    let client_rt = own_rt.as_ref().unwrap_or(&node_rt);
    let sizes = get_frame_sizes(args.ops, args.value_size);
    let (pp_addr, pp_server) = node_rt.block_on(pingpong::start_server(sizes, args.busy_poll()))?;
    let results = client_rt.block_on(measure(&args, addr, secret, pp_addr, sizes))?;
    node_rt.block_on(pp_server).context("ping-pong server panicked")??;
    node_rt.block_on(node.shutdown());
    if args.json {
        println!("{results}");
    } else {
        let names = [
            "put_seq_per_s",
            "get_seq_per_s",
            "put_in_flight_per_s",
            "get_in_flight_per_s",
            "put_batched_per_s",
            "get_many_per_s",
            "tcp_pingpong_seq_per_s",
            "tcp_pingpong_in_flight_per_s",
        ];
        for name in names {
            println!("{name:<28} {:>12.0}", results[name].as_f64().unwrap_or(0.0));
        }
        let ratios =
            ["get_seq_vs_pingpong", "put_seq_vs_pingpong", "get_in_flight_vs_pingpong", "put_in_flight_vs_pingpong"];
        for name in ratios {
            println!("{name:<28} {:>12.2}", results[name].as_f64().unwrap_or(0.0));
        }
        println!("(ping-pong: {}-byte requests, {}-byte replies, as a plaintext get)", sizes.request, sizes.reply);
        println!("({} ops each, {} in flight, {}-byte values)", args.ops, args.in_flight, args.value_size);
    }
    Ok(())
}

/// Frame sizes of a plaintext `get` of a benchmark key and of its reply with
/// a `value_size`-byte value, for request ids around `ops`.
fn get_frame_sizes(ops: u64, value_size: usize) -> Sizes {
    let mut buf = Vec::new();
    let request =
        codec::encode(&Message::Request { id: ops, request: Request::Get { key: key_at(0).to_vec() } }, &mut buf);
    let value = Some(vec![0; value_size].into());
    let reply = codec::encode(&Message::Reply { id: ops, result: Ok(Response::Value(value)) }, &mut buf);
    Sizes { request, reply }
}

/// Starts the node under test on a fresh store.
async fn start_node(args: &ClientArgs, dir: &std::path::Path) -> Result<(Node, SocketAddr, Option<Secret>)> {
    let db = Db::open(dir, Options::default()).context("cannot open the benchmark store")?;
    let secret = args.secret.then(Secret::generate);
    let security = Security { secret: secret.clone(), ..Security::default() };
    let server = ServerOptions { busy_poll: args.busy_poll(), ..ServerOptions::default() };
    let cfg =
        NodeConfig { listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))), security, server, ..NodeConfig::default() };
    let node = Node::start(db, cfg).await.context("cannot start the node")?;
    let addr = node.local_addr().context("node has no address")?;
    Ok((node, addr, secret))
}

async fn measure(
    args: &ClientArgs,
    addr: SocketAddr,
    secret: Option<Secret>,
    pp_addr: SocketAddr,
    sizes: Sizes,
) -> Result<serde_json::Value> {
    let client =
        Client::connect(addr, ClientOptions { secret, busy_poll: args.busy_poll(), ..ClientOptions::default() })
            .await
            .context("cannot connect")?;
    let mut pp = pingpong::Conn::connect(pp_addr, sizes, args.busy_poll()).await?;
    let (ops, size) = (args.ops, args.value_size);
    let value = move |i: u64| {
        let mut v = Vec::with_capacity(size);
        push_value(i, size, &mut v);
        v
    };

    let seq_ops = args.sequential_ops.unwrap_or(ops);
    let c = &client;
    let (put_seq, pp_put_seq) =
        alternating(seq_ops, &mut pp, |i| async move { c.put(key_at(i).to_vec(), value(i)).await.map(|_| ()) }).await?;
    let (get_seq, pp_get_seq) =
        alternating(seq_ops, &mut pp, |i| async move { c.get(key_at(i).to_vec()).await.map(|_| ()) }).await?;
    let pp_seq = 2.0 / (1.0 / pp_put_seq + 1.0 / pp_get_seq);
    let pp_in_flight = ops as f64 / pp.in_flight(ops, args.in_flight).await?.as_secs_f64();
    drop(pp);

    let put_par = in_flight(&client, ops, args.in_flight, move |c, i| {
        let v = value(ops + i);
        async move { c.put(key_at(ops + i).to_vec(), v).await.map(|_| ()) }
    })
    .await?;
    let get_par = in_flight(&client, ops, args.in_flight, move |c, i| async move {
        c.get(key_at(ops + i).to_vec()).await.map(|_| ())
    })
    .await?;
    // Batched: each request carries `batch` operations; `in_flight` tasks.
    let batch = args.batch;
    let requests = ops.div_ceil(batch);
    let put_batched = in_flight(&client, requests, args.in_flight, move |c, r| {
        let ops: Vec<BatchOp> = (r * batch..((r + 1) * batch).min(ops))
            .map(|i| BatchOp::Put { key: key_at(2 * ops + i).to_vec(), value: value(i) })
            .collect();
        async move { c.batch(ops).await.map(|_| ()) }
    })
    .await?
        * batch as f64;
    let get_many = in_flight(&client, requests, args.in_flight, move |c, r| {
        let keys: Vec<Vec<u8>> =
            (r * batch..((r + 1) * batch).min(ops)).map(|i| key_at(2 * ops + i).to_vec()).collect();
        async move { c.get_many(keys).await.map(|_| ()) }
    })
    .await?
        * batch as f64;
    Ok(json!({
        "batch": batch,
        "put_batched_per_s": put_batched,
        "get_many_per_s": get_many,
        "machine": machine::describe(),
        "ops": ops,
        "sequential_ops": seq_ops,
        "in_flight": args.in_flight,
        "value_size": args.value_size,
        "encrypted": args.secret,
        "client_runtime": if args.shared_runtime { "shared with the node" } else { "own, single-threaded" },
        "busy_poll_us": args.busy_poll_us,
        "put_seq_per_s": put_seq,
        "get_seq_per_s": get_seq,
        "put_in_flight_per_s": put_par,
        "get_in_flight_per_s": get_par,
        "tcp_pingpong_request_bytes": sizes.request,
        "tcp_pingpong_reply_bytes": sizes.reply,
        "tcp_pingpong_seq_per_s": pp_seq,
        "tcp_pingpong_in_flight_per_s": pp_in_flight,
        "put_seq_vs_pingpong": put_seq / pp_put_seq,
        "get_seq_vs_pingpong": get_seq / pp_get_seq,
        "put_in_flight_vs_pingpong": put_par / pp_in_flight,
        "get_in_flight_vs_pingpong": get_par / pp_in_flight,
    }))
}

/// Runs `ops` operations one at a time, in chunks alternating with as many
/// sequential ping-pong round trips; returns operations per second and
/// round trips per second.
async fn alternating<F, Fut>(ops: u64, pp: &mut pingpong::Conn, mut op: F) -> Result<(f64, f64)>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = meshkv::client::Result<()>>,
{
    let (mut op_time, mut pp_time) = (Duration::ZERO, Duration::ZERO);
    for start in (0..ops).step_by(CHUNK as usize) {
        let end = (start + CHUNK).min(ops);
        let started = Instant::now();
        for i in start..end {
            op(i).await.context("remote operation failed")?;
        }
        op_time += started.elapsed();
        pp_time += pp.sequential(end - start).await?;
    }
    Ok((ops as f64 / op_time.as_secs_f64(), ops as f64 / pp_time.as_secs_f64()))
}

/// Runs `ops` operations from `tasks` concurrent tasks sharing `client`;
/// returns operations per second.
async fn in_flight<F, Fut>(client: &Client, ops: u64, tasks: u64, op: F) -> Result<f64>
where
    F: Fn(Client, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = meshkv::client::Result<()>> + Send,
{
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let (client, op) = (client.clone(), op.clone());
        set.spawn(async move {
            let mut i = t;
            while i < ops {
                op(client.clone(), i).await?;
                i += tasks;
            }
            Ok::<_, meshkv::client::Error>(())
        });
    }
    while let Some(res) = set.join_next().await {
        res.context("benchmark task panicked")?.context("remote operation failed")?;
    }
    Ok(ops as f64 / started.elapsed().as_secs_f64())
}
