#!/usr/bin/env bash
# Builds everything and runs every test. As root (as CI runs it) the
# namespace and XDP tests run too; without root they are skipped, loudly.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
skips=$(mktemp)
if [ "$(id -u)" != 0 ]; then
    echo "WARNING: not root - the XDP and network-namespace tests are skipped" >&2
    export QUIC_XDP_SKIP_PRIVILEGED=1
    # Each skipped test names itself here; they are reported as skipped.
    export QUIC_XDP_SKIP_LOG=$skips
fi
# The Python HTTP/3 clients of the interop tests, in a venv: aioquic, its
# fork qh3, and libcurl's HTTP/3 client through curl_cffi.
venv=target/interop-venv
if ! "$venv/bin/python" -c "import aioquic, qh3, curl_cffi" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "aioquic==1.7.2" "qh3==2.1.0" "curl_cffi==0.17.0"
fi
export QUIC_XDP_PYTHON=$PWD/$venv/bin/python
cargo build --workspace --all-targets --all-features
if cargo clippy --version >/dev/null 2>&1; then
    cargo clippy --workspace --all-targets --all-features -- -D warnings
fi
log=$(mktemp)
trap 'rm -f "$log" "$skips"' EXIT
cargo test --workspace --all-features 2>&1 | tee "$log"
# A short fuzz run of the frame decoder (corpus in datapath/fuzz/corpus).
bash scripts/fuzz.sh "${FUZZ_SECONDS:-20}"
# One closing line for the whole run: every cargo test result, summed;
# tests that skipped themselves (no root) count as skipped, not passed.
skipped=$(sort -u "$skips" | grep -c . || true)
awk -v s="$skipped" '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p - s, f, s }' "$log"
