#!/usr/bin/env bash
# Builds the local Kafka broker: tansu 0.6.0 (sqlite storage) from crates.io, with
# dev/tansu/fetch-wakeup.patch applied to tansu-storage. Idempotent: the binary is
# cached outside the repo ($LOCUS_CACHE, default ~/.cache/locus) and reused by every
# later run on this machine. A fresh build takes about 20 minutes on 2 cores.
set -euo pipefail

VERSION=0.6.0
PATCH_ID=p3
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${LOCUS_CACHE:-$HOME/.cache/locus}"
OUT="$CACHE/tansu-$VERSION-$PATCH_ID/bin/tansu"
BUILD="$CACHE/build/tansu-$VERSION-$PATCH_ID"

if [[ -x "$OUT" ]]; then
  echo "tansu: cached at $OUT"
  exit 0
fi

echo "tansu: building $VERSION with the fetch patch (about 20 min on 2 cores; once per machine)"
mkdir -p "$BUILD/fetch/src"
cat > "$BUILD/fetch/Cargo.toml" <<TOML
[package]
name = "tansu-source-fetch"
version = "0.0.0"
edition = "2021"
publish = false
[dependencies]
tansu = "=$VERSION"
tansu-storage = "=$VERSION"
TOML
echo 'fn main() {}' > "$BUILD/fetch/src/main.rs"
(cd "$BUILD/fetch" && cargo fetch --quiet)

CARGO_HOME_DIR="${CARGO_HOME:-$HOME/.cargo}"
SRC_TANSU="$(ls -d "$CARGO_HOME_DIR"/registry/src/*/tansu-$VERSION | head -n1)"
SRC_STORAGE="$(ls -d "$CARGO_HOME_DIR"/registry/src/*/tansu-storage-$VERSION | head -n1)"

rm -rf "$BUILD/tansu" "$BUILD/tansu-storage"
cp -r "$SRC_TANSU" "$BUILD/tansu"
cp -r "$SRC_STORAGE" "$BUILD/tansu-storage"
chmod -R u+w "$BUILD/tansu" "$BUILD/tansu-storage"
patch -p1 -d "$BUILD/tansu-storage" < "$HERE/fetch-wakeup.patch"
cat >> "$BUILD/tansu/Cargo.toml" <<TOML

[patch.crates-io]
tansu-storage = { path = "../tansu-storage" }
TOML

(cd "$BUILD/tansu" && CARGO_TARGET_DIR="$BUILD/target" \
  cargo build --release --features libsql,dynostore --bin tansu)

mkdir -p "$(dirname "$OUT")"
cp "$BUILD/target/release/tansu" "$OUT"
# The target folder is kept: a changed patch rebuilds incrementally.
echo "tansu: built $OUT"
