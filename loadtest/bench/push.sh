#!/usr/bin/env bash
# Push benchmark: idle streams one process holds and memory per idle stream; fan-out events/s
# and MQTT publish → SSE event latency under load. Prints numbers; not a pass/fail test.
#
#   loadtest/bench/push.sh [IDLE] [FIXES_PER_S] [ACTIVE] [SECS]
#        (defaults 19500 5000 10 30; needs `dev/stack up` and
#         `cargo build --release -p locus -p locus-loadtest`)
#   KAFKA=private loadtest/bench/push.sh ...
#        the same with a tansu of its own on a fresh sqlite store (started and stopped here)
#
# Method: a bridge and a push process (release builds) on a fresh 12-partition topic. IDLE
# streams of a tenant without traffic are opened and the push process's RSS is read before
# and after. Then locus-sim drives FIXES_PER_S (devices reporting every 2 s, so the default
# 1 fix/s/user rate cap never delays an event) through Mosquitto → bridge → tansu → push, and
# ACTIVE streams of that tenant measure fan-out and publish → event latency for SECS.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
IDLE="${1:-19500}"; RATE="${2:-5000}"; ACTIVE="${3:-10}"; SECS="${4:-30}"
DEVICES=$(( RATE * 2 ))
BPORT=18281; PPORT=18282
RUN="pushbench$(date +%s)"
export LOCUS_CONFIG=${LOCUS_CONFIG:-dev/locus.dev.toml}
export LOCUS_TOPICS__LOCATIONS="$RUN.locations" LOCUS_TOPICS__DLQ="$RUN.dlq"
export LOCUS_BRIDGE__TOPIC_TEMPLATE="$RUN/{tenant}/{user_id}/location"
export LOCUS_BRIDGE__SHARE_GROUP="$RUN" LOCUS_BRIDGE__CLIENT_ID="$RUN-bridge"
# The bench's MQTT session expires soon after the run instead of staying for the default week.
export LOCUS_BRIDGE__SESSION_EXPIRY_S=120
export LOCUS_LOG__FORMAT=json
LOCUS=./target/release/locus
SIM=./target/release/locus-sim
BENCH=./target/release/locus-push-bench
# Each stream is one socket in the push process and one in the client: both need IDLE open
# files and some. Raise the soft limit to the hard one (raising the hard one needs
# CAP_SYS_RESOURCE; where the hard limit is 20000, IDLE must stay under ~19900).
ulimit -n "$(ulimit -Hn)"
if (( IDLE + ACTIVE + 200 > $(ulimit -n) )); then
  echo "[bench] the open-file limit ($(ulimit -n)) is too low for $IDLE streams" >&2; exit 1
fi

source loadtest/bench/private-kafka.sh

cat > "/tmp/$RUN-topics.yaml" <<YAML
topics:
  - {name: $RUN.locations, partitions: ${PARTITIONS:-12}, replication_factor: 1, min_insync_replicas: 1, retention_ms: 3600000, cleanup_policy: delete, compression: producer}
  - {name: $RUN.dlq, partitions: 1, replication_factor: 1, min_insync_replicas: 1, retention_ms: 3600000, cleanup_policy: delete, compression: producer}
YAML
LOCUS_TOPICS__MAX_PARTITIONS="${PARTITIONS:-12}" LOCUS_TOPICS__FILE="/tmp/$RUN-topics.yaml" $LOCUS topics apply >/dev/null
$LOCUS schemas register >/dev/null

cleanup() { kill "${SIMP:-}" "${BP:-}" "${PP:-}" $PRIVATE_KAFKA_PID 2>/dev/null || true; rm -f "/tmp/$RUN.started"; }
trap cleanup EXIT
LOCUS_HTTP__LISTEN="127.0.0.1:$BPORT" $LOCUS bridge 2>"/tmp/$RUN-bridge.log" & BP=$!
LOCUS_HTTP__LISTEN="127.0.0.1:$PPORT" LOCUS_PUSH__MAX_CONNECTIONS=$(( IDLE + ACTIVE + 100 )) \
  $LOCUS push 2>"/tmp/$RUN-push.log" & PP=$!
for p in $BPORT $PPORT; do
  until curl -fsS "http://127.0.0.1:$p/readyz" >/dev/null 2>&1; do sleep 0.2; done
