#!/usr/bin/env bash
# Run one lnpo training on every worker of a slice; recreate the slice and rerun after preemption.
set -euo pipefail
USAGE="usage: launch/tpu/train.sh --name=NAME --zone=ZONE --accelerator-type=TYPE \\
           --config=configs/lndpo.py --workdir=DIR [options] [-- --config.FIELD=VALUE ...]
       launch/tpu/train.sh --name=NAME --zone=ZONE ... --cmd='python -m lnpo.main ...'

Creates (or reuses) the slice, installs lnpo when the slice is new, and runs
  python -m lnpo.main --config=CONFIG --workdir=DIR [overrides]
on every worker (gcloud compute tpus tpu-vm ssh --worker=all), streaming worker 0's
output; every worker also logs to ~/lnpo-logs/<workdir name>.log. The config path is
relative to the shipped source tree. DIR must be one path every worker sees (a shared
disk, or a bucket path) so that all workers write one checkpoint.

If the run stops because the slice was preempted (the slice is PREEMPTED or gone, or
lnpo.main exits 75), the slice is recreated and the same command rerun: the trainer
resumes from DIR's latest checkpoint. Any other failure stops.

options:
  --project=P  --version=V  --spot   as in create.sh
  --install           reinstall lnpo before the first run
  --env=K=V           export K=V on every worker before the run (repeatable)
  --max-restarts=N    give up after N preemptions (default 20)
  --dry-run           print the commands instead of running them"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
parse_flags "$@"
need NAME ZONE
main="$(main_command)"
run_with_restarts "$NAME" "$main" "$(log_name_for "$main")"
