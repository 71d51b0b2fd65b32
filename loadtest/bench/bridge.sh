#!/usr/bin/env bash
# Bridge benchmark: throughput of the bridge alone and its CPU time per fix, and which part
# (Mosquitto, tansu, the bridge) saturates first. Prints numbers; not a pass/fail test.
#
#   loadtest/bench/bridge.sh [FIXES]        (default 100000; needs `dev/stack up` and
#                                            `cargo build --release -p locus -p locus-loadtest`)
#   KAFKA=private loadtest/bench/bridge.sh 500000
#                                            the same against a tansu of its own on a fresh
#                                            sqlite store (started and stopped here), so no
#                                            earlier run's records are in the measurement
#   LIVE=1 KAFKA=private loadtest/bench/bridge.sh 500000
#                                            devices publish while the bridge runs (offered
#                                            as fast as the simulator goes): every part's CPU
#                                            over the same interval, Mosquitto's taking in and
#                                            delivering together
#
# Method: the bridge's persistent session is created, the bridge stopped, and FIXES fixes are
# published into the broker (queued for the session). Then the bridge starts and drains the
# backlog into Kafka; we time the drain and read the CPU time (utime+stime from /proc) that the
# bridge, Mosquitto and tansu spent during it. A part near 100% of a core is the bottleneck.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
FIXES="${1:-100000}"
DEVICES=1000
PER_DEVICE=$(( (FIXES + DEVICES - 1) / DEVICES ))
FIXES=$(( PER_DEVICE * DEVICES ))
STACK_DIR="${LOCUS_STACK_DIR:-.stack}"
PORT=18181
RUN="bench$(date +%s)"
export LOCUS_CONFIG=dev/locus.dev.toml
export LOCUS_TOPICS__LOCATIONS="$RUN.locations" LOCUS_TOPICS__DLQ="$RUN.dlq"
export LOCUS_BRIDGE__TOPIC_TEMPLATE="$RUN/{tenant}/{user_id}/location"
export LOCUS_BRIDGE__SHARE_GROUP="$RUN" LOCUS_BRIDGE__CLIENT_ID="$RUN-bridge"
# The bench's MQTT session (and whatever it still holds) expires soon after the run instead of
# staying in the stack's broker for the default week.
export LOCUS_BRIDGE__SESSION_EXPIRY_S=120
export LOCUS_HTTP__LISTEN="127.0.0.1:$PORT" LOCUS_LOG__FORMAT=json
LOCUS=${LOCUS_BIN:-./target/release/locus}
SIM=./target/release/locus-sim
TICK=$(getconf CLK_TCK)

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
metric() { curl -fsS "http://127.0.0.1:$PORT/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
# cpu_lines WALL FIXES NAME TICKS [NAME TICKS ...]: each part's CPU over WALL seconds.
cpu_lines() {
  python3 - "$TICK" "$@" <<'PY'
import sys
tick, wall, fixes, *parts = sys.argv[1:]
tick, wall, fixes = float(tick), float(wall), float(fixes)
for name, t in zip(parts[::2], parts[1::2]):
    cpu_s = float(t) / tick
    print(f"[bench] {name:<10} CPU {cpu_s:6.2f} s = {100 * cpu_s / wall:5.1f}% of one core"
          + (f", {1e6 * cpu_s / fixes:6.1f} µs per fix" if fixes else ""))
PY
}
# The fleet: FIXES fixes from DEVICES devices over 4 connections, as fast as they go.
SIM_ARGS=(--devices $DEVICES --connections 4 --fixes-per-device $PER_DEVICE --interval-ms 5
  --jitter-ms 0 --topic-template "$LOCUS_BRIDGE__TOPIC_TEMPLATE" --tenant bench
  --report "/tmp/$RUN-sim.json" --quiet)

source loadtest/bench/private-kafka.sh
[[ -n "$PRIVATE_KAFKA_PID" ]] && trap 'kill $PRIVATE_KAFKA_PID 2>/dev/null || true' EXIT
MOSQ=$(cat "$STACK_DIR/run/mqtt.pid"); TANSU=${PRIVATE_KAFKA_PID:-$(cat "$STACK_DIR/run/kafka.pid")}

cat > "/tmp/$RUN-topics.yaml" <<YAML
topics:
  - {name: $RUN.locations, partitions: 12, replication_factor: 1, min_insync_replicas: 1, retention_ms: 3600000, cleanup_policy: delete, compression: producer}
  - {name: $RUN.dlq, partitions: 1, replication_factor: 1, min_insync_replicas: 1, retention_ms: 3600000, cleanup_policy: delete, compression: producer}
YAML
LOCUS_TOPICS__FILE="/tmp/$RUN-topics.yaml" $LOCUS topics apply >/dev/null
$LOCUS schemas register >/dev/null

echo "[bench] creating the bridge's session"
$LOCUS bridge 2>"/tmp/$RUN-bridge.log" & BP=$!
until curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; do sleep 0.2; done
kill -TERM $BP; wait $BP || true

if [[ "${LIVE:-0}" == 1 ]]; then
  $LOCUS bridge 2>>"/tmp/$RUN-bridge.log" & BP=$!
  until curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; do sleep 0.2; done
  echo "[bench] live: $DEVICES devices publish $FIXES fixes while the bridge runs"
  b0=$(cpu $BP); m0=$(cpu $MOSQ); t0=$(cpu $TANSU); start=$(date +%s.%N)
  $SIM "${SIM_ARGS[@]}" & SP=$!
  s1=0
  while :; do
    produced=$(metric locus_bridge_fixes_produced_total); produced=${produced:-0}
    # The simulator's CPU, read while it runs (it exits before the bridge is done).
    if kill -0 $SP 2>/dev/null; then s1=$(cpu $SP 2>/dev/null || echo "$s1"); fi
    now=$(date +%s.%N)
    printf '[bench] %6.1fs  produced %s / %s\n' "$(awk -v a="$now" -v b="$start" 'BEGIN {print a - b}')" "$produced" "$FIXES"
    [[ "$produced" -ge "$FIXES" ]] && break
    if ! kill -0 $SP 2>/dev/null && awk -v a="$now" -v b="$start" 'BEGIN {exit !(a - b > 300)}'; then
      echo "[bench] stalled at $produced"; break
    fi
    sleep 0.5
  done
  end=$(date +%s.%N)
  b1=$(cpu $BP); m1=$(cpu $MOSQ); t1=$(cpu $TANSU)
  wait $SP || true
  kill -TERM $BP; wait $BP || true
  wall=$(awk -v a="$end" -v b="$start" 'BEGIN {print a - b}')
  awk -v n="$produced" -v w="$wall" \
    'BEGIN {printf "[bench] live: %d fixes published and bridged in %.2f s = %d fixes/s\n", n, w, n / w}'
  cpu_lines "$wall" "$produced" bridge $((b1 - b0)) mosquitto $((m1 - m0)) tansu $((t1 - t0)) \
    simulator "$s1"
  echo "[bench] (2 cores; Mosquitto is one thread: at 100% of a core it is the limit)"
  exit 0
fi

echo "[bench] publishing $FIXES fixes ($DEVICES devices x $PER_DEVICE) into the broker"
# Mosquitto's side of taking the fixes in (reading, routing, queueing for the session): in a
# live system it pays this as well as the delivery to the bridge measured below.
mi0=$(cpu $MOSQ)
$SIM "${SIM_ARGS[@]}"
mi1=$(cpu $MOSQ)

m0=$(cpu $MOSQ); t0=$(cpu $TANSU)
start=$(date +%s.%N)
$LOCUS bridge 2>>"/tmp/$RUN-bridge.log" & BP=$!
until curl -fsS "http://127.0.0.1:$PORT/metrics" >/dev/null 2>&1; do sleep 0.05; done
last=0
b0=""
while :; do
  produced=$(metric locus_bridge_fixes_produced_total); produced=${produced:-0}
  # Start the clock at the first produced fix: start-up (connections, schema lookup) excluded.
  if [[ -z "$b0" && "$produced" -gt 0 ]]; then
    b0=$(cpu $BP); m0=$(cpu $MOSQ); t0=$(cpu $TANSU); start=$(date +%s.%N); p0=$produced
  fi
  now=$(date +%s.%N)
  elapsed=$(awk -v a="$now" -v b="$start" 'BEGIN {print a - b}')
  printf '[bench] %6.1fs  produced %s / %s\n' "$elapsed" "$produced" "$FIXES"
  [[ "$produced" -ge "$FIXES" ]] && break
  if [[ "$produced" == "$last" ]] && awk -v e="$elapsed" 'BEGIN {exit !(e > 30)}' && [[ "$produced" -gt 0 ]]; then
    echo "[bench] stalled at $produced"; curl -fsS "http://127.0.0.1:$PORT/metrics" | grep -E "^locus_bridge_(messages|in_flight|fixes)"; break
  fi
  last=$produced
  sleep 0.5
done
end=$(date +%s.%N)
b1=$(cpu $BP); m1=$(cpu $MOSQ); t1=$(cpu $TANSU)
kill -TERM $BP; wait $BP || true
wall=$(awk -v a="$end" -v b="$start" 'BEGIN {print a - b}')
drained=$((produced - p0))
awk -v n="$drained" -v w="$wall" \
  'BEGIN {printf "[bench] drained %d fixes in %.2f s = %d fixes/s\n", n, w, n / w}'
cpu_lines "$wall" "$drained" bridge $((b1 - b0)) mosquitto $((m1 - m0)) tansu $((t1 - t0))
awk -v i="$((mi1 - mi0))" -v d="$((m1 - m0))" -v f="$FIXES" -v n="$drained" -v t="$TICK" 'BEGIN {
  printf "[bench] mosquitto  taking the fixes in from the devices (before the drain): %.1f µs per fix;", 1e6 * i / t / f
  printf " in a live system it pays both, %.1f µs per fix\n", 1e6 * (i / f + d / (n > 0 ? n : 1)) / t }'
echo "[bench] (2 cores; the part closest to 100% of a core saturates first)"
