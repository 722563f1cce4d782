"""VramSampler against fake NVML / AMD SMI drivers and a faked torch.cuda, plus the CPU path."""

from __future__ import annotations

import os
import sys
import threading

import pytest
import torch
from support.fakes.amdsmi_fake import FakeAmdGpu, make_amdsmi, write_broken_amdsmi
from support.fakes.pynvml_fake import (
    NVML_ERROR_LIBRARY_NOT_FOUND,
    NVML_ERROR_NO_PERMISSION,
    NVML_ERROR_NOT_SUPPORTED,
    FakeNvmlGpu,
    make_pynvml,
)
from support.fakes.torch_cuda_fake import FakeCudaDevice, install_fake_cuda

from dist_seg.telemetry.vram import VramSample, VramSampler

OWN = os.getpid()
OTHER = OWN + 100_000  # a PID that is not ours
U = [f"aaaaaaaa-0000-4000-8000-00000000000{i}" for i in range(4)]


def nvml_gpus() -> list[FakeNvmlGpu]:
    """Three GPUs in NVML order; this process uses 300 MB on GPU 0 and 1500 MB on GPU 2."""
    return [
        FakeNvmlGpu(f"GPU-{U[0]}", "00000000:1A:00.0", used_mb=5_000, processes=[(OWN, 300), (OTHER, 4_000)]),
        FakeNvmlGpu(f"GPU-{U[1]}", "00000000:3B:00.0", used_mb=100),
        FakeNvmlGpu(f"GPU-{U[2]}", "00000000:5C:00.0", used_mb=2_600, processes=[(OTHER, 1_000), (OWN, 1_500)]),
    ]


def cuda_devices(*nvml_indices: int) -> list[FakeCudaDevice]:
    """What torch sees under CUDA_VISIBLE_DEVICES=<nvml_indices>, in that order."""
    pci = {0: (0, 0x1A, 0), 1: (0, 0x3B, 0), 2: (0, 0x5C, 0)}
    return [FakeCudaDevice(uuid=U[i], pci=pci[i]) for i in nvml_indices]


def run_sampler(device="cuda:0", backend="auto", sinks=(), step=7) -> tuple[VramSample, VramSampler, list[str]]:
    """Start, stop (two samples: the thread's first and stop's last) and return the last one."""
    logs: list[str] = []
    sampler = VramSampler(rank=3, device=torch.device(device), interval_s=3600, backend=backend,
                          sinks=sinks, step_fn=lambda: step, log=logs.append)
    with sampler:
        pass
    sample = sampler.latest()
    assert sample is not None
    return sample, sampler, logs


@pytest.fixture
def nvml(monkeypatch):
    def install(gpus=None, **kwargs):
        mod = make_pynvml(gpus if gpus is not None else nvml_gpus(), **kwargs)
        monkeypatch.setitem(sys.modules, "pynvml", mod)
        return mod

    return install


def test_reordered_devices_are_matched_by_uuid_not_index(monkeypatch, nvml):
    install_fake_cuda(monkeypatch, cuda_devices(2, 0, 1))  # torch cuda:0 is NVML GPU 2
    mod = nvml()
    sample, sampler, logs = run_sampler("cuda:0")

    assert sample.source == "nvml" and sample.pid_visible
    assert sample.process_mb == pytest.approx(1_500)
    assert sample.device_used_mb == pytest.approx(2_600)
    assert sample.device_total_mb == pytest.approx(81_559)
    assert sample.device_uuid == f"GPU-{U[2]}"
    assert (sample.allocated_mb, sample.reserved_mb, sample.max_allocated_mb) == (800, 1_024, 900)
    assert sample.non_torch_mb == pytest.approx(1_500 - 1_024)
    assert sample.rank == 3 and sample.step == 7 and sample.device_index == 0
    assert sample.host_rss_mb > 0
    assert "nvmlDeviceGetHandleByUUID" in mod.calls
    assert "nvmlDeviceGetHandleByPciBusId" not in mod.calls and "nvmlDeviceGetHandleByIndex" not in mod.calls
    assert mod.init_count == 0, "stop() must shut NVML down"
    assert logs == []


def test_every_torch_call_names_the_device(monkeypatch, nvml):
    fake = install_fake_cuda(monkeypatch, cuda_devices(2, 0, 1))
    nvml()
    sample, _, _ = run_sampler("cuda:1")  # NVML GPU 0, where this process holds 300 MB

    assert sample.process_mb == pytest.approx(300)
    assert fake.stats_calls and all(torch.device(d) == torch.device("cuda", 1) for d in fake.stats_calls)


