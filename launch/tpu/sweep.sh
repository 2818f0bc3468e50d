#!/usr/bin/env bash
# Run a sweep's lnpo.main commands round-robin over one or several slices.
set -euo pipefail
USAGE="usage: python -m lnpo.sweep ... --print_commands > runs.txt
       launch/tpu/sweep.sh --slices=NAME1,NAME2 --zone=ZONE --accelerator-type=TYPE --commands=runs.txt [options]
       python -m lnpo.sweep ... --print_commands | launch/tpu/sweep.sh --slices=NAME --zone=ZONE ... --commands=-

Reads one 'python -m lnpo.main ...' command per line (blank lines and # comments are
skipped) and gives line i to slice i mod (number of slices). Each slice runs its
commands one after another, exactly as train.sh runs one (create or reuse the slice,
install lnpo when new, rerun after preemption); the slices run in parallel. Give every
command its own --workdir.

options:
  --project=P  --version=V  --spot  --install  --env=K=V  --max-restarts=N   as in train.sh
  --dry-run    print the commands instead of running them"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
parse_flags "$@"
[[ -n "$SLICES" ]] || SLICES="$NAME"
need SLICES ZONE COMMANDS
IFS=, read -r -a slices <<<"$SLICES"

lines=()
while IFS= read -r line || [[ -n "$line" ]]; do
  line="${line#"${line%%[![:space:]]*}"}"; line="${line%"${line##*[![:space:]]}"}"
  [[ -z "$line" || "$line" == \#* ]] && continue
  [[ "$line" == "python -m lnpo.main "* ]] || die "not an lnpo.main command: $line"
  lines+=("$line")
done < <(if [[ "$COMMANDS" == - ]]; then cat; else cat -- "$COMMANDS"; fi)
(( ${#lines[@]} )) || die "no commands in ${COMMANDS/#-/stdin}"

# run_slice I: the commands i, i+n, i+2n, ... on slice I, one after another.
run_slice() {
  local s="$1" name="${slices[$1]}" i failed=0
  for (( i = s; i < ${#lines[@]}; i += ${#slices[@]} )); do
    echo "# slice $name: run $((i + 1))/${#lines[@]}: ${lines[$i]}"
    run_with_restarts "$name" "${lines[$i]}" "$(log_name_for "${lines[$i]}")" || failed=$((failed + 1))
  done
  return "$failed"
}

if (( DRY_RUN )); then
  for s in "${!slices[@]}"; do run_slice "$s"; done
  exit 0
fi
pids=()
for s in "${!slices[@]}"; do run_slice "$s" > >(sed -u "s/^/[${slices[$s]}] /") 2>&1 & pids+=($!); done
status=0
for s in "${!pids[@]}"; do wait "${pids[$s]}" || { echo "# slice ${slices[$s]}: $? run(s) failed" >&2; status=1; }; done
exit "$status"
