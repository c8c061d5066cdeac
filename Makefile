# oxcd's two entry points for a newcomer: `make run` and `make test`. Both install what they need.
SHELL := /bin/bash
ROCKSDB_LIB_DIR ?= $(shell pkg-config --variable=libdir rocksdb 2>/dev/null || echo /usr/lib/x86_64-linux-gnu)
ROCKSDB_INCLUDE_DIR ?= $(shell pkg-config --variable=includedir rocksdb 2>/dev/null || echo /usr/include)
PY_SCRIPTS := $(shell python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
export ROCKSDB_LIB_DIR ROCKSDB_INCLUDE_DIR
export ETCDCTL ?= $(PY_SCRIPTS)/etcdctl
export ETCD ?= $(PY_SCRIPTS)/etcd

.PHONY: deps run build cluster test lint bench

deps:
	@scripts/install-deps.sh

## Start a single-member server on 127.0.0.1:2379 with data in ./default.oxcd (like `etcd`).
run: deps
	cargo run --release --bin oxcd -- $(ARGS)

build: deps
	cargo build --release --bins

## A local three-member cluster: the Procfile's infra1..3 on 127.0.0.1, clients on 2379/22379/32379.
cluster: build
	scripts/cluster.sh

lint: deps
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --all-targets --features failpoints -- -D warnings

## The whole test suite: format, lints, unit, property and integration tests (with failpoints
## compiled in, for the reliability campaign's short slices). The container images the Kubernetes
## tests run are built first (under the tests' own lock), so that their release build does not
## compete with the timing of the tests running beside them.
IMAGE_LOCK := $(or $(TMPDIR),/tmp)/oxcd-image.lock
test: lint
	flock $(IMAGE_LOCK) scripts/image.sh
	OXCD_BUILD=next flock $(IMAGE_LOCK) scripts/image.sh --tag oxcd:it-next
	cargo nextest run --no-fail-fast --features failpoints

## The reliability campaign against oxcd and the real etcd: OPS operations in all (a million by
## default), the matrix printed and written to chaos-matrix.md. SERVERS=oxcd,etcd FAULTS=a,b narrow it;
## a history with violations is written to DUMP (a directory, chaos-histories by default).
OPS ?= 1000000
SERVERS ?= oxcd,etcd
FAULTS ?=
DUMP ?= chaos-histories
.PHONY: chaos
chaos: deps
	OXCD_CHAOS_OPS=$(OPS) OXCD_CHAOS_SERVERS=$(SERVERS) OXCD_CHAOS_FAULTS=$(FAULTS) OXCD_CHAOS_DUMP=$(DUMP) \
	  cargo nextest run --features failpoints --run-ignored only --no-capture chaos::campaign

## Side-by-side load comparison with the real etcd (release builds).
bench: deps
	scripts/bench.sh

## Data-scale comparison with the real etcd (release builds): ARGS="--keys=1000000" by default.
.PHONY: bench-scale
bench-scale: deps
	cargo build --release --bins
	python3 scripts/bench_scale.py --bin-dir "$${CARGO_TARGET_DIR:-target}/release" $(ARGS)

## The container image oxcd:<version> and oxcd:latest (makes local base images where no registry is reachable).
.PHONY: image
image:
	scripts/image.sh $(ARGS)
