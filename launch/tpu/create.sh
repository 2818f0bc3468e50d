#!/usr/bin/env bash
# Create a TPU VM slice (or reuse it when READY, recreate it when preempted) and install lnpo on it.
set -euo pipefail
USAGE="usage: launch/tpu/create.sh --name=NAME --zone=ZONE --accelerator-type=TYPE [options]

Creates the TPU VM slice NAME, or reuses it when it is READY (a PREEMPTED slice is
deleted and created again), then installs lnpo on every worker when the slice is new
(or always, with --install).

options:
  --project=P           gcloud project (default: gcloud's)
  --version=V           TPU software version (default: by accelerator type, e.g. v2-alpha-tpuv5 for v5p)
  --spot                create a Spot slice
  --install             install lnpo even on a reused slice
  --src=DIR --jax-spec=SPEC --setup=CMD   see install.sh
  --dry-run             print the commands instead of running them"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
parse_flags "$@"
need NAME ZONE
ensure_slice "$NAME"
if (( CREATED || INSTALL )); then install_lnpo "$NAME"; fi
