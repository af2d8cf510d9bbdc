#!/usr/bin/env bash
# Run every cargo-fuzz target for a bounded time and summarise the runs
# (executions, coverage, crashes) as a Markdown table. See README.md.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET ...]     (default 60 s, all targets)
#
# Needs cargo-fuzz (installed here if missing) and a Rust toolchain; only a
# stable toolchain is assumed, so cargo-fuzz's nightly flags are unlocked
# with RUSTC_BOOTSTRAP=1. Each input has a 2 s budget (libFuzzer -timeout):
# a slower input is a crash. Exits non-zero if any target found a crash.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
shift || true
if ! command -v cargo-fuzz >/dev/null; then
  cargo install cargo-fuzz --version 0.13.1 --locked
fi
export RUSTC_BOOTSTRAP=1
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi
mkdir -p logs
# Seeds: a ChannelData frame; for the server driver, programs that start
# with allocations (step 1) and go on with every kind of step.
mkdir -p corpus/channel_data corpus/server
printf '\x40\x01\x00\x05hello\x00\x00\x00' > corpus/channel_data/seed-channel-data
printf '\x01\x00\x00\x03\x03\x01\x02\x00\x00\x00\x05\x00\x00\x00\x03\x00\x00\x01\x05\x00\x00\x04\x04\x06\x00\x00\x00\x10\x07\x00\x05\x04\x00\x00\x01\x00\x08\x00\x01\x00\x00\x05\x01\x02' > corpus/server/seed-allocate-permit-send
printf '\x01\x00\x02\x03\x03\x01\x01\x04\x00\x03\x03\x01\x03\x00\x00\x40\x00\x07\x00\x90\x04\x00\x00\x00\x00' > corpus/server/seed-rest-expiry
echo "| Target | Time (s) | Runs | Coverage (cov / ft) | Crashes |"
echo "| --- | ---: | ---: | ---: | ---: |"
failed=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  status=0
  cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -timeout=2 \
    -rss_limit_mb=2048 -print_final_stats=1 >"logs/$t.log" 2>&1 || status=$?
  runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "logs/$t.log" | grep -oE '[0-9]+$' | tail -1)
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "logs/$t.log" | tail -1 | sed -E 's/cov: ([0-9]+) ft: ([0-9]+)/\1 \/ \2/')
  crashes=$(find "artifacts/$t" -type f 2>/dev/null | wc -l)
  [ "$status" -eq 0 ] || failed=1
  echo "| \`$t\` | $secs | ${runs:-?} | ${cov:-?} | $crashes |"
done
if [ "$failed" -ne 0 ]; then
  echo "a target failed: see fuzz/logs/ and fuzz/artifacts/" >&2
  exit 1
fi
