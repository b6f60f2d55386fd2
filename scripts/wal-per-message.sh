#!/usr/bin/env bash
# Counts what PostgreSQL writes to its WAL per message during a pipeline
# benchmark, by record type and by relation: a measure of the database's
# work that, unlike time, comes out the same run after run on a noisy
# machine (docs/benchmarks.md). For the same window it also
# prints the machine's CPU time per message, split by process with each
# process's context switches per message, and, from pg_stat_statements,
# the statements run per message with their execution time (which on a
# busy machine includes waiting for a core).
#
#   bash scripts/wal-per-message.sh                          # pipeline --rate 1000
#   bash scripts/wal-per-message.sh --rate 400 --statuses 3 --messages 12000
#
# Starts a PostgreSQL 15 cluster of its own (initdb in a temporary
# directory, a free port) so that its WAL holds nothing but the benchmark,
# runs `scripts/bench.sh pipeline <arguments>` against it, copies the WAL
# of WAL_SECONDS (default 10) seconds starting WAL_START (default 8)
# seconds after the benchmark's database appears, and prints the records
# per admitted message (one `rate_limit_events` index entry each).
# Removes the cluster after.
set -euo pipefail
cd "$(dirname "$0")/.."

pgbin=${ALPHADOME_PG_BIN:-/usr/lib/postgresql/15/bin}
start=${WAL_START:-8}
seconds=${WAL_SECONDS:-10}
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--rate 1000)

dir=$(mktemp -d -t alphadome-wal.XXXXXX)
as_owner=()
if [ "$(id -u)" = 0 ]; then
  # initdb refuses to run as root; the cluster belongs to postgres.
  chown postgres "$dir"
  as_owner=(runuser -u postgres --)
fi
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"${as_owner[@]}" "$pgbin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >/dev/null
"${as_owner[@]}" "$pgbin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
  -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all" \
  start >/dev/null
stop_pg() {
  local rc=$?
  "${as_owner[@]}" "$pgbin/pg_ctl" -D "$dir/data" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$dir"
  exit "$rc"
}
trap stop_pg EXIT

