#!/usr/bin/env bash
# Installs what Alphadome needs on a Debian/Ubuntu machine and starts
# PostgreSQL and NATS (with JetStream) when they are not running.
# Idempotent: safe to run again. Sourced by demo.sh and test.sh.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

need_apt=()
command -v cc >/dev/null || need_apt+=(build-essential)
command -v pg_ctlcluster >/dev/null || need_apt+=(postgresql)
command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || need_apt+=(nats-server)
command -v curl >/dev/null || need_apt+=(curl ca-certificates)
command -v python3 >/dev/null || need_apt+=(python3 python3-pip)
# The browser tests drive Debian's Chromium through its WebDriver
# (test.sh asks for them; the demo does not need them).
if [ "${ALPHADOME_BROWSER:-0}" = 1 ]; then
  command -v chromium >/dev/null || need_apt+=(chromium)
  command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "setup: installing the Rust toolchain (rustup)" >&2
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! port_open 5432; then
  echo "setup: starting PostgreSQL" >&2
  as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main start
fi
if ! port_open 4222; then
  echo "setup: starting NATS with JetStream" >&2
  NATS_BIN=$(command -v nats-server || echo /usr/sbin/nats-server)
  as_root mkdir -p /var/lib/nats-server
  as_root start-stop-daemon --start --oknodo --background --exec "$NATS_BIN" -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
fi
for _ in $(seq 1 50); do
  port_open 5432 && port_open 4222 && break
  sleep 0.2
done
port_open 5432 || { echo "setup: PostgreSQL is not listening on 127.0.0.1:5432" >&2; exit 1; }
port_open 4222 || { echo "setup: NATS is not listening on 127.0.0.1:4222" >&2; exit 1; }

# A password for TCP logins (Debian's default is md5 over 127.0.0.1); with
# trust authentication it is simply ignored.
if command -v runuser >/dev/null && id postgres >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  runuser -u postgres -- psql -qAtc "ALTER USER postgres PASSWORD 'postgres'" >/dev/null 2>&1 || true
fi
export PGPASSWORD=postgres

# The sentence-embedding model the responder matches meaning with, into a
# cache (scripts/install-model.sh). ALPHADOME_EMBEDDING_MODEL names the
# directory.
export ALPHADOME_EMBEDDING_MODEL="${ALPHADOME_EMBEDDING_MODEL:-$HOME/.cache/alphadome/all-MiniLM-L6-v2}"
sh "$(dirname "${BASH_SOURCE[0]}")/install-model.sh" "$ALPHADOME_EMBEDDING_MODEL"
