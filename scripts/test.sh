#!/usr/bin/env bash
# The project's test command (README "Quick start"): Rust unit and integration tests, then
# the openai-SDK tests against the real binary. Prints one summary line at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p target

cargo build --bins || { echo "0 passed, 1 failed"; exit 1; }

cargo test --lib --bins --tests 2>&1 | tee target/cargo-test.log
cargo_rc=${PIPESTATUS[0]}

SWITCHYARD_BIN="$PWD/target/debug/switchyard" python3 -m pytest -q tests/python 2>&1 | tee target/pytest.log
py_rc=${PIPESTATUS[0]}

passed=$(grep -hoE 'test result: [a-zA-Z]+\. [0-9]+ passed' target/cargo-test.log | grep -oE '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -hoE '[0-9]+ failed' target/cargo-test.log | awk '{s+=$1} END {print s+0}')
py_passed=$(grep -oE '[0-9]+ passed' target/pytest.log | tail -1 | awk '{print $1+0}')
py_failed=$(grep -oE '[0-9]+ (failed|error)' target/pytest.log | awk '{s+=$1} END {print s+0}')
total_passed=$((passed + ${py_passed:-0}))
total_failed=$((failed + ${py_failed:-0}))
if [ "$cargo_rc" -ne 0 ] || [ "$py_rc" -ne 0 ]; then
  [ "$total_failed" -eq 0 ] && total_failed=1
fi
echo "tests: $total_passed passed, $total_failed failed"
[ "$total_failed" -eq 0 ]
