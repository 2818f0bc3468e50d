#!/usr/bin/env bash
# Delete TPU VM slices.
set -euo pipefail
USAGE="usage: launch/tpu/teardown.sh --name=NAME --zone=ZONE [--project=P] [--dry-run]
       launch/tpu/teardown.sh --slices=NAME1,NAME2 --zone=ZONE ...

Deletes the slices (gcloud compute tpus tpu-vm delete --quiet). The workdirs (checkpoints,
exports) live outside the slice and are kept."
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
parse_flags "$@"
[[ -n "$SLICES" ]] || SLICES="$NAME"
need SLICES ZONE
IFS=, read -r -a slices <<<"$SLICES"
for name in "${slices[@]}"; do delete_slice "$name"; done
