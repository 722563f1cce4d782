"""The two-ranks-on-one-GPU probe's output read back: allowed, refused by NCCL (with its reason), or neither."""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.gpu_check.runs import probe_outcome  # noqa: E402

RANK = "share_probe: rank {r} of 2 on cuda:0: all_reduce gave 3 (expected 3)"


def test_two_ranks_whose_lines_share_one_line_of_the_pipe_are_both_counted():
    output = "*****\n" + RANK.format(r=1) + RANK.format(r=0) + "\n"
    found = probe_outcome("nccl", True, output, "exit 0")
    assert found["outcome"] == "allowed: both ranks reduced" and len(found["ranks"]) == 2


def test_ncclinvalidusage_is_reported_as_a_refusal_with_nccls_own_words():
    # What torch 2.x prints when NCCL >= 2.5 finds two ranks on one GPU (pytorch#68666, NVIDIA/nccl#418).
    output = ("torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:1727, invalid usage (run with "
              "NCCL_DEBUG=WARN for details), NCCL version 2.21.5\nncclInvalidUsage: This usually reflects invalid usage "
              "of NCCL library.\nLast error:\nDuplicate GPU detected : rank 1 and rank 0 both on CUDA device 1000\n")
    found = probe_outcome("nccl", False, output, "exit 1")
    assert found["outcome"] == "refused by nccl: Duplicate GPU detected : rank 1 and rank 0 both on CUDA device 1000"
    assert found["ranks"] == []


def test_an_exit_0_with_a_missing_rank_is_unclear_and_a_crash_is_a_failure():
    assert probe_outcome("gloo", True, RANK.format(r=0), "exit 0")["outcome"].startswith("unclear: ")
    assert probe_outcome("gloo", False, "Traceback ...\nRuntimeError: boom", "exit 1")["outcome"] == "failed: exit 1"
