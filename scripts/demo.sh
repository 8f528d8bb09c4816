#!/usr/bin/env bash
# The main job: a UDP echo served through the XDP datapath in one network
# namespace, loaded by a client in another (IPv4 and IPv6), then the
# server's mode and counters. Without root (no namespaces, no XDP) it runs
# the same echo over kernel UDP on loopback and says so.
#
#   sudo scripts/demo.sh            # DURATION=10 for a longer load
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${DURATION:-5}

bash scripts/install-deps.sh
cargo build --release -q -p quic-xdp-datapath --features testbed --bins
bin=$PWD/target/release
log=$(mktemp)
server_pid=

if [ "$(id -u)" = 0 ] && ip netns add "qxd-probe-$$" 2>/dev/null; then
    ip netns del "qxd-probe-$$"
    client=qxd-$$-c server=qxd-$$-s
    cleanup() {
        [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
        ip netns del "$client" 2>/dev/null || true
        ip netns del "$server" 2>/dev/null || true
        rm -f "$log"
    }
    trap cleanup EXIT
    ip netns add "$client"
    ip netns add "$server"
    ip link add veth-c netns "$client" address 02:77:00:00:00:01 type veth \
        peer name veth-s netns "$server" address 02:77:00:00:00:02
    for ns in "$client" "$server"; do ip -n "$ns" link set lo up; done
    ip -n "$client" addr add 10.77.0.1/24 dev veth-c
    ip -n "$client" addr add fd77::1/64 dev veth-c nodad
    ip -n "$server" addr add 10.77.0.2/24 dev veth-s
    ip -n "$server" addr add fd77::2/64 dev veth-s nodad
    ip -n "$client" link set veth-c up
    ip -n "$server" link set veth-s up

    ip netns exec "$server" "$bin/xdp-udp-echo" --interface veth-s --listen '[::]:4433' >"$log" 2>&1 &
    server_pid=$!
    for _ in $(seq 50); do grep -q '^listening' "$log" && break; sleep 0.1; done
    grep -q '^listening' "$log" || { cat "$log"; exit 1; }
    grep -E '^(mode|listening)' "$log"
    echo "== IPv4, 1200-byte datagrams, ${duration}s"
    ip netns exec "$client" "$bin/udp-echo-load" 10.77.0.2:4433 --duration "$duration" --size 1200
    echo "== IPv6, 64-byte datagrams, ${duration}s"
    ip netns exec "$client" "$bin/udp-echo-load" '[fd77::2]:4433' --duration "$duration" --size 64
    echo "== ping while the program is attached"
    ip netns exec "$client" ping -c 1 -W 2 10.77.0.2 | grep -E 'received'
else
    echo "XDP needs root and network namespaces: serving the echo over kernel UDP on loopback"
    cleanup() {
        [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
        rm -f "$log"
    }
    trap cleanup EXIT
    "$bin/xdp-udp-echo" --listen 127.0.0.1:4433 >"$log" 2>&1 &
    server_pid=$!
    for _ in $(seq 50); do grep -q '^listening' "$log" && break; sleep 0.1; done
    grep -q '^listening' "$log" || { cat "$log"; exit 1; }
    grep '^mode' "$log"
    "$bin/udp-echo-load" 127.0.0.1:4433 --duration "$duration" --size 1200
fi
kill -INT "$server_pid"
wait "$server_pid" || true
server_pid=
echo "== server"
grep -v '^\(mode\|listening\)' "$log" | grep -v ' INFO '
