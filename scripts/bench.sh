#!/usr/bin/env bash
# Overhead benchmark (docs/performance.md): builds the release binary and the
# benches/overhead.rs harness in one `cargo build --release`, then runs the harness
# against that binary. The markdown report goes to stdout, progress to stderr.
#   scripts/bench.sh                 # full run (about 35 s of load after the build)
#   BENCH_SECS=1 scripts/bench.sh    # shorter open-loop / concurrency phases
# SWITCHYARD_BIN overrides the binary under test, NGINX_BIN the nginx (default
# /usr/sbin/nginx), SWITCHYARD_LOG the gateway's log filter (default info).
# `cargo bench --bench overhead` runs the same harness (but builds under the bench profile).
set -euo pipefail
cd "$(dirname "$0")/.."

harness=$(cargo build --release --bin switchyard --bench overhead --message-format=json-render-diagnostics \
  | sed -n 's/.*"executable":"\([^"]*\/overhead-[^"]*\)".*/\1/p' | tail -n 1)
if [ -z "$harness" ]; then
  echo "bench.sh: could not find the built overhead harness" >&2
  exit 1
fi
export SWITCHYARD_BIN="${SWITCHYARD_BIN:-$PWD/target/release/switchyard}"
exec "$harness"
