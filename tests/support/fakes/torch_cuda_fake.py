"""Make ``torch.cuda`` on a CPU-only machine answer like a machine with GPUs.

Only the calls the VRAM sampler makes are replaced, through pytest's ``monkeypatch``, and
every device argument is recorded so a test can check the sampler names its device
(a new thread's current CUDA device is 0).
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field

import torch

MiB = 1024 * 1024


@dataclass
class FakeCudaDevice:
    """What torch reports for one visible device; ``pci`` is (domain, bus, device)."""

    uuid: str
    pci: tuple[int, int, int]
    total_mb: int = 81_559
    free_mb: int = 60_000
    allocated_mb: int = 800
    reserved_mb: int = 1_024
    peak_allocated_mb: int = 900


@dataclass
class FakeCuda:
    """The installed fake: ``devices`` by torch index, and the device argument of every call."""

    devices: list[FakeCudaDevice]
    stats_calls: list[object] = field(default_factory=list)
    mem_info_calls: list[object] = field(default_factory=list)

    def device(self, arg: object) -> FakeCudaDevice:
        index = torch.device(arg).index if not isinstance(arg, int) else arg
        if index is None:
            raise AssertionError("the sampler must name its CUDA device explicitly")
        return self.devices[index]


def install_fake_cuda(monkeypatch, devices: list[FakeCudaDevice], hip: str | None = None) -> FakeCuda:
    """Patch torch.cuda (and ``torch.version.hip`` for ROCm) to report ``devices``."""
    fake = FakeCuda(devices)

    def properties(device):
        d = fake.device(device)
        return types.SimpleNamespace(uuid=d.uuid, pci_domain_id=d.pci[0], pci_bus_id=d.pci[1],
                                     pci_device_id=d.pci[2], total_memory=d.total_mb * MiB)

    def memory_stats(device=None):
        fake.stats_calls.append(device)
        d = fake.device(device)
        return {
            "allocated_bytes.all.current": d.allocated_mb * MiB,
            "reserved_bytes.all.current": d.reserved_mb * MiB,
            "allocated_bytes.all.peak": d.peak_allocated_mb * MiB,
        }

    def mem_get_info(device=None):
        fake.mem_info_calls.append(device)
        d = fake.device(device)
        return d.free_mb * MiB, d.total_mb * MiB

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(devices))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", properties)
    monkeypatch.setattr(torch.cuda, "memory_stats", memory_stats)
    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    monkeypatch.setattr(torch.version, "hip", hip)
    return fake
