#!/usr/bin/env bash
# `make k8s-check`: validates the Kubernetes manifests without a cluster.
#
#   k8s/check/run.sh            render every overlay, validate, lint, check Locus invariants,
#                               then run the checker's own tests (broken fixtures must fail)
#   k8s/check/run.sh --no-tests the check alone
#   k8s/check/run.sh --write-kafkatopics
#                               regenerate k8s/base/kafka/kafkatopics.yaml from topics/topics.yaml
#
# Tools come from PyPI into a venv of their own (created on first use, reused afterwards):
#   LOCUS_CACHE       where the venv lives                 [~/.cache/locus]  -> $LOCUS_CACHE/venv-k8s
#   LOCUS_K8S_CRDS    the CRD schemas to validate against  [<repo>/../shared/k8s-crds]
#   LOCUS_K8S_VERSIONS  Kubernetes versions for core kinds [1.30 1.37]
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${LOCUS_CACHE:-$HOME/.cache/locus}"
VENV="$CACHE/venv-k8s"
REQ="$REPO/k8s/check/requirements.txt"
STAMP="$VENV/.requirements"

log() { printf '[k8s-check] %s\n' "$*" >&2; }

if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  log "error: the check needs Python 3.11 or newer (tomllib); python3 is $(python3 -V 2>&1)"
  exit 1
fi
if [[ ! -x "$VENV/bin/python" ]] || ! cmp -s "$REQ" "$STAMP"; then
  log "installing the tools into $VENV (once per machine, or when requirements.txt changes)"
  mkdir -p "$CACHE"
  if ! python3 -m venv "$VENV"; then
    log "error: python3 cannot create a venv; on Debian: apt-get install python3-venv"
    exit 1
  fi
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ"
  cp "$REQ" "$STAMP"
fi

export PATH="$VENV/bin:$PATH"
if [[ "${1:-}" == "--write-kafkatopics" ]]; then
  exec "$VENV/bin/python" "$REPO/k8s/check/check.py" --repo "$REPO" --write-kafkatopics
fi
run_tests=1
[[ "${1:-}" == "--no-tests" ]] && run_tests=0

"$VENV/bin/python" "$REPO/k8s/check/check.py" --repo "$REPO"
if [[ $run_tests -eq 1 ]]; then
  log "running the checker's tests (k8s/check/tests)"
  "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$REPO/k8s/check/tests"
fi
