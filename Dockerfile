# syntax=docker/dockerfile:1
#
# One image with every bibliomq binary: bibliomq-api, bibliomq-workers,
# bibliomq-edge and the `bibliomq` client. infra/docker-compose.yml builds it
# for its `app` profile and picks the binary per service; alone:
#
#   docker build -t bibliomq:local .
#   docker run --rm bibliomq:local bibliomq-api --help
#
# testkit/tests/docker.rs keeps the binaries, ports and variables below in
# step with the workspace and .env.example.

# Build: Rust 1.91.1 on Debian 12 (the workspace needs 1.89, for the edge's
# zeromq). The slim variant carries the C compiler that aws-lc-sys and ring
# build with; libzmq (the zmq crate) is only the tests' peer and is not built.
FROM rust:1.91.1-slim-bookworm AS build
ARG BINARIES="bibliomq-api bibliomq-workers bibliomq-edge bibliomq"
WORKDIR /src
COPY . .
# The registry and the target directory are cache mounts: a rebuild after a
# change compiles only what changed. The binaries leave the cache for /out.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    set -eux; \
    cargo build --locked --release $(for bin in $BINARIES; do printf -- '--bin %s ' "$bin"; done); \
    mkdir -p /out; \
    for bin in $BINARIES; do cp "target/release/$bin" /out/; done

# Run: the same Debian release as the build (same glibc), slim.
FROM debian:12.12-slim
# CA certificates for HTTPS to an S3 service; nothing else is needed.
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates; \
    rm -rf /var/lib/apt/lists/*; \
    groupadd --system --gid 10001 bibliomq; \
    useradd --system --uid 10001 --gid bibliomq --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin bibliomq
COPY --from=build /out/ /usr/local/bin/
# In a container the processes listen on every interface (the defaults,
# 127.0.0.1, would be unreachable from outside it). Errors carry no captured
# backtraces unless asked for (as with scripts/up: capturing costs time).
ENV BIBLIOMQ_API_HOST=0.0.0.0 \
    BIBLIOMQ_EDGE_HOST=0.0.0.0 \
    BIBLIOMQ_WORKER_OPS_HOST=0.0.0.0 \
    RUST_LIB_BACKTRACE=0
USER 10001:10001
# API; worker operations; edge: ZeroMQ requests and events, NDJSON and pipe
# gateways, operations. The defaults of .env.example.
EXPOSE 8080 9101 5555 5556 5557 5558 9102
CMD ["bibliomq-api", "serve"]
