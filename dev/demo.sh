#!/usr/bin/env bash
# `make demo`: the pipeline on the local stack, fed by a simulated fleet, until Ctrl-C.
#   DEMO_DEVICES   devices in the fleet                 [50]
#   DEMO_INTERVAL  ms between two fixes of one device   [1000]
#   DEMO_SECONDS   how long the fleet drives            [3600]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export LOCUS_CONFIG="${LOCUS_CONFIG:-dev/locus.dev.toml}"
LISTEN="$(./target/release/locus config check | awk -F'"' '/^listen = /{print $2; exit}')"
mkdir -p .stack/log

./target/release/locus run >>.stack/log/locus.log 2>&1 &
LOCUS_PID=$!
SIM_PID=""
stop() {
  [[ -n "$SIM_PID" ]] && kill "$SIM_PID" 2>/dev/null || true
  kill -TERM "$LOCUS_PID" 2>/dev/null && wait "$LOCUS_PID" 2>/dev/null || true
  echo "[demo] stopped (the local stack keeps running: dev/stack down stops it)"
}
trap stop EXIT INT TERM

for _ in $(seq 1 100); do
  curl -fsS "http://$LISTEN/readyz" >/dev/null 2>&1 && break
  kill -0 "$LOCUS_PID" 2>/dev/null || { tail -20 .stack/log/locus.log; echo "[demo] locus exited"; exit 1; }
  sleep 0.3
done
TOKEN="$(./target/release/locus push token --tenant demo --ttl-s 86400)"
cat <<MSG
[demo] Locus is running (log: .stack/log/locus.log)
         dashboard http://$LISTEN/#token=$TOKEN
         metrics  http://$LISTEN/metrics
         health   http://$LISTEN/healthz   http://$LISTEN/readyz
         where    http://$LISTEN/v1/tenants/demo/nearby?lat=52.52&lon=13.405&radius_m=5000&limit=10&access_token=$TOKEN
         who      http://$LISTEN/v1/tenants/demo/positions?bbox=13.3,52.45,13.5,52.6&access_token=$TOKEN
         track    http://$LISTEN/v1/tenants/demo/users/user-00001/track?format=geojson&access_token=$TOKEN
         stream   curl -N "http://$LISTEN/v1/stream?access_token=$TOKEN"
         (every data route takes the token as access_token=… or Authorization: Bearer …)
[demo] driving ${DEMO_DEVICES:-50} simulated devices; Ctrl-C stops
MSG
./target/release/locus-sim --devices "${DEMO_DEVICES:-50}" --connections 2 \
  --interval-ms "${DEMO_INTERVAL:-1000}" --duration-s "${DEMO_SECONDS:-3600}" \
  --offline-rate 0.01 --malformed-rate 0.005 --tenant demo --report .stack/log/sim-report.json &
SIM_PID=$!
wait "$SIM_PID" || true
