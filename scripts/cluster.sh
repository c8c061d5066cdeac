#!/usr/bin/env bash
# Runs every `name: command` line of a Procfile (default: the repository's, three oxcd members) in
# the background, prefixes each line of output with the process name, forwards SIGINT/SIGTERM to the
# members and waits for all of them. No Procfile runner (goreman, foreman) needed.
#
#   PROCFILE  the Procfile to run (default: Procfile at the repository root). Members run in the
#             Procfile's directory, so their data directories land next to it.
#   OXCD_BIN  the oxcd binary that replaces a leading `target/release/oxcd` in each command
#             (default: target/release/oxcd of this repository, or $CARGO_TARGET_DIR/release/oxcd).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
procfile=${PROCFILE:-$root/Procfile}
if [ ! -f "$procfile" ]; then
  echo "cluster.sh: no Procfile at $procfile" >&2
  exit 2
fi
procfile_dir=$(cd "$(dirname "$procfile")" && pwd)
procfile="$procfile_dir/$(basename "$procfile")"

target_dir=${CARGO_TARGET_DIR:-target}
case "$target_dir" in /*) ;; *) target_dir="$root/$target_dir" ;; esac
oxcd_bin=${OXCD_BIN:-$target_dir/release/oxcd}
# Members run in the Procfile's directory: make a relative binary path absolute.
if [[ "$oxcd_bin" == */* && "$oxcd_bin" != /* ]] && [ -d "$(dirname "$oxcd_bin")" ]; then
  oxcd_bin="$(cd "$(dirname "$oxcd_bin")" && pwd)/$(basename "$oxcd_bin")"
fi
if [ ! -x "$oxcd_bin" ]; then
  echo "cluster.sh: $oxcd_bin is not an executable; run \`make build\` or set OXCD_BIN" >&2
  exit 2
fi

# Parse the Procfile: `name: command`, skipping blank lines and comments.
names=()
cmds=()
while IFS= read -r line || [ -n "$line" ]; do
  [[ "$line" =~ ^[[:space:]]*(#|$) ]] && continue
  if [[ "$line" =~ ^([A-Za-z0-9_.-]+):[[:space:]]*(.+)$ ]]; then
    cmd=${BASH_REMATCH[2]}
    if [[ "$cmd" == target/release/oxcd || "$cmd" == "target/release/oxcd "* ]]; then
      cmd="$(printf '%q' "$oxcd_bin")${cmd#target/release/oxcd}"
    fi
    names+=("${BASH_REMATCH[1]}")
    cmds+=("$cmd")
  else
    echo "cluster.sh: $procfile: cannot parse line: $line" >&2
    exit 2
  fi
done <"$procfile"
if [ "${#names[@]}" -eq 0 ]; then
  echo "cluster.sh: $procfile has no processes" >&2
  exit 2
fi

width=0
for n in "${names[@]}"; do
  [ "${#n}" -gt "$width" ] && width=${#n}
done

# Prefixes each line of stdin with the process name. It ignores INT/TERM so that a Ctrl-C on the
# terminal still lets the members' last (shutdown) lines through.
prefix() {
  trap '' INT TERM
  local line
  while IFS= read -r line || [ -n "$line" ]; do
    printf '%-*s | %s\n' "$width" "$1" "$line"
  done
}

pids=()
prefixers=()
forward() {
  echo "cluster.sh: SIG$1: stopping ${names[*]}" >&2
  for p in "${pids[@]}"; do
    kill -s "$1" "$p" 2>/dev/null || true
  done
}
trap 'forward INT' INT
trap 'forward TERM' TERM

cd "$procfile_dir"
for i in "${!names[@]}"; do
  printf '%-*s | %s\n' "$width" "${names[$i]}" "started: ${cmds[$i]}"
  # The prefixer is this script's child (not the member's), so it can be waited for at the end.
  exec {out}> >(prefix "${names[$i]}")
  prefixers+=("$!")
  # `exec` makes the recorded pid the member itself, so signals reach it directly.
  bash -c "exec ${cmds[$i]}" >&"$out" 2>&1 {out}>&- &
  pids+=("$!")
  exec {out}>&-
done

status=0
for i in "${!pids[@]}"; do
  while :; do
    rc=0
    wait "${pids[$i]}" || rc=$?
    # A trapped signal interrupts `wait` (rc > 128) while the member is still running: wait again.
    kill -0 "${pids[$i]}" 2>/dev/null || break
  done
  printf '%-*s | %s\n' "$width" "${names[$i]}" "exited with status $rc"
  [ "$rc" -ne 0 ] && status=$rc
done
# Let the prefixers print the members' last lines (they end when the members' output closes).
for p in "${prefixers[@]}"; do
  for _ in {1..50}; do
    kill -0 "$p" 2>/dev/null || break
    sleep 0.1
  done
done
exit "$status"
