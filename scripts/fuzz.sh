#!/usr/bin/env bash
# Short fuzz runs of every cargo-fuzz target (default 20 s each), starting
# from the corpora kept in the repo. Uses nightly when installed, else the
# stable compiler with RUSTC_BOOTSTRAP=1 (cargo-fuzz needs -Z flags).
#
#   scripts/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
toolchain=()
if cargo +nightly --version >/dev/null 2>&1; then
    toolchain=(+nightly)
else
    export RUSTC_BOOTSTRAP=1
fi
for crate in datapath quic-xdp; do
    for target in $(cd "$crate" && cargo "${toolchain[@]}" fuzz list); do
        echo "== fuzzing $crate/$target for ${seconds}s"
        (cd "$crate" && cargo "${toolchain[@]}" fuzz run "$target" -- -max_total_time="$seconds")
    done
done
