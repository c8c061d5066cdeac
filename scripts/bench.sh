#!/usr/bin/env bash
# Side-by-side load comparison of oxcd and the real etcd 3.5 on this machine, in one run: builds the
# release binaries, then runs scripts/bench.py (see its --help). Extra arguments go to bench.py.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --bins
target_dir="${CARGO_TARGET_DIR:-target}"
exec python3 scripts/bench.py --bin-dir "$target_dir/release" "$@"
