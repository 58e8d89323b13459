#!/usr/bin/env bash
# LAN discovery end to end, over real UDP multicast between two hosts.
#
# The tests in crates/meshkv/tests/discovery.rs send nothing beyond
# 127.0.0.1, so they cannot show that announcements cross a network. This
# script makes two network namespaces joined by a veth pair (a two-host LAN
# inside this machine, nothing leaves it), starts one node in each with
# `--discovery` and no `--peer`, and checks that they find each other, link,
# and replicate a write. It needs root (or CAP_NET_ADMIN) and iproute2.
#
#   cargo build --release -p meshkv-cli
#   sudo scripts/lan-discovery.sh [path/to/meshkv]
#
# Exits 0 when the write made on one host is read on the other.
set -euo pipefail

BIN=$(realpath "${1:-target/release/meshkv}")
[[ -x $BIN ]] || { echo "no meshkv binary at $BIN (build it, or pass its path)" >&2; exit 2; }
A=mkv-lan-a
B=mkv-lan-b
WORK=$(mktemp -d)
PIDS=()

cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns del "$A" 2>/dev/null || true
    ip netns del "$B" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

ip netns add "$A"
ip netns add "$B"
ip link add mkv-va netns "$A" type veth peer name mkv-vb netns "$B"
for ns in "$A" "$B"; do ip -n "$ns" link set lo up; done
ip -n "$A" addr add 10.77.0.1/24 dev mkv-va
ip -n "$B" addr add 10.77.0.2/24 dev mkv-vb
ip -n "$A" link set mkv-va up
ip -n "$B" link set mkv-vb up
# Hosts on a LAN have a default route, which multicast follows; these have
# only the link, so multicast is routed onto it explicitly.
ip -n "$A" route add 224.0.0.0/4 dev mkv-va
ip -n "$B" route add 224.0.0.0/4 dev mkv-vb

"$BIN" secret --out "$WORK/secret" >/dev/null
export MESHKV_SECRET_FILE=$WORK/secret
start() { # namespace, address, name
    ip netns exec "$1" "$BIN" serve --data "$WORK/$3" --listen "$2:7420" --discovery \
        >"$WORK/$3.log" 2>&1 &
    PIDS+=($!)
}
start "$A" 10.77.0.1 a
start "$B" 10.77.0.2 b

in_a() { ip netns exec "$A" "$BIN" --node 10.77.0.1:7420 "$@"; }
in_b() { ip netns exec "$B" "$BIN" --node 10.77.0.2:7420 "$@"; }

# Announcements go out every 5 s (±20 %); allow a few rounds.
deadline=$((SECONDS + 30))
until in_a status --json 2>/dev/null | grep -q '"state":"live"'; do
    if ((SECONDS > deadline)); then
        echo "FAIL: the nodes did not find each other in 30 s" >&2
        tail -n 20 "$WORK/a.log" "$WORK/b.log" >&2
        exit 1
    fi
    sleep 0.5
done
echo "linked by discovery:"
in_a status

in_a put lan-greeting "hello across the veth"
deadline=$((SECONDS + 10))
until [[ $(in_b get lan-greeting 2>/dev/null) == "hello across the veth" ]]; do
    if ((SECONDS > deadline)); then
        echo "FAIL: the write made on A did not reach B" >&2
        exit 1
    fi
    sleep 0.2
done
echo "PASS: B (10.77.0.2) reads the write made on A (10.77.0.1); neither was given a --peer"
