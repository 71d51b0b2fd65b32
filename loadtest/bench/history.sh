#!/usr/bin/env bash
# History writer benchmark: rows/s into the local Cassandra and CPU per row of `locus history`,
# side by side in one run with the ceiling — a plain loop of prepared inserts through the same
# driver at the same concurrency. Prints numbers; not a pass/fail test.
#
#   loadtest/bench/history.sh [ROWS]     (default 50000; needs `dev/stack up` and
#                                         `cargo build --release -p locus -p locus-loadtest`)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROWS="${1:-50000}"
RUN="hbench$(date +%s)"
PORT=18182
CONCURRENCY=64
export LOCUS_CONFIG=dev/locus.dev.toml
export LOCUS_TOPICS__LOCATIONS="$RUN.locations" LOCUS_TOPICS__DLQ="$RUN.dlq"
export LOCUS_SCYLLA__KEYSPACE="${RUN}_w" LOCUS_HISTORY__GROUP="$RUN" LOCUS_HISTORY__CONCURRENCY=$CONCURRENCY
export LOCUS_HTTP__LISTEN="127.0.0.1:$PORT" LOCUS_LOG__FORMAT=json
TICK=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
metric() { curl -fsS "http://127.0.0.1:$PORT/metrics" | awk -v m="$1" '$1 == m {s += $2} END {print s + 0}'; }

cat > "/tmp/$RUN-topics.yaml" <<YAML
topics:
  - {name: $RUN.locations, partitions: 12, replication_factor: 1, min_insync_replicas: 1, retention_ms: 3600000, cleanup_policy: delete, compression: producer}
  - {name: $RUN.dlq, partitions: 1, replication_factor: 1, min_insync_replicas: 1, retention_ms: 3600000, cleanup_policy: delete, compression: producer}
YAML
LOCUS_TOPICS__FILE="/tmp/$RUN-topics.yaml" ./target/release/locus topics apply >/dev/null
echo "[bench] producing $ROWS fixes"
./target/release/locus-bench produce --topic "$RUN.locations" --count "$ROWS"
./target/release/locus history migrate >/dev/null

./target/release/locus history 2>"/tmp/$RUN-history.log" & HP=$!
until curl -fsS "http://127.0.0.1:$PORT/metrics" >/dev/null 2>&1; do sleep 0.1; done
b0=""
while :; do
  rows=$(metric locus_history_rows_written_total)
  if [[ -z "$b0" && "$rows" -gt 0 ]]; then b0=$(cpu $HP); r0=$rows; start=$(date +%s.%N); fi
  [[ -n "$b0" ]] && printf '[bench] rows %s / %s\n' "$rows" "$ROWS"
  [[ "$rows" -ge "$ROWS" ]] && break
  sleep 0.5
done
end=$(date +%s.%N); b1=$(cpu $HP)
kill -TERM $HP; wait $HP || true
python3 - "$start" "$end" "$((rows - r0))" "$((b1 - b0))" "$TICK" <<'PY'
import sys
start, end, rows, cpu, tick = (float(x) for x in sys.argv[1:])
wall = end - start
print(f"[bench] locus history: {rows:.0f} rows in {wall:.2f} s = {rows / wall:,.0f} rows/s, CPU {1e6 * cpu / tick / rows:.1f} µs/row ({100 * cpu / tick / wall:.0f}% of a core)")
PY
./target/release/locus-bench cql-ceiling --count "$ROWS" --concurrency $CONCURRENCY --keyspace "${RUN}_c"
