# Shared helpers for launch/tpu/*.sh (sourced, not run). Bash 4+.
#
# Every script parses its flags with parse_flags (the union of all scripts'
# flags; each script checks the ones it needs) and runs every gcloud command
# through `run`, which only prints the command under --dry-run.

# ---------------------------------------------------------------- defaults
NAME="" ZONE="" PROJECT="" ACCEL="" VERSION="" SPOT=0 DRY_RUN=0
CONFIG="" WORKDIR="" CMD="" INSTALL=0 MAX_RESTARTS=20 POLL_S="${LNPO_POLL_S:-30}"
SLICES="" COMMANDS="" SRC="" JAX_SPEC="jax[tpu]" SETUP_CMD=""
ENVS=() OVERRIDES=()
REMOTE_DIR='~/lnpo' REMOTE_VENV='~/lnpo-venv' REMOTE_LOGS='~/lnpo-logs'

die() { echo "$(basename "$0"): error: $*" >&2; exit 2; }

exec 3>&1  # the script's stdout, also from inside $(...): dry-run output and progress notes go there
note() { echo "# $*" >&3; }

# Quote one word for a POSIX shell only when it needs it (readable dry-run output);
# --flag=VALUE keeps the flag outside the quotes.
shquote() {
  local plain='^[A-Za-z0-9_./=:,@%+^-]+$'
  if [[ "$1" =~ $plain ]]; then printf '%s' "$1"
  elif [[ "$1" =~ ^(--[A-Za-z0-9._-]+=)(.*)$ ]]; then
    printf '%s' "${BASH_REMATCH[1]}"; shquote_always "${BASH_REMATCH[2]}"
  else shquote_always "$1"; fi
}
shquote_always() { printf "'%s'" "${1//\'/\'\\\'\'}"; }
join_quoted() { local out="" w; for w in "$@"; do out+="${out:+ }$(shquote "$w")"; done; printf '%s' "$out"; }

# run CMD...: execute, or print it (exactly, shell-quoted) under --dry-run.
run() {
  if (( DRY_RUN )); then join_quoted "$@" >&3; echo >&3; else "$@"; fi
}

parse_flags() {
  while (( $# )); do
    case "$1" in
      -h|--help) echo "$USAGE"; exit 0 ;;
      --dry-run) DRY_RUN=1 ;;
      --spot) SPOT=1 ;;
      --install) INSTALL=1 ;;
      --name=*) NAME="${1#*=}" ;;             --name) NAME="$2"; shift ;;
      --zone=*) ZONE="${1#*=}" ;;             --zone) ZONE="$2"; shift ;;
      --project=*) PROJECT="${1#*=}" ;;       --project) PROJECT="$2"; shift ;;
      --accelerator-type=*) ACCEL="${1#*=}" ;; --accelerator-type) ACCEL="$2"; shift ;;
      --version=*) VERSION="${1#*=}" ;;       --version) VERSION="$2"; shift ;;
      --config=*) CONFIG="${1#*=}" ;;         --config) CONFIG="$2"; shift ;;
      --workdir=*) WORKDIR="${1#*=}" ;;       --workdir) WORKDIR="$2"; shift ;;
      --cmd=*) CMD="${1#*=}" ;;               --cmd) CMD="$2"; shift ;;
      --max-restarts=*) MAX_RESTARTS="${1#*=}" ;; --max-restarts) MAX_RESTARTS="$2"; shift ;;
      --slices=*) SLICES="${1#*=}" ;;         --slices) SLICES="$2"; shift ;;
      --commands=*) COMMANDS="${1#*=}" ;;     --commands) COMMANDS="$2"; shift ;;
      --src=*) SRC="${1#*=}" ;;               --src) SRC="$2"; shift ;;
      --jax-spec=*) JAX_SPEC="${1#*=}" ;;     --jax-spec) JAX_SPEC="$2"; shift ;;
      --setup=*) SETUP_CMD="${1#*=}" ;;       --setup) SETUP_CMD="$2"; shift ;;
      --env=*) ENVS+=("${1#*=}") ;;           --env) ENVS+=("$2"); shift ;;
      --) shift; OVERRIDES=("$@"); break ;;
      *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
  done
}

