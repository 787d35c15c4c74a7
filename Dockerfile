# syntax=docker/dockerfile:1
#
# One image for the whole system: the five service binaries live side by side in
# /usr/local/bin and the container's command picks which one runs
# (`docker run signalbox:dev orders`, `command: ["orders"]` in compose,
# `command: ["orders"]` in Kubernetes). One build, one image to ship and scan.
# A second, small image holds the `signalbox` command line and scripts/demo,
# so the demo runs against compose without cargo on the host (target `cli`).
#
# Build:  docker build -t signalbox:dev .                      (the services; the last stage)
#         docker build --target cli -t signalbox-cli:dev .     (the command line)
# Needs BuildKit (the default builder since Docker 23) for the cache mounts.

# Pinned: the toolchain the workspace is tested with, and the Debian release
# of its builder (the binaries need the glibc they were linked against).
ARG RUST_IMAGE=rust:1.95.0-bookworm
ARG RUNTIME_IMAGE=debian:12.15-slim

# ---------------------------------------------------------------------------
# Build stage: compile every binary of the workspace in release mode.
# ---------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS build
WORKDIR /src

# protoc and the protobuf well-known types: the etcd client crate
# (service discovery, registry mode) compiles etcd's protos in its build
# script. Signalbox's own protos need neither (protox compiles them).
# Versions as in Debian 12, the builder's release.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        protobuf-compiler=3.21.* libprotobuf-dev=3.21.* \
 && rm -rf /var/lib/apt/lists/*

# .dockerignore is an allowlist, so this copies only what the build needs:
# Cargo.toml, Cargo.lock, crates/, proto/ (Signalbox's own, compiled by
# protox inside build.rs), migrations/ (embedded into the binaries), config/
# and deploy/docker/ (and .sqlx/ if it ever exists).
COPY . .

# No database exists while the image builds: should compile-time checked sqlx
# queries ever be used, they must come from the prepared .sqlx/ data.
ENV SQLX_OFFLINE=true

# Dependency caching without cargo-chef: the cargo registry and the target
# directory live in BuildKit cache mounts that survive between builds, so a
# rebuild after a source change recompiles only the crates that changed.
# Cache mounts are not part of the image, so the binaries are copied out to
# /out inside the same RUN. `sharing=locked` keeps two parallel builds from
# writing the same target directory at once. --locked: Cargo.lock is the
# contract; a build that would change it fails instead.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bins \
 && mkdir -p /out/bin /out/config \
 && for bin in gateway auth realtime orders catalog; do \
        install -m 0755 "target/release/${bin}" /out/bin/; \
    done \
 && mkdir -p /out/cli \
 && install -m 0755 target/release/signalbox /out/cli/signalbox \
 && install -m 0755 scripts/demo /out/cli/demo \
 && install -m 0755 deploy/docker/healthcheck /out/bin/healthcheck \
 && if [ -d config ]; then cp -R config/. /out/config/; fi

# ---------------------------------------------------------------------------
# The command line: `signalbox` and the demo script, nothing else. Built
# with --target cli; it comes before the runtime stage so that a plain
# `docker build` still produces the services' image (the last stage).
#   docker compose run --rm cli products        docker compose run --rm demo
# ---------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS cli

# A home directory: `signalbox login` keeps the login in ~/.config/signalbox.
# ~/.config exists in the image, owned by the user, so that a volume mounted
# there (compose's cli-config) starts with that owner and mode.
RUN groupadd --system --gid 10001 signalbox \
 && useradd --system --uid 10001 --gid signalbox --create-home \
        --home-dir /home/signalbox --shell /usr/sbin/nologin signalbox \
 && install -d -m 0700 -o signalbox -g signalbox /home/signalbox/.config

COPY --from=build /out/cli/ /usr/local/bin/
USER 10001:10001
WORKDIR /home/signalbox
# Inside compose the system is reached by its service names.
ENV SIGNALBOX_GATEWAY=http://gateway:8080 \
    SIGNALBOX_REALTIME=ws://realtime-lb:8081/ws
ENTRYPOINT ["signalbox"]
CMD ["--help"]

# ---------------------------------------------------------------------------
# Runtime stage: a slim Debian of the same release as the builder, so the
# glibc the binaries were linked against is the one they find.
# ---------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime

# No packages are installed: inside the deployment the services talk plain
# TCP to PostgreSQL and RabbitMQ (no TLS stack is linked, so no CA bundle is
# needed), and the health check is a bash script (bash is in every Debian
# image), so there is no curl, no apt cache and nothing to pin.
# A fixed numeric uid lets Kubernetes' runAsNonRoot verify the user.
RUN groupadd --system --gid 10001 signalbox \
 && useradd --system --uid 10001 --gid signalbox --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin signalbox

COPY --from=build /out/bin/ /usr/local/bin/
# Optional YAML configuration (config/<service>.yaml); environment variables
# (APP__SECTION__KEY) override it. The path is absolute so it does not depend
# on the working directory a platform starts the container in.
COPY --from=build /out/config/ /app/config/
WORKDIR /app

# Containers log to stdout for a collector: JSON lines, not the coloured
# developer format.
ENV APP_CONFIG_DIR=/app/config \
    APP__TELEMETRY__FORMAT=json \
    RUST_LOG=info

USER 10001:10001

# gateway 8080, realtime 8081 (WebSocket /ws), auth 8082 + gRPC 50051,
# orders 8083 + gRPC 50052, catalog 8084 + gRPC 50053.
EXPOSE 8080 8081 8082 8083 8084 50051 50052 50053

# The binary runs as PID 1 and handles SIGTERM itself (graceful shutdown).
CMD ["gateway"]
