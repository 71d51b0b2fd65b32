#!/usr/bin/env bash
# Soak check of a running `make demo`: every 10 s asks /readyz, every minute prints the
# broker's CPU over that minute, the records in `locations` and how many readiness checks
# failed. Ctrl-C (or SOAK_MINUTES) ends it with a summary. Not a pass/fail test.
#
#   loadtest/bench/soak.sh                 (SOAK_MINUTES [120], LOCUS_CONFIG [dev/locus.dev.toml])
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export LOCUS_CONFIG="${LOCUS_CONFIG:-dev/locus.dev.toml}"
LOCUS=target/release/locus
[[ -x $LOCUS ]] || LOCUS=target/debug/locus
LISTEN="$($LOCUS config check | awk -F'"' '/^listen = /{print $2; exit}')"
KAFKA_PID="$(cat .stack/run/kafka.pid)"
MINUTES="${SOAK_MINUTES:-120}"
ticks() { awk '{print $14 + $15}' "/proc/$KAFKA_PID/stat"; }
metric() { curl -fsS "http://$LISTEN/metrics" | awk -v m="$1" '$1 == m {v = $2} END {print v}'; }

failed=0 checks=0 first_cpu="" last_cpu=""
echo "# soak: $MINUTES min against http://$LISTEN, broker pid $KAFKA_PID"
for minute in $(seq 1 "$MINUTES"); do
  t0=$(ticks)
  for _ in 1 2 3 4 5 6; do
    checks=$((checks + 1))
    curl -fsS -m 5 "http://$LISTEN/readyz" >/dev/null 2>&1 || failed=$((failed + 1))
    sleep 10
  done
  cpu=$(( $(ticks) - t0 ))
  [[ -n $first_cpu ]] || first_cpu=$cpu
  last_cpu=$cpu
  printf '%s minute %3d: broker CPU %5.1f%%, produced %s, history %s, readyz failures %d/%d\n' \
    "$(date -u +%H:%M:%S)" "$minute" "$(echo "$cpu / 60" | bc -l)" \
    "$(metric locus_bridge_fixes_produced_total)" "$(metric locus_history_rows_written_total)" \
    "$failed" "$checks"
done
printf 'soak: %d minutes, readyz failed %d of %d checks, broker CPU first minute %.1f%%, last %.1f%%\n' \
  "$MINUTES" "$failed" "$checks" "$(echo "$first_cpu / 60" | bc -l)" "$(echo "$last_cpu / 60" | bc -l)"
