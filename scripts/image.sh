#!/usr/bin/env bash
# Builds the oxcd container image from the top-level Dockerfile: `make image` or scripts/image.sh.
#
# No container registry is reachable on our machines (a fresh one has a Docker engine and no images),
# so this first makes local stand-ins for the two public base images the Dockerfile names, under the
# same names, each only if missing:
#   debian:bookworm-slim  debootstrap --variant=minbase bookworm, imported with `docker import`
#   rust:1.95-bookworm    that base plus gcc, libc6-dev, ca-certificates (with this machine's extra CA
#                         certificates, as crates.io is reached through a proxy with its own CA) and a
#                         copy of this machine's Rust toolchain
# then builds oxcd:<Cargo.toml version> and oxcd:latest with BuildKit (cache mounts keep the cargo
# registry and the target directory between builds, so a source change recompiles only oxcd).
# Where the real images exist (pulled, or loaded), they are used as they are.
#
# Usage: scripts/image.sh [--tag NAME]... [--base-only] [--rebuild-base]
#   --tag NAME      tag the image NAME instead of oxcd:<version> and oxcd:latest (repeatable);
#                   env OXCD_IMAGE=NAME does the same for one tag
#   --base-only     make the base images and stop
#   --rebuild-base  remake both stand-in base images even if they exist
# Env: OXCD_BUILD (a build label: the binary reports <version>+<label>, as two builds of one version
#      need to be told apart in an upgrade), DOCKER (a docker client to use), OXCD_DEBIAN_MIRROR (default http://deb.debian.org/debian),
#      OXCD_IMAGE_VERBOSE=1 (stream the build's output instead of logging it to target/image-build.log).
set -euo pipefail
cd "$(dirname "$0")/.."

BUILDER_IMAGE=rust:1.95-bookworm
RUNTIME_IMAGE=debian:bookworm-slim
MIRROR="${OXCD_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm

say() { echo "image: $*"; }
die() { echo "image: error: $*" >&2; exit 1; }

tags=()
base_only=0
rebuild_base=0
while [ $# -gt 0 ]; do
  case "$1" in
    --tag|-t) [ $# -ge 2 ] || die "--tag needs a name"; tags+=("$2"); shift 2 ;;
    --tag=*) tags+=("${1#--tag=}"); shift ;;
    --base-only) base_only=1; shift ;;
    --rebuild-base) rebuild_base=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

# One run at a time (tests call this script too): the base images are made once and builds queue.
# Not the tests' own lock file (they hold that one while this runs).
exec 9>"${TMPDIR:-/tmp}/oxcd-image-script.lock"
if ! flock -n 9; then say "waiting for another scripts/image.sh to finish"; flock 9; fi

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

# The package's version, from the [package] table of Cargo.toml.
version=$(awk -F'"' '/^\[/{p=($0=="[package]")} p && /^version *=/{print $2; exit}' Cargo.toml)
[ -n "$version" ] || die "no version in Cargo.toml"
if [ "${#tags[@]}" -eq 0 ]; then
  if [ -n "${OXCD_IMAGE:-}" ]; then tags=("$OXCD_IMAGE"); else tags=("oxcd:$version" "oxcd:latest"); fi
fi

# A docker client that can run a BuildKit build (RUN --mount=type=cache): one with the buildx plugin,
# or a client older than 23.0 (such as Debian bookworm's docker.io 20.10), whose DOCKER_BUILDKIT=1
# build talks to the engine's own BuildKit. Newer clients without buildx refuse BuildKit builds.
pick_docker() {
  local c major cands=()
  [ -n "${DOCKER:-}" ] && cands+=("$DOCKER")
  c=$(command -v docker 2>/dev/null || true)
  [ -n "$c" ] && cands+=("$c")
  cands+=(/usr/bin/docker /usr/local/bin/docker)
  for c in "${cands[@]}"; do
    [ -x "$c" ] || continue
    if "$c" buildx version >/dev/null 2>&1; then echo "$c"; return 0; fi
    major=$("$c" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1 || true)
    if [[ "$major" =~ ^[0-9]+$ ]] && [ "$major" -lt 23 ]; then echo "$c"; return 0; fi
  done
  return 1
}
DOCKER_BIN=$(pick_docker) || die "no docker client here can run a BuildKit build: install the buildx plugin (docker-buildx-plugin) or Debian's docker.io"
export DOCKER_BUILDKIT=1
docker_() { "$DOCKER_BIN" "$@"; }
docker_ info >/dev/null 2>&1 || die "the Docker engine does not answer ($DOCKER_BIN info)"

