# oxcd's container image. Build with BuildKit (cache mounts): `make image` (scripts/image.sh), which
# also makes local stand-ins for the two base images where no registry is reachable, or anywhere:
#   DOCKER_BUILDKIT=1 docker build --build-arg VERSION=0.1.0 -t oxcd:0.1.0 .
# No `# syntax=` line on purpose: fetching a frontend image needs a registry; the engine's built-in
# Dockerfile frontend (Docker 20.10 and later) knows RUN --mount.

ARG BUILDER_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------------------------------------------
FROM ${BUILDER_IMAGE} AS builder
# librocksdb-dev: oxcd links Debian's RocksDB 7.8; libclang-dev and clang: bindgen;
# protobuf-compiler and libprotobuf-dev as on the developers' machines (the build itself uses the
# vendored protoc); binutils for strip.
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      librocksdb-dev libclang-dev clang pkg-config protobuf-compiler libprotobuf-dev binutils >/dev/null \
 && rm -rf /var/lib/apt/lists/*
ENV CARGO_HOME=/usr/local/cargo \
    CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0
WORKDIR /src
# A build label: the binary reports <version>+<label> (`oxcd --version`, oxcd_build_info).
ARG OXCD_BUILD=""
# Only what the build reads, so edits to tests, charts or docs keep the cached layers.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY src ./src
# The registry and the target directory live in cache mounts that outlast the build, so a rebuild
# after a source change recompiles only oxcd (its dependencies stay built).
# The sources are touched first: cargo decides freshness by mtime alone, and the copied files keep
# the mtimes they had in the build context, which can be older than the last compile in the shared
# target mount (another clone, a file edited while the previous build ran) and would leave a stale
# binary. This step runs only when the copied content changed (BuildKit caches by content), and
# then oxcd (lib, build script, bin) is always recompiled from exactly what was copied.
# The binary is copied out of the mount (a mount's files are not part of the layer) and stripped:
# the release profile keeps line tables (debug = 1).
RUN --mount=type=cache,id=oxcd-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=oxcd-cargo-git,target=/usr/local/cargo/git \
    --mount=type=cache,id=oxcd-target,target=/src/target,sharing=locked \
    find Cargo.toml build.rs proto src -type f -exec touch {} + \
 && export ROCKSDB_LIB_DIR="$(pkg-config --variable=libdir rocksdb 2>/dev/null || echo /usr/lib/x86_64-linux-gnu)" \
           ROCKSDB_INCLUDE_DIR="$(pkg-config --variable=includedir rocksdb 2>/dev/null || echo /usr/include)" \
 && OXCD_BUILD="${OXCD_BUILD}" cargo build --release --locked --bin oxcd \
 && mkdir -p /out \
 && strip --strip-debug -o /out/oxcd target/release/oxcd \
 && /out/oxcd --version

# ---------------------------------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE}
# The shared libraries the binary needs beyond libc: RocksDB (which brings its compression libraries)
# and libstdc++/libgcc (dependencies of librocksdb7.8). No ca-certificates: oxcd trusts only the CA
# files it is given (--trusted-ca-file and friends).
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends librocksdb7.8 >/dev/null \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt/* /var/log/dpkg.log \
 && groupadd --system --gid 10001 oxcd \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/oxcd --no-create-home \
      --shell /usr/sbin/nologin oxcd \
 && mkdir -p /var/lib/oxcd \
 && chown 10001:10001 /var/lib/oxcd \
 && chmod 0700 /var/lib/oxcd

COPY --from=builder /out/oxcd /usr/local/bin/oxcd
# Fails the build if a shared library is missing.
RUN if ldd /usr/local/bin/oxcd | grep 'not found'; then exit 1; fi \
 && /usr/local/bin/oxcd --version >/dev/null

# Only where to listen and where to keep data. The member's name, advertised URLs and initial
# cluster are derived from its pod identity or given as flags; ETCD_* variables would override that
# derivation, so the image sets none of them.
ENV ETCD_DATA_DIR=/var/lib/oxcd/data \
    ETCD_LISTEN_CLIENT_URLS=http://0.0.0.0:2379 \
    ETCD_LISTEN_PEER_URLS=http://0.0.0.0:2380 \
    ETCD_LISTEN_METRICS_URLS=http://0.0.0.0:2381
# 2379 clients, 2380 peers, 2381 /metrics and /livez /readyz /health.
EXPOSE 2379 2380 2381
VOLUME /var/lib/oxcd
WORKDIR /var/lib/oxcd
USER 10001:10001

ARG VERSION=0.1.0
# Where the source is (scripts/image.sh passes the clone's origin URL when it has one).
ARG SOURCE=""
LABEL org.opencontainers.image.title="oxcd" \
      org.opencontainers.image.description="An etcd-compatible, Raft-replicated key-value store" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"

ENTRYPOINT ["/usr/local/bin/oxcd"]
