#!/usr/bin/env bash
# One torchrun agent per node, configured by whatever started the node. The container command of
# launch/k8s/pytorchjob.yaml and launch/k8s/trainjob.yaml and the run command of launch/skypilot.yaml:
#   launch/entrypoint.sh CONFIG [--set KEY=VALUE ...]
# See docs/launchers.md. torchrun reads every PET_<OPTION> variable as the default of --<option>;
# this script only fills in the ones the platform leaves unset, then runs
#   torchrun -m dist_seg.train CONFIG --set training.resume_from_checkpoint=auto [--set ...]
# Where the topology comes from:
#   Kubeflow PyTorchJob with elasticPolicy (training-operator v1): PET_RDZV_ENDPOINT
#     (<job>-worker-0:<pytorchjob-port>), PET_RDZV_BACKEND, PET_NNODES (MIN:MAX), PET_MAX_RESTARTS,
#     optionally PET_NPROC_PER_NODE and PET_RDZV_ID; used as they are.
#   Kubeflow Trainer TrainJob (torch-distributed runtime): PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK,
#     PET_MASTER_ADDR, PET_MASTER_PORT; the master address becomes a c10d rendezvous endpoint.
#   SkyPilot: SKYPILOT_NODE_RANK, SKYPILOT_NODE_IPS (one per line, head first), SKYPILOT_NUM_NODES,
#     SKYPILOT_NUM_GPUS_PER_NODE; translated to PET_* (rendezvous on the head node, MASTER_PORT or 29500).
#   By hand: MASTER_ADDR [MASTER_PORT] [NNODES], like launch/multi_node.sh.
#   Nothing of the above: one node (torchrun --standalone).
# Other variables:
#   PET_NPROC_PER_NODE  processes per node (default: visible GPUs, else 1)
#   PET_MAX_RESTARTS    worker-group restarts after a failure (default 3)
#   PET_LOCAL_ADDR      the address other nodes reach this one by (the pod IP, the node's IP)
#   TORCH_ELASTIC_SHUTDOWN_TIMEOUT  seconds workers get to checkpoint after SIGTERM/SIGUSR1 (default 90)
# training.output_dir must be on storage every node sees (a ReadWriteMany volume, a bucket mount);
# dataset.cache_dir is best on fast node-local disk: each node builds its own cache once.
set -euo pipefail
config=${1:?usage: launch/entrypoint.sh CONFIG [--set KEY=VALUE ...]}
shift

if [[ -n "${SKYPILOT_NODE_RANK:-}" ]]; then
  : "${SKYPILOT_NODE_IPS:?SKYPILOT_NODE_IPS is not set}"
  ips=()
  while IFS= read -r line; do [[ -n "$line" ]] && ips+=("$line"); done <<<"$SKYPILOT_NODE_IPS"
  export PET_NNODES=${PET_NNODES:-${SKYPILOT_NUM_NODES:-${#ips[@]}}}
  export PET_NODE_RANK=${PET_NODE_RANK:-$SKYPILOT_NODE_RANK}
  export PET_MASTER_ADDR=${PET_MASTER_ADDR:-${ips[0]}} PET_MASTER_PORT=${PET_MASTER_PORT:-${MASTER_PORT:-29500}}
  export PET_LOCAL_ADDR=${PET_LOCAL_ADDR:-${ips[$SKYPILOT_NODE_RANK]}}
  if [[ "${SKYPILOT_NUM_GPUS_PER_NODE:-0}" =~ ^[1-9][0-9]*$ ]]; then
    export PET_NPROC_PER_NODE=${PET_NPROC_PER_NODE:-$SKYPILOT_NUM_GPUS_PER_NODE}
  fi
  # The same on every node of one launch, new for the next recovery of a managed job.
  export PET_RDZV_ID=${PET_RDZV_ID:-${SKYPILOT_TASK_ID:-dist_seg}}
elif [[ -n "${MASTER_ADDR:-}" && -z "${PET_RDZV_ENDPOINT:-}" && -z "${PET_MASTER_ADDR:-}" ]]; then
  export PET_MASTER_ADDR=$MASTER_ADDR PET_MASTER_PORT=${MASTER_PORT:-29500}
  export PET_NNODES=${PET_NNODES:-${NNODES:-1}}
fi

# A master address alone (TrainJob, SkyPilot, by hand) becomes a c10d rendezvous there: the same
# rendezvous as every other launcher of this project, and one that survives worker restarts.
if [[ -z "${PET_RDZV_ENDPOINT:-}" && -n "${PET_MASTER_ADDR:-}" ]]; then
  export PET_RDZV_ENDPOINT="$PET_MASTER_ADDR:${PET_MASTER_PORT:-29500}"
  export PET_RDZV_BACKEND=${PET_RDZV_BACKEND:-c10d}
fi
if [[ -n "${PET_RDZV_ENDPOINT:-}" ]]; then
  export PET_RDZV_BACKEND=${PET_RDZV_BACKEND:-c10d}
else
  export PET_STANDALONE=1
fi

if [[ -z "${PET_NPROC_PER_NODE:-}" ]]; then
  PET_NPROC_PER_NODE=$(python3 -c 'import torch; print(max(torch.cuda.device_count(), 1))')
  export PET_NPROC_PER_NODE
fi
export PET_MAX_RESTARTS=${PET_MAX_RESTARTS:-3}
# Same reasons as in launch/multi_node.sh: a fresh rendezvous store per restart
# (pytorch/pytorch#135712), SIGUSR1 forwarded, time to checkpoint before SIGKILL.
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}
export PET_SIGNALS_TO_HANDLE=${PET_SIGNALS_TO_HANDLE:-SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1}
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-90}
echo "dist_seg entrypoint: nnodes=${PET_NNODES:-1} nproc_per_node=$PET_NPROC_PER_NODE" \
  "rendezvous=${PET_RDZV_BACKEND:-standalone}@${PET_RDZV_ENDPOINT:-local} max_restarts=$PET_MAX_RESTARTS" >&2
exec torchrun -m dist_seg.train "$config" --set training.resume_from_checkpoint=auto "$@"
