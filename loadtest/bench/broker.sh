#!/usr/bin/env bash
# Broker benchmark: what the local Kafka (tansu) costs Locus, for one or more tansu builds
# measured alternately in one series. Prints numbers; not a pass/fail test.
#
#   loadtest/bench/broker.sh [TANSU_BIN...]     (default: the current dev/tansu build; needs
#                                                `cargo build --release -p locus-loadtest`)
#   ROUNDS=2 FILL=200000 SECONDS_PER_RATE=15 RATES=50,1000,5000 CATCHUP_MAX_S=120
#                   (FILL=0: rates only)
#   HEADERS="4 1"   headers per record, each count measured in turn within a round (default 1:
#                   the bridge's `locus-tenant`; 4: the bridge's headers before 2026-11-30)
#   PARTITIONS="48 12"  partitions of the topic, each count measured in turn within a round
#                   (default 48, the declaration; the local stack caps it at 12)
#
# Each round, for each build in turn, on a fresh sqlite store of its own:
#   1. rates: bridge-shaped records (key, Avro-sized value, HEADERS headers) produced
#      at each rate for SECONDS_PER_RATE with the four Locus readers (three consumer groups
#      and a reader that assigns itself every partition): broker CPU µs per fix (from /proc),
#      produce → consume latency p50/p99;
#   2. fill: FILL records as fast as the broker takes them;
#   3. catch-up: a new reader from offset 0 to the end, its rate per tenth of the log
#      (stopped after CATCHUP_MAX_S, reported as incomplete).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
BENCH=target/release/locus-broker-bench
[[ -x $BENCH ]] || { echo "build first: cargo build --release -p locus-loadtest" >&2; exit 1; }
BINS=("$@")
((${#BINS[@]})) || BINS=("$(bash dev/tansu/build.sh --path)")
ROUNDS="${ROUNDS:-2}"
FILL="${FILL:-200000}"
RATES="${RATES:-50,1000,5000}"
SECS="${SECONDS_PER_RATE:-15}"
CATCHUP_MAX_S="${CATCHUP_MAX_S:-120}"
HEADERS="${HEADERS:-1}"
PARTITIONS="${PARTITIONS:-48}"
PORT="${BROKER_BENCH_PORT:-19192}"
RUN="broker-bench-$$"
PID=""
trap '[[ -n "$PID" ]] && kill "$PID" 2>/dev/null; rm -rf "/tmp/$RUN".*' EXIT

start() {
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    echo "port $PORT is taken (BROKER_BENCH_PORT picks another)" >&2
    exit 1
  fi
  local dir; dir="$(mktemp -d "/tmp/$RUN.XXXX")"
  (cd "$dir" && exec "$1" broker --listener-url "tcp://127.0.0.1:$PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$PORT" --storage-engine sqlite://tansu.db \
    >"$dir/log" 2>&1) &
  PID=$!
  until (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do
    kill -0 "$PID" 2>/dev/null || { tail -5 "$dir/log" >&2; exit 1; }
    sleep 0.2
  done
}
stop() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=""; }
# Runs the bench; on failure prints its last words instead of a result.
bench() {
  local out err
  err="$(mktemp "/tmp/$RUN.err.XXXX")"
  if out="$("$BENCH" --brokers "127.0.0.1:$PORT" --broker-pid "$PID" --headers "$H" "$@" 2>"$err")"; then
    echo "$out"
  else
    echo "{\"failed\": $(tail -n 1 "$err" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))')}"
  fi
}
# One line per result, from the bench's JSON.
show() {
  python3 -c '
import json, sys
mode, r = sys.argv[1], json.load(sys.stdin)
if "failed" in r:
    print("  %s: failed (%s)" % (sys.argv[2], r["failed"]))
elif mode == "rates":
    for x in r["rates"]:
        complete = all(n == x["sent"] for n in x["received_per_reader"])
        print("  %5d fixes/s, 4 readers: broker %7.0f us/fix (%3.0f%% of a core), p50 %.1f ms, p99 %.1f ms, every reader got all: %s"
              % (x["rate"], x["broker_cpu_us_per_fix"], x["broker_cpu_percent"], x["latency_p50_ms"], x["latency_p99_ms"], complete))
elif mode == "fill":
    print("  fill: %.0f records/s, broker %.0f us/record" % (r["records_per_s"], r["broker_cpu_us_per_record"]))
else:
    print("  catch-up from 0: %d/%d in %.1f s, %.0f records/s, per tenth %s, complete: %s"
          % (r["records"], r["total"], r["seconds"], r["records_per_s"], [round(t) for t in r["rate_per_tenth"]], r["complete"]))
' "$1" "${2:-$1}"
}

echo "# broker bench: ${#BINS[@]} build(s), $ROUNDS round(s), rates $RATES for ${SECS}s, fill $FILL"
for round in $(seq 1 "$ROUNDS"); do
  for bin in "${BINS[@]}"; do
  for H in $HEADERS; do
  for P in $PARTITIONS; do
    name="$bin, $H header(s) per record, $P partitions"
    echo "[round $round] $name"
    start "$bin"
    bench create --partitions "$P" >/dev/null
    for rate in ${RATES//,/ }; do
      bench rates --rates "$rate" --seconds "$SECS" | show rates "$rate fixes/s"
    done
    stop
    [[ "$FILL" == 0 ]] && continue
    start "$bin"
    bench create --partitions "$P" >/dev/null
    bench fill --count "$FILL" | show fill
    bench catchup --max-seconds "$CATCHUP_MAX_S" | show catchup
    stop
  done
  done
  done
done
