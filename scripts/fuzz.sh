#!/usr/bin/env bash
# Fuzzes the webhook parser and the manifest parser with cargo-fuzz
# (libFuzzer) for SECONDS each (default 30: the short CI run; see
# docs/reliability.md for the long run). A crash leaves its input in
# fuzz/artifacts/<target>/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_EACH="${1:-30}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# cargo-fuzz needs nightly flags (-Z sanitizer); the machine has the
# stable toolchain only, which accepts them with RUSTC_BOOTSTRAP.
export RUSTC_BOOTSTRAP=1
for target in webhook manifest; do
  mkdir -p "corpus/$target"
  echo "== fuzz $target for ${SECONDS_EACH}s"
  log="$(mktemp)"
  if ! cargo fuzz run -O "$target" "corpus/$target" "seeds/$target" -- \
      -max_total_time="$SECONDS_EACH" -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "fuzz $target failed (a crash leaves its input in fuzz/artifacts/$target/)" >&2
    exit 1
  fi
  grep -E "^Done|stat::number_of_executed_units|stat::peak_rss_mb" "$log" || true
  rm -f "$log"
done
