# Locus: the two commands are `make demo` and `make test`. See README.md.
SHELL := /bin/bash
CACHE ?= $(HOME)/.cache/locus
VENV := $(CACHE)/venv
LOCUS_CONFIG ?= dev/locus.dev.toml
export LOCUS_CONFIG

.PHONY: demo test stack-up stack-down stack-status lint fmt bench build-release dashboard k8s-check

## Start the local stack, build, apply topics, register schemas, run the pipeline.
demo: stack-up build-release dashboard
	./target/release/locus topics apply
	./target/release/locus schemas register
	@bash dev/demo.sh

## Start the local stack if needed and run every test (Rust and Python).
test: stack-up dashboard k8s-check
	./dev/stack status
	cargo build --workspace --all-targets
	./target/debug/locus topics apply
	cargo test --workspace --no-fail-fast
	$(VENV)/bin/python -m pytest -q dev/registry/tests loadtest/capacity loadtest/scenario

## Formatting and lints, as CI checks them.
lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

stack-up:
	./dev/stack up

stack-down:
	./dev/stack down

stack-status:
	./dev/stack status

build-release:
	cargo build --release --locked -p locus -p locus-loadtest

## Validate the Kubernetes manifests offline (k8s/README.md): render, schemas, invariants, tests.
k8s-check:
	k8s/check/run.sh

## Build the dashboard (npm packages from the lockfile, bundled by esbuild) into
## connectors/sse/dashboard/dist, which `locus` serves at /.
dashboard:
	cd connectors/sse/dashboard && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build
