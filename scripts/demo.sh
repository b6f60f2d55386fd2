#!/usr/bin/env bash
# Sets up and runs Alphadome locally with its demo tenant, the Kassangas
# Music Shop, then lets you chat with its bot from the terminal: no Meta
# account needed (replies are captured by a local Graph API stand-in).
# Arguments are passed to `alphadome simulate` (e.g. -m "opening hours?").
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

export DATABASE_URL="${DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/alphadome}"
export NATS_URL="${NATS_URL:-nats://127.0.0.1:4222}"
export ALPHADOME_HTTP_ADDR="${ALPHADOME_HTTP_ADDR:-127.0.0.1:8080}"
export WHATSAPP_GRAPH_URL="${WHATSAPP_GRAPH_URL:-http://127.0.0.1:8089/v24.0}"
export META_APP_SECRET="${META_APP_SECRET:-demo-platform-app-secret}"

cargo build --bin alphadome --locked
bin=target/debug/alphadome

# The master key is generated once and kept out of git.
mkdir -p .alphadome
[ -s .alphadome/master.key ] || "$bin" keys generate > .alphadome/master.key
chmod 600 .alphadome/master.key
export ALPHADOME_MASTER_KEY="${ALPHADOME_MASTER_KEY:-$(cat .alphadome/master.key)}"

psql "${DATABASE_URL%/*}/postgres" -qAtc "SELECT 1 FROM pg_database WHERE datname = 'alphadome'" | grep -q 1 \
  || psql "${DATABASE_URL%/*}/postgres" -qc "CREATE DATABASE alphadome"
"$bin" migrate

# Demo credentials for the demo tenant (the stand-in accepts any token).
export KASSANGAS_WHATSAPP_TOKEN="${KASSANGAS_WHATSAPP_TOKEN:-EAAG-demo-token}"
export KASSANGAS_APP_SECRET="${KASSANGAS_APP_SECRET:-demo-kassangas-app-secret}"
export KASSANGAS_AI_API_KEY="${KASSANGAS_AI_API_KEY:-sk-demo-key}"
export KASSANGAS_VERIFY_TOKEN="${KASSANGAS_VERIFY_TOKEN:-demo-verify-token}"
"$bin" tenant apply -f deploy/tenants/kassangas.yaml >/dev/null
"$bin" tenant activate 254702245555

# A dashboard login for the demo tenant: its password made once, kept
# out of git like the master key.
[ -s .alphadome/demo-password ] || "$bin" keys generate | head -c 20 > .alphadome/demo-password
chmod 600 .alphadome/demo-password
demo_user=owner@kassangas.example
if ! "$bin" user list | grep -q "$demo_user"; then
  "$bin" user add "$demo_user" --role tenant-admin --tenant 254702245555 < .alphadome/demo-password >/dev/null
fi

"$bin" up > .alphadome/alphadome.log 2>&1 &
up=$!
trap 'kill -TERM $up 2>/dev/null; wait $up 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -fs "http://$ALPHADOME_HTTP_ADDR/readyz" >/dev/null 2>&1 && break
  kill -0 $up 2>/dev/null || { cat .alphadome/alphadome.log >&2; exit 1; }
  sleep 0.2
done
port="${ALPHADOME_HTTP_ADDR##*:}"
echo "Alphadome is running (logs: .alphadome/alphadome.log)." >&2
echo "Dashboard: http://localhost:$port/  (sign in as $demo_user, password $(cat .alphadome/demo-password))" >&2
echo "Type a message to the bot; Ctrl-D ends." >&2
"$bin" simulate --tenant 254702245555 --ingress "http://$ALPHADOME_HTTP_ADDR/webhook" "$@"
