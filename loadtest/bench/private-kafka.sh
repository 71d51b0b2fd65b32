# Sourced by the benchmarks: with KAFKA=private, starts a tansu of the bench's own on a fresh
# sqlite store (the same patched build as the stack's, see dev/tansu/README.md), so a run is
# not measured against whatever earlier runs left in the stack's broker. Points
# LOCUS_KAFKA__BROKERS at it and sets PRIVATE_KAFKA_PID; it is stopped when the script exits.
# Needs RUN (a unique name). (The in-memory store these scripts used before listed every
# stored batch on every fetch; it was retired for the fixed sqlite store.)
PRIVATE_KAFKA_PID=""
if [[ "${KAFKA:-stack}" == private ]]; then
  KPORT="${PRIVATE_KAFKA_PORT:-19092}"
  KDIR="$(mktemp -d "/tmp/$RUN-kafka.XXXX")"
  echo "[bench] starting a private tansu on 127.0.0.1:$KPORT (store in $KDIR)"
  (cd "$KDIR" && exec "$(bash dev/tansu/build.sh --path)" broker \
    --listener-url "tcp://127.0.0.1:$KPORT" --advertised-listener-url "tcp://127.0.0.1:$KPORT" \
    --storage-engine "sqlite://tansu.db" >"$KDIR/log" 2>&1) &
  PRIVATE_KAFKA_PID=$!
  export LOCUS_KAFKA__BROKERS="127.0.0.1:$KPORT"
  until (exec 3<>"/dev/tcp/127.0.0.1/$KPORT") 2>/dev/null; do sleep 0.2; done
fi