done
echo "[bench] bridge and push ready; $IDLE idle streams, then $RATE fixes/s to $ACTIVE streams for ${SECS}s"

IDLE_TOKEN=$($LOCUS push token --tenant "$RUN-idle" --ttl-s 3600)
ACTIVE_TOKEN=$($LOCUS push token --tenant bench --ttl-s 3600)
$BENCH --port $PPORT --pid $PP --idle "$IDLE" --idle-token "$IDLE_TOKEN" \
  --active "$ACTIVE" --active-token "$ACTIVE_TOKEN" --secs "$SECS" --start-file "/tmp/$RUN.started" & BENCHP=$!

# Start the devices once the idle streams are measured (the bench waits for the file).
until curl -fsS "http://127.0.0.1:$PPORT/metrics" |
  awk -v n="$IDLE" '$1 == "locus_push_connections" && $2 >= n {ok=1} END {exit !ok}'; do
  kill -0 $BENCHP 2>/dev/null || exit 1
  sleep 1
done
sleep 5
$SIM --devices $DEVICES --connections 8 --interval-ms 2000 --jitter-ms 100 \
  --duration-s $(( SECS + 20 )) --topic-template "$LOCUS_BRIDGE__TOPIC_TEMPLATE" --tenant bench \
  --report "/tmp/$RUN-sim.json" --quiet & SIMP=$!
touch "/tmp/$RUN.started"
TICK=$(getconf CLK_TCK)
STACK_DIR="${LOCUS_STACK_DIR:-.stack}"
MOSQ=$(cat "$STACK_DIR/run/mqtt.pid"); TANSU=${PRIVATE_KAFKA_PID:-$(cat "$STACK_DIR/run/kafka.pid")}
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
declare -A C0
for p in $PP $BP $SIMP $MOSQ $TANSU $BENCHP; do C0[$p]=$(cpu "$p"); done
t0=$(date +%s.%N)
# Per-process CPU, read just before the bench client ends.
(while kill -0 $BENCHP 2>/dev/null; do
   for p in $PP $BP $SIMP $MOSQ $TANSU $BENCHP; do echo "$p $(cpu "$p" 2>/dev/null)"; done > "/tmp/$RUN.cpu"
   echo "$(date +%s.%N)" >> "/tmp/$RUN.cpu"; sleep 1; done) &
wait $BENCHP
t1=$(tail -1 "/tmp/$RUN.cpu")
for pair in "push $PP" "bridge $BP" "simulator $SIMP" "mosquitto $MOSQ" "tansu $TANSU" "client $BENCHP"; do
  set -- $pair
  c1=$(awk -v p="$2" '$1 == p {print $2}' "/tmp/$RUN.cpu")
  awk -v n="$1" -v c=$(( c1 - C0[$2] )) -v tk="$TICK" -v t="$(echo "$t1 - $t0" | bc)" \
    'BEGIN { printf "[bench] CPU while streaming: %-10s %4.0f%% of a core\n", n, 100 * c / tk / t }'
done
# Where the time goes, from the stages' own histograms (cumulative over the run).
quantiles() {
  curl -fsS "http://127.0.0.1:$1/metrics" | python3 -c '
import sys, re
name, label = sys.argv[1], sys.argv[2]
b = [(float("inf") if m.group(1) == "+Inf" else float(m.group(1)), float(m.group(2)))
     for m in re.finditer(name + r"_bucket\{le=\"([^\"]+)\"\} (\S+)", sys.stdin.read())]
if b and b[-1][1] > 0:
    q = lambda x: next(le for le, c in b if c >= x * b[-1][1])
    print(f"[bench] {label:<38} p50 <= {q(.5)*1e3:g} ms  p99 <= {q(.99)*1e3:g} ms")
' "$2" "$3"
}
quantiles $BPORT locus_bridge_freshness_seconds "device → bridge (event time → receive)"
quantiles $BPORT locus_bridge_produce_latency_seconds "bridge receive → Kafka acked"
quantiles $PPORT locus_push_publish_to_send_seconds "bridge receive → push writes the event"
curl -fsS "http://127.0.0.1:$PPORT/metrics" | grep -E '^locus_push_(events_sent_total|events_conflated_total|connections) |^locus_stage_received_records_total\{stage="push"\}'
