#!/usr/bin/env bash
# Builds the local Kafka broker: tansu 0.6.0 (sqlite storage) from crates.io, with
# every dev/tansu/*.patch applied in name order: `NN-broker-*.patch` to tansu-broker (the
# group coordinator), `NN-service-*.patch` to tansu-service (the request framing),
# `NN-bin-*.patch` to tansu (the binary), the others to tansu-storage. Idempotent: the
# binary is cached outside the repo ($LOCUS_CACHE, default ~/.cache/locus) under a
# name that includes a hash of the patches, so a changed patch means a new binary;
# the build folder is shared by every patch set, so that rebuild is incremental
# (a few minutes). A fresh build takes about 20 minutes on 2 cores.
#
#   dev/tansu/build.sh          build (if needed) and print nothing else on success
#   dev/tansu/build.sh --path   print the path of the binary for the current patches
set -euo pipefail

VERSION=0.6.0
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${LOCUS_CACHE:-$HOME/.cache/locus}"
PATCHES=("$HERE"/*.patch)
PATCH_ID="$(cat "${PATCHES[@]}" | sha256sum | cut -c1-12)"
OUT="$CACHE/tansu-$VERSION-$PATCH_ID/bin/tansu"
BUILD="$CACHE/build/tansu-$VERSION"

if [[ "${1:-}" == --path ]]; then
  echo "$OUT"
  exit 0
fi

if [[ -x "$OUT" ]]; then
  echo "tansu: cached at $OUT"
  exit 0
fi

echo "tansu: building $VERSION with ${#PATCHES[@]} patches ($PATCH_ID; about 20 min on 2 cores the first time)"
mkdir -p "$BUILD/fetch/src"
cat > "$BUILD/fetch/Cargo.toml" <<TOML
[package]
name = "tansu-source-fetch"
version = "0.0.0"
edition = "2021"
publish = false
[dependencies]
tansu = "=$VERSION"
tansu-broker = "=$VERSION"
tansu-storage = "=$VERSION"
tansu-service = "=$VERSION"
TOML
echo 'fn main() {}' > "$BUILD/fetch/src/main.rs"
(cd "$BUILD/fetch" && cargo fetch --quiet)

CARGO_HOME_DIR="${CARGO_HOME:-$HOME/.cargo}"
SRC_TANSU="$(ls -d "$CARGO_HOME_DIR"/registry/src/*/tansu-$VERSION | head -n1)"
SRC_STORAGE="$(ls -d "$CARGO_HOME_DIR"/registry/src/*/tansu-storage-$VERSION | head -n1)"
SRC_BROKER="$(ls -d "$CARGO_HOME_DIR"/registry/src/*/tansu-broker-$VERSION | head -n1)"
SRC_SERVICE="$(ls -d "$CARGO_HOME_DIR"/registry/src/*/tansu-service-$VERSION | head -n1)"

rm -rf "$BUILD/tansu" "$BUILD/tansu-storage" "$BUILD/tansu-broker" "$BUILD/tansu-service"
cp -r "$SRC_TANSU" "$BUILD/tansu"
cp -r "$SRC_STORAGE" "$BUILD/tansu-storage"
cp -r "$SRC_BROKER" "$BUILD/tansu-broker"
cp -r "$SRC_SERVICE" "$BUILD/tansu-service"
chmod -R u+w "$BUILD/tansu" "$BUILD/tansu-storage" "$BUILD/tansu-broker" "$BUILD/tansu-service"
for p in "${PATCHES[@]}"; do
  case "$(basename "$p")" in
    [0-9]*-broker-*) crate=tansu-broker ;;
    [0-9]*-service-*) crate=tansu-service ;;
    [0-9]*-bin-*) crate=tansu ;;
    *) crate=tansu-storage ;;
  esac
  echo "tansu: applying $(basename "$p") to $crate"
  patch -s -p1 -d "$BUILD/$crate" < "$p"
done
cat >> "$BUILD/tansu/Cargo.toml" <<TOML

[patch.crates-io]
tansu-storage = { path = "../tansu-storage" }
tansu-broker = { path = "../tansu-broker" }
tansu-service = { path = "../tansu-service" }
TOML

(cd "$BUILD/tansu" && CARGO_TARGET_DIR="$BUILD/target" \
  cargo build --release --features libsql,dynostore --bin tansu)

mkdir -p "$(dirname "$OUT")"
cp "$BUILD/target/release/tansu" "$OUT"
# The target folder is kept: a changed patch rebuilds incrementally.
echo "tansu: built $OUT"
