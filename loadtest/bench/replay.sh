#!/usr/bin/env bash
# `locus replay export` against its ceiling: a plain rdkafka consumer reading the same records.
# Fills a topic of the stack's (or a private, KAFKA=private) broker with COUNT Avro fixes once,
# then alternates ROUNDS times: plain consumer, export to Parquet, export to NDJSON.
#
#   loadtest/bench/replay.sh                 # 1,000,000 fixes, 2 rounds
#   COUNT=200000 ROUNDS=3 KAFKA=private loadtest/bench/replay.sh
#
# Prints progress on stderr and the JSON report on stdout (also saved in target/bench/).
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN="replay-bench-$$"
source loadtest/bench/private-kafka.sh
COUNT="${COUNT:-1000000}"
ROUNDS="${ROUNDS:-2}"
BROKERS="${LOCUS_KAFKA__BROKERS:-127.0.0.1:9092}"
cargo build --release -q -p locus -p locus-loadtest
mkdir -p target/bench
./target/release/locus-replay-bench --brokers "$BROKERS" --topic "replay-bench-$COUNT" \
  --count "$COUNT" --rounds "$ROUNDS" --locus target/release/locus --out-dir target/bench \
  | tee "target/bench/replay-$(date +%Y%m%d-%H%M%S).json"