def test_pci_bus_id_is_used_when_the_uuid_is_unknown(monkeypatch, nvml):
    devices = cuda_devices(2)
    devices[0].uuid = "ffffffff-ffff-4fff-8fff-ffffffffffff"  # e.g. an old driver's UUID form
    install_fake_cuda(monkeypatch, devices)
    mod = nvml()
    sample, _, _ = run_sampler()

    assert sample.source == "nvml" and sample.process_mb == pytest.approx(1_500)
    assert "nvmlDeviceGetHandleByPciBusId" in mod.calls


def test_unmatched_device_falls_back_to_allocator_and_cuda_mem_info(monkeypatch, nvml):
    devices = [FakeCudaDevice(uuid="ffffffff-ffff-4fff-8fff-ffffffffffff", pci=(0, 0x99, 0), free_mb=70_000, total_mb=80_000)]
    fake = install_fake_cuda(monkeypatch, devices)
    mod = nvml()
    sample, _, logs = run_sampler()

    assert sample.source == "none" and not sample.pid_visible and sample.process_mb is None
    assert (sample.device_used_mb, sample.device_total_mb) == (10_000, 80_000)
    assert sample.non_torch_mb == pytest.approx(10_000 - 1_024)
    assert all(torch.device(d) == torch.device("cuda", 0) for d in fake.mem_info_calls)
    assert sum("lists no device" in line for line in logs) == 1
    assert mod.init_count == 0


@pytest.mark.parametrize("raw", [False, True], ids=["None", "NVML_VALUE_NOT_AVAILABLE"])
def test_value_not_available_uses_device_level_numbers(monkeypatch, nvml, raw):
    install_fake_cuda(monkeypatch, cuda_devices(2))
    gpus = nvml_gpus()
    gpus[2].processes = [(OWN, None)]
    nvml(gpus, raw_not_available=raw)
    sample, _, logs = run_sampler()

    assert sample.pid_visible and sample.process_mb is None
    assert sample.non_torch_mb == pytest.approx(2_600 - 1_024)
    assert sum("value not available" in line for line in logs) == 1


def test_own_pid_missing_falls_back_flags_and_logs_once(monkeypatch, nvml):
    install_fake_cuda(monkeypatch, cuda_devices(2))
    gpus = nvml_gpus()
    gpus[2].processes = [(OTHER, 1_500)]  # what a container with its own PID namespace sees
    nvml(gpus)
    samples: list[VramSample] = []
    sample, sampler, logs = run_sampler(sinks=[samples.append])

    assert len(samples) == 2
    assert all(not s.pid_visible and s.process_mb is None for s in samples)
    assert sample.non_torch_mb == pytest.approx(2_600 - 1_024)
    assert sum(f"PID {OWN} is not in" in line for line in logs) == 1
    assert not sampler.peaks().pid_visible


@pytest.mark.parametrize(
    "pynvml_api, driver_api, expected_call",
    [
        (3, 2, "nvmlDeviceGetComputeRunningProcesses_v2"),  # new pynvml, old driver
        (2, 3, "nvmlDeviceGetComputeRunningProcesses_v2"),  # old pynvml without the _v3 wrapper
        (1, 3, "nvmlDeviceGetComputeRunningProcesses"),  # very old pynvml: v1 only
    ],
)
def test_older_process_calls_are_used_when_v3_is_missing(monkeypatch, nvml, pynvml_api, driver_api, expected_call):
    install_fake_cuda(monkeypatch, cuda_devices(2))
    mod = nvml(pynvml_api=pynvml_api, driver_api=driver_api)
    sample, _, logs = run_sampler()

    assert sample.process_mb == pytest.approx(1_500) and sample.pid_visible
    assert mod.calls.count(expected_call) == 2  # used for both samples
    assert mod.calls.count("nvmlDeviceGetComputeRunningProcesses_v3") <= 1  # a missing v3 is tried once only
    assert logs == []


def test_nvml_error_on_one_call_keeps_the_other_figures(monkeypatch, nvml):
    install_fake_cuda(monkeypatch, [FakeCudaDevice(uuid=U[2], pci=(0, 0x5C, 0), free_mb=50_000, total_mb=81_559)])
    gpus = nvml_gpus()
    gpus[2].fail = {"nvmlDeviceGetMemoryInfo": NVML_ERROR_NO_PERMISSION}
    nvml(gpus)
    sample, _, logs = run_sampler()

    assert sample.process_mb == pytest.approx(1_500) and sample.source == "nvml"
    assert sample.device_used_mb == pytest.approx(81_559 - 50_000)  # from cudaMemGetInfo instead
    assert sum("nvmlDeviceGetMemoryInfo failed" in line and "NoPermission" in line for line in logs) == 1


