#!/usr/bin/env bash
# One node, all its GPUs (or N CPU processes with gloo):
#   launch/single_node.sh configs/david.yaml [--set key=value ...]
# Variables:
#   NPROC         processes (default: visible GPUs, else 1)
#   MAX_RESTARTS  times torchrun restarts the workers after a failure (default 3)
#   TORCH_ELASTIC_SHUTDOWN_TIMEOUT  seconds workers get to checkpoint after SIGTERM/SIGUSR1 (default 90)
# Any other torchrun option can be set as PET_<OPTION>, e.g. PET_LOG_DIR=logs PET_REDIRECTS=3.
set -euo pipefail
config=${1:?usage: launch/single_node.sh CONFIG [--set KEY=VALUE ...]}
shift
if [[ -z "${NPROC:-}" ]]; then
  NPROC=$(python -c 'import torch; print(max(torch.cuda.device_count(), 1))')
fi
# A restarted worker group must not share the rendezvous store of the failed one: stale
# addresses left there make the new group's process-group setup fail at random
# (pytorch/pytorch#135712). With this, every restart gets a fresh store.
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}
# Forward SIGUSR1 as well as SIGTERM to the workers (both mean "checkpoint and stop"), and
# leave them time to finish the step and write the checkpoint before torchrun SIGKILLs them.
export PET_SIGNALS_TO_HANDLE=${PET_SIGNALS_TO_HANDLE:-SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1}
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-90}
# --standalone: a private c10d rendezvous on a free local port; restarts resume from the
# latest checkpoint because resume_from_checkpoint is forced to auto.
exec torchrun --standalone --nproc_per_node="$NPROC" --max-restarts="${MAX_RESTARTS:-3}" \
  -m dist_seg.train "$config" --set training.resume_from_checkpoint=auto "$@"