need() { local v; for v in "$@"; do [[ -n "${!v}" ]] || die "--$(flag_of "$v") is required (see --help)"; done; }
flag_of() { case "$1" in ACCEL) echo accelerator-type ;; *) echo "${1,,}" ;; esac; }

# The TPU software version for an accelerator type (override with --version).
default_version() {
  case "$1" in
    v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-*|v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) die "no default --version for accelerator type '$1'; pass --version" ;;
  esac
}

# ---------------------------------------------------------------- gcloud
gc_loc() { GC_LOC=(--zone="$ZONE"); [[ -z "$PROJECT" ]] || GC_LOC+=(--project="$PROJECT"); }

# Prints the slice's state (READY, CREATING, PREEMPTED, ...) or NOT_FOUND.
# Under --dry-run it prints the describe command and reports
# $LNPO_DRY_RUN_STATE (default NOT_FOUND), so the printed plan covers creation.
slice_state() {
  local name="$1"; gc_loc
  local cmd=(gcloud compute tpus tpu-vm describe "$name" "${GC_LOC[@]}" --format='value(state)')
  if (( DRY_RUN )); then join_quoted "${cmd[@]}" >&3; echo >&3; echo "${LNPO_DRY_RUN_STATE:-NOT_FOUND}"; return; fi
  "${cmd[@]}" 2>/dev/null || echo NOT_FOUND
}

create_slice() {
  local name="$1" version="$VERSION"; gc_loc
  [[ -n "$version" ]] || version="$(default_version "$ACCEL")" || exit 2
  local cmd=(gcloud compute tpus tpu-vm create "$name" "${GC_LOC[@]}" --accelerator-type="$ACCEL" --version="$version")
  (( SPOT )) && cmd+=(--spot)
  run "${cmd[@]}"
}

delete_slice() {
  local name="$1"; gc_loc
  run gcloud compute tpus tpu-vm delete "$name" "${GC_LOC[@]}" --quiet
}

# ensure_slice NAME: reuse a READY slice, recreate a preempted one, create a missing one, then
# wait until it is READY. Sets CREATED=1 when the slice is new (it then needs lnpo installed).
# Returns non-zero when the slice could not be created (no capacity, quota, ...).
ensure_slice() {
  local name="$1" state
  CREATED=0
  state="$(slice_state "$name")"
  case "$state" in
    READY) note "reusing slice $name (READY)"; return 0 ;;
    CREATING|STARTING|RESTARTING|REPAIRING) note "slice $name is $state: waiting for READY" ;;
    NOT_FOUND|"") note "creating slice $name" ;;
    *) note "slice $name is $state: recreating it"; delete_slice "$name" || true ;;
  esac
  case "$state" in
    CREATING|STARTING|RESTARTING|REPAIRING) ;;
    *) [[ -n "$ACCEL" ]] || die "slice $name does not exist: --accelerator-type is required to create it"
       create_slice "$name" || { note "could not create slice $name"; return 1; }
       CREATED=1 ;;
  esac
  (( DRY_RUN )) && return 0
  while :; do
    state="$(slice_state "$name")"
    case "$state" in
      READY) return 0 ;;
      CREATING|STARTING|RESTARTING|REPAIRING) sleep "$POLL_S" ;;
      *) note "slice $name is $state after creation"; return 1 ;;
    esac
  done
}

# ssh_all NAME REMOTE_COMMAND: run a shell command on every worker of the slice.
ssh_all() {
  local name="$1" remote="$2"; gc_loc
  run gcloud compute tpus tpu-vm ssh "$name" "${GC_LOC[@]}" --worker=all --command="$remote"
}

# install_lnpo NAME: copy the source tree to every worker and pip-install it (editable) into a venv.
install_lnpo() {
  local name="$1" src="${SRC:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}" tarball
  tarball="${TMPDIR:-/tmp}/lnpo-src-$name.tar.gz"; gc_loc
  run tar -czf "$tarball" --exclude=.git --exclude=runs --exclude=.venv --exclude='*.pyc' -C "$src" . || return
  run gcloud compute tpus tpu-vm scp "$tarball" "$name:lnpo-src.tar.gz" "${GC_LOC[@]}" --worker=all || return
  local remote="rm -rf $REMOTE_DIR && mkdir -p $REMOTE_DIR $REMOTE_LOGS && tar -xzf ~/lnpo-src.tar.gz -C $REMOTE_DIR"
  remote+=" && python3 -m venv $REMOTE_VENV && $REMOTE_VENV/bin/pip install -q -U pip"
  remote+=" && $REMOTE_VENV/bin/pip install -q $(shquote "$JAX_SPEC") -e $REMOTE_DIR"
  [[ -z "$SETUP_CMD" ]] || remote+=" && ($SETUP_CMD)"
  ssh_all "$name" "$remote"
}

