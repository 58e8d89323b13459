//! `status`: a node's identity, counters and peers, as a table or JSON.

use super::{client_command, remote, Target};
use clap::Args;
use meshkv::protocol::Status;
use serde_json::json;
use std::io::Write;
use std::process::ExitCode;

/// `meshkv status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// One JSON object.
    #[arg(long)]
    json: bool,
}

/// `meshkv status`.
pub fn status(args: StatusArgs, target: Target) -> ExitCode {
    client_command(target, |client| async move {
        let status = client.status().await.map_err(remote)?;
        let mut out = std::io::stdout().lock();
        if args.json {
            writeln!(out, "{}", status_json(&status))?;
        } else {
            out.write_all(status_table(&status).as_bytes())?;
        }
        out.flush()?;
        Ok(ExitCode::SUCCESS)
    })
}

fn status_json(s: &Status) -> serde_json::Value {
    let vv: serde_json::Map<String, serde_json::Value> =
        s.version_vector.iter().map(|(node, seq)| (node.to_string(), json!(seq))).collect();
    let peers: Vec<_> = s
        .peers
        .iter()
        .map(|p| {
            json!({
                "addr": p.addr,
                "node_id": p.node_id.map(|n| n.to_string()),
                "state": p.state,
                "lag": p.lag,
                "sync": p.sync.map(|(applied, at_most)| json!({ "applied": applied, "at_most": at_most })),
            })
        })
        .collect();
    json!({
        "node_id": s.node_id.to_string(),
        "cluster": s.cluster,
        "listen": s.listen,
        "version_vector": vv,
        "keys": s.keys,
        "conflicts": s.conflicts,
        "peers": peers,
    })
}

fn status_table(s: &Status) -> String {
    use std::fmt::Write as _;
    let mut t = String::new();
    let _ = writeln!(t, "node       {}", s.node_id);
    let _ = writeln!(t, "listen     {}", s.listen.as_deref().unwrap_or("-"));
    let _ = writeln!(t, "keys       {}", s.keys);
    let _ = writeln!(t, "conflicts  {}", s.conflicts);
    let _ = writeln!(t, "writes     {} (version vector {})", s.version_vector.total(), s.version_vector);
    if s.peers.is_empty() {
        let _ = writeln!(t, "peers      none connected");
    } else {
        let _ = writeln!(t, "peers      {}", s.peers.len());
        let _ = writeln!(t, "  {:<24} {:<16}  {:<10} {:>8}  INITIAL SYNC", "ADDR", "NODE", "STATE", "LAG");
        for p in &s.peers {
            let id = p.node_id.map_or_else(|| "-".into(), |n| n.to_string());
            let sync =
                p.sync.map_or_else(|| "-".into(), |(applied, at_most)| format!("{applied} of at most {at_most}"));
            let _ = writeln!(t, "  {:<24} {:<16}  {:<10} {:>8}  {sync}", p.addr, id, p.state, p.lag);
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshkv::protocol::PeerInfo;
    use meshkv::{NodeId, VersionVector};

    fn sample() -> Status {
        Status {
            node_id: NodeId(0xab),
            cluster: "meshkv".into(),
            listen: Some("127.0.0.1:7420".into()),
            version_vector: [(NodeId(0xab), 3), (NodeId(0xcd), 2)].into_iter().collect::<VersionVector>(),
            keys: 4,
            conflicts: 1,
            peers: vec![PeerInfo {
                addr: "127.0.0.1:7421".into(),
                node_id: Some(NodeId(0xcd)),
                state: "connected".into(),
                lag: 0,
                sync: Some((10, 20)),
            }],
        }
    }

    #[test]
    fn status_json_has_the_documented_fields() {
        let v = status_json(&sample());
        assert_eq!(v["node_id"], "00000000000000ab");
        assert_eq!(v["listen"], "127.0.0.1:7420");
        assert_eq!(v["version_vector"]["00000000000000cd"], 2);
        assert_eq!(v["keys"], 4);
        assert_eq!(v["peers"][0]["addr"], "127.0.0.1:7421");
        assert_eq!(v["peers"][0]["node_id"], "00000000000000cd");
        assert_eq!(v["peers"][0]["state"], "connected");
        assert_eq!(v["peers"][0]["lag"], 0);
        assert_eq!(v["peers"][0]["sync"], json!({ "applied": 10, "at_most": 20 }));
    }

    #[test]
    fn status_table_lists_peers() {
        let t = status_table(&sample());
        assert!(t.contains("00000000000000ab"), "{t}");
        assert!(t.contains("127.0.0.1:7421"), "{t}");
        assert!(t.contains("connected") && t.contains("10 of at most 20"), "{t}");
    }
}
