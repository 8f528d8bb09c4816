#!/usr/bin/env bash
# Builds everything and runs every test. As root (as CI runs it) the
# namespace and XDP tests run too; without root they are skipped, loudly.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
if [ "$(id -u)" != 0 ]; then
    echo "WARNING: not root - the XDP and network-namespace tests are skipped" >&2
    export QUIC_XDP_SKIP_PRIVILEGED=1
fi
cargo build --workspace --all-targets --all-features
if cargo clippy --version >/dev/null 2>&1; then
    cargo clippy --workspace --all-targets --all-features -- -D warnings
fi
cargo test --workspace --all-features