have_image() { docker_ image inspect "$1" >/dev/null 2>&1; }

# Runs a build with its output in a log, shown (the end of it) only when it fails.
LOG_DIR=target
mkdir -p "$LOG_DIR"
run_build() {
  local log="$1"; shift
  if [ "${OXCD_IMAGE_VERBOSE:-0}" = 1 ]; then
    docker_ build --progress=plain "$@"
  elif ! docker_ build --progress=plain "$@" >"$log" 2>&1; then
    tail -n 80 "$log" >&2
    die "docker build failed; whole log: $log"
  fi
}

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/oxcd-image.XXXXXX")
cleanup() {
  # debootstrap may leave /proc and /sys mounted in the rootfs if it is interrupted.
  if [ -d "$WORK/rootfs" ]; then
    for m in proc sys dev/pts dev; do
      mountpoint -q "$WORK/rootfs/$m" 2>/dev/null && $SUDO umount -l "$WORK/rootfs/$m" || true
    done
  fi
  $SUDO rm -rf "$WORK"
}
trap cleanup EXIT

# --- debian:bookworm-slim -------------------------------------------------------------------------
make_debian_base() {
  if ! command -v debootstrap >/dev/null 2>&1; then
    say "apt-get install debootstrap"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq debootstrap >/dev/null
  fi
  local root="$WORK/rootfs" start=$SECONDS
  say "making $RUNTIME_IMAGE: debootstrap --variant=minbase $SUITE ($MIRROR)"
  if ! $SUDO debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >"$WORK/debootstrap.log" 2>&1; then
    tail -n 30 "$WORK/debootstrap.log" >&2
    [ -f "$root/debootstrap/debootstrap.log" ] && tail -n 30 "$root/debootstrap/debootstrap.log" >&2
    die "debootstrap failed"
  fi
  # As the official image: the three suites, no documentation or translations in later installs,
  # and apt's downloaded packages removed after each install.
  $SUDO rm -f "$root/etc/apt/sources.list"
  $SUDO tee "$root/etc/apt/sources.list.d/debian.sources" >/dev/null <<EOF
Types: deb
URIs: ${MIRROR}
Suites: ${SUITE} ${SUITE}-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${MIRROR%/debian}/debian-security
Suites: ${SUITE}-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  $SUDO tee "$root/etc/dpkg/dpkg.cfg.d/docker" >/dev/null <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
EOF
  $SUDO tee "$root/etc/apt/apt.conf.d/docker-clean" >/dev/null <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'Acquire::Languages "none";' | $SUDO tee "$root/etc/apt/apt.conf.d/docker-no-languages" >/dev/null
  (
    cd "$root"
    $SUDO find usr/share/doc -mindepth 1 -not -name copyright -not -type d -delete
    $SUDO find usr/share/doc -mindepth 1 -type d -empty -delete
    $SUDO rm -rf usr/share/man/* usr/share/info/* usr/share/locale/* usr/share/lintian \
      var/cache/apt/*.bin var/cache/apt/archives/*.deb var/lib/apt/lists/* var/log/*.log \
      var/log/apt/* debootstrap tmp/* root/.bash_history
    : | $SUDO tee etc/hostname >/dev/null
  )
  $SUDO tar --numeric-owner -C "$root" -c . |
    docker_ import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["bash"]' \
      --message "oxcd stand-in: debootstrap --variant=minbase $SUITE" \
      - "$RUNTIME_IMAGE" >/dev/null
  $SUDO rm -rf "$root"
  say "made $RUNTIME_IMAGE in $((SECONDS - start)) s"
}

# --- rust:1.95-bookworm ---------------------------------------------------------------------------
make_rust_base() {
  command -v rustc >/dev/null 2>&1 || die "$BUILDER_IMAGE is missing and there is no Rust toolchain here to make it from"
  local sysroot rust_version want ctx="$WORK/rust" start=$SECONDS
  sysroot=$(rustc --print sysroot)
  rust_version=$(rustc --version | awk '{print $2}')
  [ -x "$sysroot/bin/cargo" ] || die "no cargo beside rustc in $sysroot"
  want=${BUILDER_IMAGE#rust:}; want=${want%%-*}
  case "$rust_version" in
    "$want"|"$want".*) ;;
    *) say "warning: this machine's Rust is $rust_version; the stand-in is still tagged $BUILDER_IMAGE" ;;
  esac
  say "making $BUILDER_IMAGE: $RUNTIME_IMAGE + gcc + Rust $rust_version from $sysroot"
  mkdir -p "$ctx/toolchain" "$ctx/ca"
  local d
  for d in bin lib libexec etc; do
    [ -d "$sysroot/$d" ] || continue
    # Hard links when the temp dir is on the same file system: no 700 MB copy.
    cp -al "$sysroot/$d" "$ctx/toolchain/" 2>/dev/null || cp -a "$sysroot/$d" "$ctx/toolchain/"
  done
  if [ -d /usr/local/share/ca-certificates ]; then
    find /usr/local/share/ca-certificates -name '*.crt' -type f -exec cp {} "$ctx/ca/" \;
  fi
  cat >"$ctx/Dockerfile" <<EOF
FROM $RUNTIME_IMAGE
RUN apt-get update -qq \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \\
      ca-certificates gcc libc6-dev >/dev/null \\
 && rm -rf /var/lib/apt/lists/*
COPY ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
COPY toolchain/ /usr/local/
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo RUST_VERSION=$rust_version \\
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN mkdir -p /usr/local/cargo/bin && cargo --version && rustc --version
LABEL org.opencontainers.image.description="oxcd stand-in for $BUILDER_IMAGE: Debian $SUITE + gcc + Rust $rust_version"
EOF
  run_build "$LOG_DIR/image-base-build.log" -t "$BUILDER_IMAGE" "$ctx"
  docker_ run --rm "$BUILDER_IMAGE" cargo --version >/dev/null || die "$BUILDER_IMAGE has no working cargo"
  rm -rf "$ctx"
  say "made $BUILDER_IMAGE in $((SECONDS - start)) s"
}

if [ "$rebuild_base" = 1 ]; then
  docker_ image rm "$BUILDER_IMAGE" "$RUNTIME_IMAGE" >/dev/null 2>&1 || true
fi
have_image "$RUNTIME_IMAGE" || make_debian_base
have_image "$BUILDER_IMAGE" || make_rust_base
[ "$base_only" = 1 ] && exit 0

# --- oxcd -----------------------------------------------------------------------------------------
tag_args=()
source_url=$(git remote get-url origin 2>/dev/null || true)
case "$source_url" in http://*|https://*) ;; *) source_url="" ;; esac
source_url=$(printf '%s' "$source_url" | sed -E 's#^(https?://)[^@/]*@#\1#')  # no credentials
for t in "${tags[@]}"; do tag_args+=(-t "$t"); done
say "building ${tags[*]} with $DOCKER_BIN (log: $LOG_DIR/image-build.log)"
start=$SECONDS
label_version="$version${OXCD_BUILD:+-$OXCD_BUILD}"
run_build "$LOG_DIR/image-build.log" \
  --build-arg "VERSION=$label_version" \
  --build-arg "OXCD_BUILD=${OXCD_BUILD:-}" \
  --build-arg "SOURCE=$source_url" \
  --build-arg "BUILDER_IMAGE=$BUILDER_IMAGE" \
  --build-arg "RUNTIME_IMAGE=$RUNTIME_IMAGE" \
  "${tag_args[@]}" .
size=$(docker_ image inspect -f '{{.Size}}' "${tags[0]}")
say "built ${tags[*]} in $((SECONDS - start)) s: $((size / 1000000)) MB"
