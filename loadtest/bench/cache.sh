#!/usr/bin/env bash
# Cache benchmark: `locus-bench cache` (the sink, its script calls sent raw — the ceiling — and
# the script's commands without a script) on the stack's Redis alone, then with a second Redis
# server of the bench's own as a second shard (`cache.redis_url` listing both), in one run.
# Prints numbers; not a pass/fail test.
#
#   loadtest/bench/cache.sh [COUNT]   (users per pass, default 400000; needs `dev/stack up` and
#                                      `cargo build --release -p locus-loadtest`)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
COUNT="${1:-400000}"
RUN="cbench$(date +%s)"
SHARD_PORT="${SHARD_PORT:-16379}"
STACK="redis://127.0.0.1:${LOCUS_REDIS_PORT:-6379}/9"
SECOND="redis://127.0.0.1:$SHARD_PORT/9"

mkdir -p "/tmp/$RUN-redis"
# Set up as the stack's Redis is (dev/stack): no append-only log.
redis-server --bind 127.0.0.1 --port "$SHARD_PORT" --dir "/tmp/$RUN-redis" \
  --appendonly no --save "" >"/tmp/$RUN-redis/log" 2>&1 &
RP=$!
trap 'kill $RP 2>/dev/null; wait $RP 2>/dev/null; rm -rf "/tmp/$RUN-redis"' EXIT
until redis-cli -p "$SHARD_PORT" ping >/dev/null 2>&1; do sleep 0.1; done

echo "[bench] one shard: the stack's Redis ($STACK)"
./target/release/locus-bench cache --count "$COUNT" --redis "$STACK"
echo "[bench] two shards: the stack's Redis and a second one ($SECOND)"
./target/release/locus-bench cache --count "$COUNT" --redis "$STACK,$SECOND"