def test_unsupported_process_list_is_not_mistaken_for_a_missing_pid(monkeypatch, nvml):
    install_fake_cuda(monkeypatch, cuda_devices(2))
    gpus = nvml_gpus()
    gpus[2].fail = {f"nvmlDeviceGetComputeRunningProcesses{v}": NVML_ERROR_NOT_SUPPORTED for v in ("_v3", "_v2", "")}
    nvml(gpus)
    sample, _, logs = run_sampler()

    assert sample.process_mb is None and not sample.pid_visible
    assert sample.device_used_mb == pytest.approx(2_600)
    assert not any("is not in" in line for line in logs)
    assert sum("NotSupported" in line for line in logs) == 1


def test_nvml_that_cannot_initialise_leaves_allocator_stats(monkeypatch, nvml):
    install_fake_cuda(monkeypatch, cuda_devices(2))
    nvml(init_error=NVML_ERROR_LIBRARY_NOT_FOUND)
    sample, _, logs = run_sampler()

    assert sample.source == "none" and sample.reserved_mb == 1_024 and sample.process_mb is None
    assert sum("nvml unavailable" in line and "LibraryNotFound" in line for line in logs) == 1


def test_mig_instance_is_found_by_its_uuid(monkeypatch, nvml):
    mig = FakeNvmlGpu(f"MIG-{U[3]}", "00000000:5C:00.0", total_mb=19_968, used_mb=1_700, processes=[(OWN, 1_200)])
    gpus = nvml_gpus()
    gpus[2].mig = [FakeNvmlGpu(f"MIG-{U[0][:-1]}9", "00000000:5C:00.0", processes=[(OWN, 5)]), mig]
    install_fake_cuda(monkeypatch, [FakeCudaDevice(uuid=U[3], pci=(0, 0x5C, 0))])
    nvml(gpus)
    sample, _, _ = run_sampler()

    assert sample.device_uuid == f"MIG-{U[3]}"
    assert (sample.process_mb, sample.device_total_mb) == (pytest.approx(1_200), pytest.approx(19_968))


def amd_gpus() -> list[FakeAmdGpu]:
    return [
        FakeAmdGpu("9e3f0000-0000-0000-0000-0000000000a0", "0000:03:00.0", vram_used_mb=900, processes=[(OWN, 111)]),
        FakeAmdGpu("9e3f0000-0000-0000-0000-0000000000a1", "0000:83:00.0", vram_used_mb=4_000,
                   processes=[(OTHER, 2_000), (OWN, 1_800)]),
    ]


@pytest.mark.parametrize("api", ["new", "old"])
def test_amdsmi_both_process_api_generations(monkeypatch, api):
    # HIP's UUID form differs from AMD SMI's, so the device is found by PCI address.
    install_fake_cuda(monkeypatch, [FakeCudaDevice(uuid="GPU-4c3a5f21d0e8b7a6", pci=(0, 0x83, 0))], hip="6.2.0")
    mod = make_amdsmi(amd_gpus(), api=api)
    monkeypatch.setitem(sys.modules, "amdsmi", mod)
    sample, _, logs = run_sampler()

    assert sample.source == "amdsmi" and sample.pid_visible
    assert sample.process_mb == pytest.approx(1_800)
    assert (sample.device_used_mb, sample.device_total_mb) == (4_000, 196_592)
    assert ("amdsmi_get_gpu_process_info" in mod.calls) == (api == "old")
    assert "amdsmi_shut_down" in mod.calls
    assert logs == []


def test_amdsmi_not_available_value(monkeypatch):
    install_fake_cuda(monkeypatch, [FakeCudaDevice(uuid="x", pci=(0, 0x03, 0))], hip="6.2.0")
    gpus = amd_gpus()
    gpus[0].processes = [(OWN, None)]  # "N/A"
    monkeypatch.setitem(sys.modules, "amdsmi", make_amdsmi(gpus))
    sample, _, _ = run_sampler()

    assert sample.pid_visible and sample.process_mb is None
    assert sample.non_torch_mb == pytest.approx(900 - 1_024)


