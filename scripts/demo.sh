#!/usr/bin/env bash
# The main job: the QUIC echo server (examples/echo_server.rs) on quic-xdp
# over XDP in one network namespace, loaded by the echo client (quinn on
# kernel UDP) from another, over IPv4 and IPv6; then the server's mode and
# counters. Without root (no namespaces, no XDP) the same server runs over
# kernel UDP on loopback and says why.
#
#   sudo scripts/demo.sh        # SIZE=4000000 STREAMS=16 CONNECTIONS=4 to vary the load,
#                               # SERVER_ARGS="--ring-size 4096" for the server
#                               # (split on spaces: no quoted values)
set -euo pipefail
cd "$(dirname "$0")/.."
connections=${CONNECTIONS:-4}
streams=${STREAMS:-8}
size=${SIZE:-4000000}
read -r -a server_args <<<"${SERVER_ARGS:-}"

bash scripts/install-deps.sh
cargo build --release -q -p quic-xdp-examples
bin=$PWD/target/release
work=$(mktemp -d)
server_pid=
namespaces=()
cleanup() {
    # Under set -e: a server that already exited must not stop the cleanup.
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    for ns in "${namespaces[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

wait_listening() {
    for _ in $(seq 100); do grep -q '^listening' "$work/server.log" && return; sleep 0.1; done
    cat "$work/server.log"
    exit 1
}

load() { # load [netns] server-address
    local run=()
    [ "$1" != - ] && run=(ip netns exec "$1")
    "${run[@]}" "$bin/echo-client" "$2" --ca "$work/ca.pem" \
        --connections "$connections" --streams "$streams" --size "$size" --datagrams 10
}

if [ "$(id -u)" = 0 ] && ip netns add "qxd-probe-$$" 2>/dev/null; then
    ip netns del "qxd-probe-$$"
    client=qxd-$$-c server=qxd-$$-s
    namespaces=("$client" "$server")
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

    ip netns exec "$server" "$bin/echo-server" --interface veth-s --mode xdp \
        --ca-out "$work/ca.pem" "${server_args[@]}" >"$work/server.log" 2>&1 &
    server_pid=$!
    wait_listening
    grep -E '^(mode|listening)' "$work/server.log"
    echo "== IPv4: $connections connections x $streams streams x $size bytes"
    load "$client" 10.77.0.2:4433
    echo "== IPv6"
    load "$client" '[fd77::2]:4433'
    echo "== ping while the XDP program is attached"
    ip netns exec "$client" ping -c 1 -W 2 10.77.0.2 | grep received
else
    echo "XDP needs root and network namespaces: running the echo server over kernel UDP on loopback"
    "$bin/echo-server" --address 127.0.0.1 --ca-out "$work/ca.pem" "${server_args[@]}" \
        >"$work/server.log" 2>&1 &
    server_pid=$!
    wait_listening
    grep -E '^(mode|listening)' "$work/server.log"
    load - 127.0.0.1:4433
fi
kill -INT "$server_pid"
wait "$server_pid" || true
server_pid=
echo "== server"
grep -vE '^(mode|listening|no --cert)| (INFO|WARN) ' "$work/server.log"
