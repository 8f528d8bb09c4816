#!/usr/bin/env bash
# Installs the Debian packages quic-xdp needs to build and test:
# clang/llvm and libbpf headers for the XDP program, libelf/zlib/libpcap/m4
# for the libxdp that xsk-rs builds from source, iproute2/ping/ethtool/nft
# for the namespace tests (nft injects faults) and the demo; ngtcp2-client
# and python3-venv for the HTTP/3 interop tests (aioquic comes from PyPI
# into a venv, see test.sh); curl scrapes metrics inside a namespace;
# chromium (headless) is the browser of the browser tests.
set -euo pipefail

packages=(clang llvm m4 pkg-config libelf-dev zlib1g-dev libpcap-dev libbpf-dev
          iproute2 iputils-ping ethtool nftables ngtcp2-client python3-venv curl chromium)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "missing packages: ${missing[*]} - run as root, or: sudo apt-get install ${missing[*]}" >&2
        exit 1
    fi
    echo "installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
    echo "cargo not found: install Rust 1.85 or newer (rustup), then run this again" >&2
    exit 1
fi
