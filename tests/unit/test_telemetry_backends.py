"""Driver-library adapters (NVML, AMD SMI) against the fakes, and the shared normalisers."""

from __future__ import annotations

import sys

import pytest
from support.fakes import amdsmi_fake
from support.fakes.amdsmi_fake import FakeAmdGpu, make_amdsmi
from support.fakes.pynvml_fake import FakeNvmlGpu, make_pynvml

from dist_seg.telemetry.gpu import BACKEND_NAMES, VRAM_SAMPLER_CHOICES, candidates, open_backend, open_first
from dist_seg.telemetry.gpu.amdsmi import AmdSmiBackend
from dist_seg.telemetry.gpu.base import BackendUnavailable, normalize_bus_id, normalize_uuid, to_mb
from dist_seg.telemetry.gpu.nvml import NvmlBackend


def test_bus_ids_from_nvml_amd_and_torch_compare_equal():
    assert normalize_bus_id("00000000:3B:00.0") == normalize_bus_id("0000:3b:00.0") == normalize_bus_id(b"3b:00.0")
    assert normalize_bus_id("0000:3b:00.0") == "0000:3b:00.0"
    assert normalize_bus_id("0001:3b:00.0") != normalize_bus_id("0000:3b:00.0")
    assert normalize_bus_id("not a bus id") is None and normalize_bus_id(None) is None


def test_uuid_prefixes_and_case_are_ignored():
    assert normalize_uuid("GPU-ABCD-12") == normalize_uuid(b"abcd-12\0") == normalize_uuid("MIG-abcd-12") == "abcd-12"
    assert normalize_uuid(None) is None


@pytest.mark.parametrize("value", [None, "N/A", 2**64 - 1, -1, True])
def test_not_available_forms_become_none(value):
    assert to_mb(value) is None


def test_to_mb_units():
    assert to_mb(3 * 1024 * 1024) == 3.0
    assert to_mb(2048, unit_bytes=1024 * 1024) == 2048.0


def test_nvml_lists_mig_instances_instead_of_their_parent(monkeypatch):
    gpus = [
        FakeNvmlGpu("GPU-0", "00000000:1A:00.0"),
        FakeNvmlGpu("GPU-1", "00000000:3B:00.0", mig=[FakeNvmlGpu("MIG-a", "00000000:3B:00.0"),
                                                     FakeNvmlGpu("MIG-b", "00000000:3B:00.0")]),
        FakeNvmlGpu("GPU-2", "00000000:5C:00.0"),
    ]
    monkeypatch.setitem(sys.modules, "pynvml", make_pynvml(gpus))
    backend = open_backend("nvml", print)
    devices = backend.devices()
    assert [(d.index, d.uuid) for d in devices] == [(0, "GPU-0"), (1, "MIG-a"), (1, "MIG-b"), (2, "GPU-2")]
    found = backend.find("b", None)  # a MIG instance as torch names it: bare UUID
    assert (found.index, found.uuid) == (1, "MIG-b")
    backend.close()


def test_nvml_missing_is_unavailable_with_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # what an uninstalled module looks like to import
    with pytest.raises(BackendUnavailable, match="pip install nvidia-ml-py"):
        NvmlBackend.open(print)


def test_amdsmi_too_old_or_failing_init_is_unavailable(monkeypatch):
    old = make_amdsmi([])
    del old.amdsmi_get_processor_handles  # ROCm 5.6 named it amdsmi_get_device_handles
    monkeypatch.setitem(sys.modules, "amdsmi", old)
    with pytest.raises(BackendUnavailable, match="older than ROCm 5.7"):
        AmdSmiBackend.open(print)
    monkeypatch.setitem(sys.modules, "amdsmi", make_amdsmi([], init_error=True))
    with pytest.raises(BackendUnavailable, match="cannot be initialised.*AmdSmiLibraryException"):
        AmdSmiBackend.open(print)


def test_amdsmi_old_api_list_with_a_vanished_process_is_reported_as_unknown(monkeypatch):
    gpu = FakeAmdGpu("u0", "0000:03:00.0", processes=[(101, 10), (102, 20)])
    mod = make_amdsmi([gpu], api="old")
    listed = mod.amdsmi_get_gpu_process_list
    mod.amdsmi_get_gpu_process_list = lambda h: listed(h) + [amdsmi_fake._ProcessHandle(999)]  # exited meanwhile
    monkeypatch.setitem(sys.modules, "amdsmi", mod)
    logs: list[str] = []
    backend = AmdSmiBackend.open(logs.append)
    device = backend.find(None, "03:00.0")

    assert backend.read(device).processes is None
    assert len(logs) == 1 and "amdsmi_get_gpu_process_info" in logs[0]
    mod.amdsmi_get_gpu_process_list = listed
    assert [(p.pid, p.used_mb) for p in backend.read(device).processes] == [(101, 10.0), (102, 20.0)]


def test_one_auto_policy_vendor_first_else_every_library_in_order():
    assert VRAM_SAMPLER_CHOICES == ("auto", *BACKEND_NAMES, "none")
    assert candidates("auto") == BACKEND_NAMES == ("nvml", "amdsmi")
    assert candidates("auto", vendor="amdsmi") == ("amdsmi",)  # NVML cannot see a ROCm device
    assert candidates("nvml", vendor="amdsmi") == ("nvml",)  # an explicit choice wins
    assert candidates("none", vendor="nvml") == ()
    with pytest.raises(ValueError, match="auto, nvml, amdsmi, none"):
        candidates("rocm-smi")


def test_open_first_falls_back_and_names_every_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setitem(sys.modules, "amdsmi", make_amdsmi([FakeAmdGpu("u0", "0000:03:00.0")]))
    assert open_first(BACKEND_NAMES, print).name == "amdsmi"
    monkeypatch.setitem(sys.modules, "amdsmi", make_amdsmi([], init_error=True))
    with pytest.raises(BackendUnavailable) as exc:
        open_first(BACKEND_NAMES, print)
    assert "no GPU library is usable" in str(exc.value)
    assert "nvml: pynvml cannot be imported" in str(exc.value)
    assert "amdsmi: AMD SMI cannot be initialised" in str(exc.value)
    with pytest.raises(BackendUnavailable, match="^nvml unavailable: pynvml cannot be imported"):
        open_first(("nvml",), print)
    with pytest.raises(ValueError, match="unknown GPU backend"):
        open_backend("cuda", print)


def test_backend_modules_import_base_only():
    """The vendor modules depend on ``base`` alone, and ``base`` on no sibling: no import circle."""
    import ast
    from pathlib import Path

    import dist_seg.telemetry.gpu as gpu

    folder = Path(gpu.__file__).parent
    relative = {}
    for name in ("base", "nvml", "amdsmi"):
        tree = ast.parse((folder / f"{name}.py").read_text())
        relative[name] = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level}
    assert relative == {"base": set(), "nvml": {"base"}, "amdsmi": {"base"}}