@pytest.mark.parametrize("statement", [
    "raise OSError('libamd_smi.so: cannot open shared object file')",
    "raise KeyError('ROCM_PATH')",
    "raise ImportError('amdsmi built for another ROCm')",
])
def test_amdsmi_failing_at_import_is_logged_once(monkeypatch, tmp_path, statement):
    install_fake_cuda(monkeypatch, cuda_devices(0), hip="6.2.0")
    monkeypatch.delitem(sys.modules, "amdsmi", raising=False)
    monkeypatch.syspath_prepend(str(write_broken_amdsmi(tmp_path, statement)))
    sample, _, logs = run_sampler()

    assert sample.source == "none" and sample.reserved_mb == 1_024
    assert len(logs) == 1 and "amdsmi unavailable" in logs[0]
    assert statement.split("(")[0].split()[-1] in logs[0]  # the exception type is named


def test_cpu_records_host_rss_and_says_so_once():
    samples: list[VramSample] = []
    sample, sampler, logs = run_sampler("cpu", sinks=[samples.append])

    assert len(samples) == 2
    assert sample.source == "none" and not sample.pid_visible
    assert sample.host_rss_mb > 0
    assert all(getattr(sample, f) is None for f in
               ("process_mb", "device_used_mb", "device_total_mb", "allocated_mb", "reserved_mb", "non_torch_mb"))
    assert len(logs) == 1 and "no GPU telemetry" in logs[0]
    assert sampler.peaks().samples == 2 and sampler.peaks().host_rss_mb >= sample.host_rss_mb


def test_backend_none_on_gpu_skips_the_driver(monkeypatch, nvml):
    install_fake_cuda(monkeypatch, cuda_devices(2))
    mod = nvml()
    sample, _, logs = run_sampler(backend="none")

    assert mod.calls == [] and sample.source == "none" and sample.reserved_mb == 1_024
    assert len(logs) == 1


def sampler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("vram-sampler")]


def test_thread_samples_repeatedly_and_stop_joins_it():
    enough = threading.Event()
    seen: list[VramSample] = []

    def sink(sample):
        seen.append(sample)
        if len(seen) >= 3:
            enough.set()

    sampler = VramSampler(0, torch.device("cpu"), interval_s=0.01, sinks=[sink], log=lambda _: None)
    sampler.start()
    assert sampler_threads()
    assert enough.wait(timeout=60)
    sampler.stop()
    count = len(seen)
    sampler.stop()  # idempotent: no further sample

    assert sampler_threads() == []
    assert len(seen) == count and sampler.peaks().samples == count


def test_exception_inside_with_block_still_stops_the_thread():
    seen: list[VramSample] = []
    with pytest.raises(RuntimeError, match="training blew up"):
        with VramSampler(0, "cpu", interval_s=3600, sinks=[seen.append], log=lambda _: None):
            raise RuntimeError("training blew up")
    assert sampler_threads() == []
    assert len(seen) == 2  # the thread's first sample and stop()'s last one


def test_a_failing_sink_is_logged_once_and_does_not_stop_sampling():
    enough = threading.Event()
    good: list[VramSample] = []
    logs: list[str] = []

    def broken(sample):
        raise ValueError("disk full")

    def counting(sample):
        good.append(sample)
        if len(good) >= 4:
            enough.set()

    with VramSampler(0, "cpu", interval_s=0.01, sinks=[broken, counting], log=logs.append):
        assert enough.wait(timeout=60)
    assert sum("disk full" in line for line in logs) == 1
    assert sampler_threads() == []


def test_sampler_cannot_be_restarted():
    sampler = VramSampler(0, "cpu", interval_s=3600, log=lambda _: None)
    sampler.start()
    sampler.stop()
    with pytest.raises(RuntimeError):
        sampler.start()


def test_sampler_never_calls_collectives(monkeypatch, nvml):
    install_fake_cuda(monkeypatch, cuda_devices(2))
    nvml()
    called: list[str] = []
    for name in ("all_reduce", "all_gather", "all_gather_object", "broadcast", "barrier", "gather", "reduce"):
        monkeypatch.setattr(torch.distributed, name, lambda *a, _n=name, **k: called.append(_n))
    run_sampler()
    assert called == []


def test_missing_pid_before_any_cuda_memory_is_flagged_but_not_blamed_on_containers(monkeypatch, nvml):
    devices = cuda_devices(2)
    devices[0].allocated_mb = devices[0].reserved_mb = devices[0].peak_allocated_mb = 0  # no CUDA context yet
    install_fake_cuda(monkeypatch, devices)
    gpus = nvml_gpus()
    gpus[2].processes = [(OTHER, 1_000)]
    nvml(gpus)
    sample, _, logs = run_sampler()

    assert not sample.pid_visible and sample.process_mb is None
    assert logs == []
