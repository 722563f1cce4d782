#!/usr/bin/env bash
# One node, all its GPUs (or N CPU processes with gloo):
#   launch/single_node.sh configs/david.yaml [--set key=value ...]
# Variables: NPROC (processes, default: visible GPUs, else 1), MAX_RESTARTS (default 3).
set -euo pipefail
config=${1:?usage: launch/single_node.sh CONFIG [--set KEY=VALUE ...]}
shift
if [[ -z "${NPROC:-}" ]]; then
  NPROC=$(python -c 'import torch; print(max(torch.cuda.device_count(), 1))')
fi
# --standalone: a private c10d rendezvous on a free local port; restarts resume from the
# latest checkpoint because resume_from_checkpoint is forced to auto.
exec torchrun --standalone --nproc_per_node="$NPROC" --max-restarts="${MAX_RESTARTS:-3}" \
  -m dist_seg.train "$config" --set training.resume_from_checkpoint=auto "$@"
