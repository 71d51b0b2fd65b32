# Sourced by the benchmarks: with KAFKA=memory, starts a tansu of the bench's own that keeps
# records in memory (the stack's tansu writes every batch to sqlite and is the first part to
# saturate long before Locus is), points LOCUS_KAFKA__BROKERS at it, and sets
# MEMORY_KAFKA_PID; it is stopped when the script exits. Needs RUN (a unique name).
MEMORY_KAFKA_PID=""
if [[ "${KAFKA:-stack}" == memory ]]; then
  KPORT="${MEMORY_KAFKA_PORT:-19092}"
  echo "[bench] starting an in-memory tansu on 127.0.0.1:$KPORT"
  mkdir -p "/tmp/$RUN-kafka"
  (cd "/tmp/$RUN-kafka" && exec "${LOCUS_CACHE:-$HOME/.cache/locus}/tansu-0.6.0-p3/bin/tansu" broker \
    --listener-url "tcp://127.0.0.1:$KPORT" --advertised-listener-url "tcp://127.0.0.1:$KPORT" \
    --storage-engine "memory://tansu/" >"/tmp/$RUN-kafka/log" 2>&1) &
  MEMORY_KAFKA_PID=$!
  export LOCUS_KAFKA__BROKERS="127.0.0.1:$KPORT"
  until (exec 3<>"/dev/tcp/127.0.0.1/$KPORT") 2>/dev/null; do sleep 0.2; done
fi
