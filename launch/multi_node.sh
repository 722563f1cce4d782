#!/usr/bin/env bash
# Several nodes, started once on every node with the same arguments:
#   MASTER_ADDR=node0.example NNODES=2 NODE_RANK=0 launch/multi_node.sh configs/david.yaml
# Variables:
#   MASTER_ADDR   host of the c10d rendezvous (any node; required)
#   MASTER_PORT   its port (default 29500)
#   NNODES        number of nodes, or MIN:MAX for an elastic job (default 1)
#   NODE_RANK     this node's rank, optional with c10d (the rendezvous assigns ranks)
#   NPROC         processes per node (default: visible GPUs, else 1)
#   RDZV_ID       job id shared by all nodes (default dist_seg)
#   MAX_RESTARTS  times torchrun restarts the workers after a failure (default 3)
#   TORCH_ELASTIC_SHUTDOWN_TIMEOUT  seconds workers get to checkpoint after SIGTERM/SIGUSR1 (default 90)
# Any other torchrun option can be set as PET_<OPTION>, e.g. PET_LOCAL_ADDR=10.0.0.5 (the
# address other nodes reach this one by, when the host name does not resolve to it).
# The output directory must be on storage every node sees; caches are built per node.
set -euo pipefail
config=${1:?usage: launch/multi_node.sh CONFIG [--set KEY=VALUE ...]}
shift
: "${MASTER_ADDR:?set MASTER_ADDR to the rendezvous host}"
if [[ -z "${NPROC:-}" ]]; then
  NPROC=$(python -c 'import torch; print(max(torch.cuda.device_count(), 1))')
fi
# The odd expansion below keeps an empty array legal under set -u in bash < 4.4.
node_rank_args=()
if [[ -n "${NODE_RANK:-}" ]]; then node_rank_args=(--node-rank="$NODE_RANK"); fi
# A restarted worker group must not share the rendezvous store of the failed one: stale
# addresses left there make the new group's process-group setup fail at random
# (pytorch/pytorch#135712). With this, every restart gets a fresh store.
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}
# Forward SIGUSR1 as well as SIGTERM to the workers (both mean "checkpoint and stop"), and
# leave them time to finish the step and write the checkpoint before torchrun SIGKILLs them.
export PET_SIGNALS_TO_HANDLE=${PET_SIGNALS_TO_HANDLE:-SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1}
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-90}
exec torchrun \
  --nnodes="${NNODES:-1}" --nproc-per-node="$NPROC" ${node_rank_args[@]+"${node_rank_args[@]}"} \
  --rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:${MASTER_PORT:-29500}" --rdzv-id="${RDZV_ID:-dist_seg}" \
  --max-restarts="${MAX_RESTARTS:-3}" \
  -m dist_seg.train "$config" --set training.resume_from_checkpoint=auto "$@"
