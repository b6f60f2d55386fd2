#!/usr/bin/env bash
# Runs the whole test suite against the real PostgreSQL and NATS
# (installed and started by setup.sh when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
ALPHADOME_BROWSER=1
source scripts/setup.sh

export ALPHADOME_TEST_DATABASE_URL="${ALPHADOME_TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
export ALPHADOME_TEST_NATS_URL="${ALPHADOME_TEST_NATS_URL:-nats://127.0.0.1:4222}"

# Databases left behind by an interrupted earlier run.
psql "$ALPHADOME_TEST_DATABASE_URL" -qAtc \
  "SELECT 'DROP DATABASE IF EXISTS ' || datname || ' WITH (FORCE);' FROM pg_database WHERE datname LIKE 'alphadome\_t\_%'" \
  | psql "$ALPHADOME_TEST_DATABASE_URL" -q >/dev/null 2>&1 || true

# The process tests and the benchmarks' smoke run use the real binaries.
cargo build --workspace --bins --locked
if [ "$#" -gt 0 ]; then
  cargo test --workspace --locked "$@"
  exit
fi
# Everything but the fault-injection suite (its one test is named
# fault_injection_*; no other test name contains that).
cargo test --workspace --locked --lib --bins --tests -- --skip fault_injection_
# The criterion benchmarks, each run once as a test.
cargo test -p alphadome-bench --benches --locked
# The fault-injection suite, with its per-fault counts printed.
cargo test -p alphadome-tests --test faults --locked -- --nocapture
# Every benchmark, small, checking that nothing is lost or doubled.
target/debug/alphadome-bench --smoke all
