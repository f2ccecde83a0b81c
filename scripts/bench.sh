#!/usr/bin/env bash
# Overhead benchmark (docs/performance.md): builds the release binary, then runs
# benches/overhead.rs against it. The markdown table goes to stdout, progress to stderr.
#   scripts/bench.sh                 # full run (about a minute)
#   BENCH_SECS=1 scripts/bench.sh    # shorter load phases
# SWITCHYARD_BIN overrides the binary under test; NGINX_BIN the nginx (default /usr/sbin/nginx).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --bin switchyard >&2
export SWITCHYARD_BIN="${SWITCHYARD_BIN:-$PWD/target/release/switchyard}"
exec cargo bench --bench overhead
