# syntax=docker/dockerfile:1
# The Locus image: the `locus` binary, its default config, topics.yaml and the dashboard.
#   docker build -t locus .
# Kubernetes manifests and how they use the image: k8s/README.md.

# The dashboard (as `make dashboard`), built apart from the Rust build so both run in parallel.
FROM node:22-bookworm-slim AS dashboard
WORKDIR /src/connectors/sse/dashboard
COPY connectors/sse/dashboard/package.json connectors/sse/dashboard/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY connectors/sse/dashboard/ ./
RUN npm run --silent build

# The binaries, with the same command as `make build-release`. rdkafka-sys builds librdkafka
# (C compiler, make, pkg-config, zlib); the Schema Registry client links the system OpenSSL.
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p locus -p locus-loadtest \
 && install -m 0755 target/release/locus /usr/local/bin/locus

FROM debian:bookworm-slim
# libssl3: `locus` links OpenSSL dynamically (HTTPS to the Schema Registry).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 locus \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin locus
COPY --from=build /usr/local/bin/locus /usr/local/bin/locus
COPY --from=dashboard /src/connectors/sse/dashboard/dist /usr/share/locus/dashboard
COPY topics/topics.yaml /usr/share/locus/topics.yaml
COPY k8s/image/locus.toml /etc/locus/locus.toml
ENV LOCUS_CONFIG=/etc/locus/locus.toml
USER 10001:10001
EXPOSE 8080 9090
ENTRYPOINT ["locus"]
CMD ["run"]
