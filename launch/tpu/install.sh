#!/usr/bin/env bash
# Install lnpo (this source tree, editable) into ~/lnpo-venv on every worker of a slice.
set -euo pipefail
USAGE="usage: launch/tpu/install.sh --name=NAME --zone=ZONE [options]

Copies the source tree to ~/lnpo on every worker (gcloud ... scp --worker=all), then
creates ~/lnpo-venv and pip-installs JAX for TPU and lnpo (editable) there.

options:
  --project=P        gcloud project
  --src=DIR          source tree to ship (default: this repository, without .git and runs/)
  --jax-spec=SPEC    pip requirement for JAX (default: 'jax[tpu]')
  --setup=CMD        extra shell command run on every worker after the install
                     (e.g. mounting the bucket that holds the workdir)
  --dry-run          print the commands instead of running them"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
parse_flags "$@"
need NAME ZONE
install_lnpo "$NAME"