q() { psql -h 127.0.0.1 -p "$port" -U postgres -Atc "$1" "${2:-postgres}"; }
mkdir "$dir/wal"
q "CREATE EXTENSION pg_stat_statements" >/dev/null
busy() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
# Every thread on the machine: id, its process's name, CPU ticks (user and
# system) and context switches (voluntary and not) so far.
threads() {
  python3 - <<'PY'
import glob
for task in glob.glob("/proc/[0-9]*/task/[0-9]*"):
    try:
        pid = task.split("/")[2]
        name = open("/proc/%s/comm" % pid).read().strip() or "?"
        stat = open(task + "/stat").read()
        fields = stat[stat.rindex(")") + 2:].split()
        switches = sum(int(l.split()[1]) for l in open(task + "/status")
                       if l.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")))
    except (OSError, ValueError, IndexError):
        continue
    print("%s\t%s\t%d\t%d" % (task, name, int(fields[11]) + int(fields[12]), switches))
PY
}
cargo build --release --workspace --bins
newest="SELECT datname FROM pg_database WHERE datname NOT IN ('postgres', 'template0', 'template1') ORDER BY oid DESC LIMIT 1"
(
  until [ -n "$(q "$newest")" ]; do sleep 0.2; done
  sleep "$start"
  q "SELECT pg_current_wal_lsn()" > "$dir/from"
  q "SELECT pg_stat_statements_reset()" >/dev/null
  busy > "$dir/busy_from"
  threads > "$dir/threads_from"
  db=$(q "$newest")
  q "SELECT c.relfilenode, n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relfilenode <> 0" "$db" > "$dir/relations"
  sleep "$seconds"
  q "SELECT pg_current_wal_lsn()" > "$dir/to"
  busy > "$dir/busy_to"
  threads > "$dir/threads_to"
  q "SELECT calls, total_exec_time, regexp_replace(query, '\s+', ' ', 'g') FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = '$db') ORDER BY total_exec_time DESC LIMIT 16" > "$dir/statements"
  cp "$dir"/data/pg_wal/0000* "$dir/wal/"
) &
sampler=$!
ALPHADOME_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres" bash scripts/bench.sh pipeline "${args[@]}"
wait "$sampler"

"$pgbin/pg_waldump" -p "$dir/wal" -s "$(cat "$dir/from")" -e "$(cat "$dir/to")" 2>/dev/null > "$dir/records"
ticks=$(( $(cat "$dir/busy_to") - $(cat "$dir/busy_from") ))
python3 - "$dir/relations" "$dir/records" "$seconds" "$dir/statements" "$ticks" "$(getconf CLK_TCK)" \
  "$dir/threads_from" "$dir/threads_to" <<'PY'
import collections, re, sys
relations = dict(l.rstrip("\n").split("|", 1) for l in open(sys.argv[1]) if "|" in l)
kinds, locks, entries, changes = (collections.Counter() for _ in range(4))
size = 0
for line in open(sys.argv[2]):
    m = re.match(r"rmgr: (\S+)\s+len \(rec/tot\):\s+\d+/\s*(\d+),.*desc: (\S+)", line)
    if not m:
        continue
    kind = m.group(1) + "/" + m.group(3)
    kinds[kind] += 1
    size += int(m.group(2))
    r = re.search(r"rel \d+/\d+/(\d+)", line)
    rel = relations.get(r.group(1), r.group(1)) if r else "-"
    if kind == "Heap/LOCK":
        locks[rel] += 1
    elif kind == "Btree/INSERT_LEAF":
        entries[rel] += 1
    elif kind in ("Heap/UPDATE", "Heap/HOT_UPDATE", "Heap/INSERT", "Heap/HEAP_CONFIRM"):
        changes[kind.split("/")[1] + " " + rel] += 1
n = entries.get("alphadome.rate_limit_events_pkey", 0)
if n == 0:
    sys.exit("no message was admitted in the window: start it later (WAL_START) or run longer")
per = lambda c: "%.2f" % (c / n)
print("# WAL over %s s: %d messages admitted, %d records: %.1f records and %.0f bytes per message"
      % (sys.argv[3], n, sum(kinds.values()), sum(kinds.values()) / n, size / n))
print("records per message by type:")
for k, c in kinds.most_common(14):
    print("  %-26s %s" % (k, per(c)))
print("row locks per message by table:", ", ".join("%s %s" % (k, per(c)) for k, c in locks.most_common(8)))
print("index entries per message by index:", ", ".join("%s %s" % (k, per(c)) for k, c in entries.most_common(16)))
print("row changes per message:", ", ".join("%s %s" % (k, per(c)) for k, c in changes.most_common(16)))
tick_us = 1e6 / int(sys.argv[6])
print("machine CPU per message (every process): %.0f us" % (int(sys.argv[5]) * tick_us / n))
def threads(path):
    rows = (l.rstrip("\n").split("\t") for l in open(path))
    return {r[0]: (r[1], int(r[2]), int(r[3])) for r in rows if len(r) == 4}
before, after = threads(sys.argv[7]), threads(sys.argv[8])
by_process = collections.defaultdict(lambda: [0, 0])
for task, (name, ticks, switches) in after.items():
    _, ticks0, switches0 = before.get(task, (name, 0, 0))
    by_process[name][0] += ticks - ticks0
    by_process[name][1] += switches - switches0
print("by process (CPU us and context switches per message; threads that began in the window count whole):")
for name, (ticks, switches) in sorted(by_process.items(), key=lambda kv: -kv[1][0])[:8]:
    print("  %-18s %7.0f us %6.1f switches" % (name, ticks * tick_us / n, switches / n))
print("statements by execution time (calls and ms per message; nested statements are counted in their callers too):")
for line in open(sys.argv[4]):
    calls, ms, query = line.rstrip("\n").split("|", 2)
    print("  %5.2f %7.3f  %s" % (int(calls) / n, float(ms) / n, query[:110]))
PY