# The lnpo.main command line from --config/--workdir/-- overrides, or --cmd verbatim.
main_command() {
  if [[ -n "$CMD" ]]; then
    [[ "$CMD" == "python -m lnpo.main "* ]] || die "--cmd must start with 'python -m lnpo.main ' (got: $CMD)"
    printf '%s' "$CMD"; return
  fi
  need CONFIG WORKDIR
  join_quoted python -m lnpo.main "--config=$CONFIG" "--workdir=$WORKDIR" "${OVERRIDES[@]}"
}

# remote_run_command MAIN_CMD LOG_NAME: what every worker runs. Worker 0 streams its
# output (and the exit status of lnpo.main) back; the others log to ~/lnpo-logs/.
remote_run_command() {
  local main="$1" log="$REMOTE_LOGS/$2.log" env="" e
  for e in "${ENVS[@]}"; do env+="export $(shquote "$e") && "; done
  local worker='W=$(curl -s -m 10 -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || echo 0)'
  printf '%s' "test -x $REMOTE_VENV/bin/python || { echo \"lnpo is not installed on \$(hostname): run launch/tpu/install.sh\"; exit 3; }"
  printf '%s' " && mkdir -p $REMOTE_LOGS && cd $REMOTE_DIR && source $REMOTE_VENV/bin/activate && ${env}$worker"
  printf '%s' " && lnpo_run() { $main; } && if [ \"\$W\" = 0 ]; then lnpo_run 2>&1 | tee -a $log; exit \${PIPESTATUS[0]}; else lnpo_run >> $log 2>&1; fi"
}

# run_with_restarts NAME MAIN_CMD LOG_NAME: run on every worker; after a preemption (the slice
# is gone or not READY, or lnpo.main exits 75) recreate the slice and rerun the same command,
# which resumes from the workdir's latest checkpoint. A slice that cannot be created (no
# capacity) is retried too. Other failures stop the loop. At most MAX_RESTARTS retries.
run_with_restarts() {
  local name="$1" main="$2" logname="$3" attempt=0 rc state
  while :; do
    rc=0
    if ! ensure_slice "$name"; then
      rc=1
    elif (( CREATED || INSTALL )) && ! install_lnpo "$name"; then
      rc=1; [[ "$(slice_state "$name")" == READY ]] && { note "$logname: installing lnpo failed"; return 1; }
    else
      INSTALL=0
      ssh_all "$name" "$(remote_run_command "$main" "$logname")" || rc=$?
      if (( DRY_RUN )); then
        note "on failure: if slice $name is PREEMPTED/gone or lnpo.main exits 75, recreate it and rerun (at most $MAX_RESTARTS times)"
        return 0
      fi
      (( rc == 0 )) && { note "$logname: done on slice $name"; return 0; }
      state="$(slice_state "$name")"
      if [[ $rc != 75 && "$state" == READY ]]; then
        note "$logname: lnpo.main failed with exit $rc on a healthy slice: not retrying (see $REMOTE_LOGS/$logname.log on each worker)"
        return "$rc"
      fi
    fi
    attempt=$((attempt + 1))
    if (( attempt > MAX_RESTARTS )); then note "$logname: giving up after $MAX_RESTARTS restarts"; return "$rc"; fi
    note "$logname: preempted or no slice (exit $rc): restart $attempt/$MAX_RESTARTS"
    sleep "$POLL_S"
  done
}

log_name_for() {  # a log file name from the command's --workdir (or a hash of the command)
  local wd
  wd="$(sed -n 's/.*--workdir=\([^ ]*\).*/\1/p' <<<"$1" | tr -d "'\"")"
  if [[ -n "$wd" ]]; then basename "$wd"; else printf 'run-%s' "$(cksum <<<"$1" | cut -d' ' -f1)"; fi
}
