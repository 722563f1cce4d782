"""A background thread per rank that records GPU memory as the driver and PyTorch see it.

Each sample puts side by side what the driver charges to this process on this rank's
device (NVML / AMD SMI), what PyTorch's caching allocator holds, and the difference
(CUDA context, cuDNN/cuBLAS workspaces, NCCL buffers, other libraries): the figures needed
to tell "the model is too big" from "something outside PyTorch holds the memory".

Traps this module is written around:

* a new thread's current CUDA device is 0, so every torch call names ``self.device``;
* ``CUDA_VISIBLE_DEVICES`` renumbers devices, so the driver's device is found by UUID
  (or PCI bus id), never by index;
* in a container with its own PID namespace the driver lists host PIDs, so our PID is
  missing: the sample then falls back to device-level numbers and says so;
* the thread never calls torch.distributed: every rank samples and writes on its own.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psutil
import torch

from .gpu import BackendName, BackendUnavailable, GpuBackend, candidates, open_first
from .gpu.base import MB, GpuDevice, LogOnce, describe_error

# How long stop() waits for a sample stuck in a driver call (a lost GPU can hang NVML)
# before giving up on the daemon thread rather than hanging the end of training.
_JOIN_GRACE_S = 10.0


@dataclass(frozen=True)
class VramSample:
    """One memory sample of one rank. Sizes in MB (2**20 bytes); None means unknown.

    ``process_mb`` is the driver's figure for this process on this device; ``non_torch_mb``
    is that figure minus PyTorch's reserved memory or, when the driver does not list our
    PID (``pid_visible`` False, e.g. inside a container), device-used minus reserved,
    which then also counts other processes on the device. ``device_used_mb`` /
    ``device_total_mb`` come from the driver library named by ``source`` or, when that is
    ``"none"`` on a GPU, from ``cudaMemGetInfo``.
    """

    time: float
    step: int
    rank: int
    device_index: int | None
    device_uuid: str | None
    source: str
    pid_visible: bool
    process_mb: float | None
    device_used_mb: float | None
    device_total_mb: float | None
    allocated_mb: float | None
    reserved_mb: float | None
    max_allocated_mb: float | None
    non_torch_mb: float | None
    host_rss_mb: float

    @property
    def device_free_mb(self) -> float | None:
        """Free memory on the device, if both driver figures are known."""
        if self.device_used_mb is None or self.device_total_mb is None:
            return None
        return self.device_total_mb - self.device_used_mb


# Sample fields whose maximum over the run PeakSummary keeps under the same name.
_PEAK_FIELDS = ("process_mb", "device_used_mb", "reserved_mb", "non_torch_mb", "host_rss_mb")


@dataclass(frozen=True)
class PeakSummary:
    """Highest values one rank's sampler saw over the run (None: never known)."""

    rank: int
    samples: int = 0
    source: str = "none"
    pid_visible: bool = False
    device_total_mb: float | None = None
    max_allocated_mb: float | None = None
    process_mb: float | None = None
    device_used_mb: float | None = None
    reserved_mb: float | None = None
    non_torch_mb: float | None = None
    host_rss_mb: float | None = None

    def update(self, sample: VramSample) -> PeakSummary:
        """This summary with ``sample`` folded in."""
        peaks = {name: _max(getattr(self, name), getattr(sample, name)) for name in _PEAK_FIELDS}
        return dataclasses.replace(
            self,
            samples=self.samples + 1,
            source=sample.source,
            pid_visible=self.pid_visible or sample.pid_visible,
            device_total_mb=sample.device_total_mb if sample.device_total_mb is not None else self.device_total_mb,
            # The allocator's own peak counter also sees spikes between two samples.
            max_allocated_mb=_max(self.max_allocated_mb, _max(sample.max_allocated_mb, sample.allocated_mb)),
            **peaks,
        )


def _max(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def device_vendor(device: torch.device) -> BackendName | None:
    """The driver library that can see ``device``: AMD SMI under a ROCm build of torch, else NVML."""
    if device.type != "cuda":
        return None
    return "amdsmi" if torch.version.hip else "nvml"


def torch_device_identity(device: torch.device) -> tuple[str | None, str | None]:
    """(UUID, PCI bus id) of a torch device: the keys that survive CUDA_VISIBLE_DEVICES renumbering."""
    props = torch.cuda.get_device_properties(device)
    uuid = getattr(props, "uuid", None)
    pci = [getattr(props, name, None) for name in ("pci_domain_id", "pci_bus_id", "pci_device_id")]
    bus_id = f"{pci[0]:04x}:{pci[1]:02x}:{pci[2]:02x}.0" if None not in pci else None
    return (str(uuid) if uuid is not None else None), bus_id


class VramSampler:
    """Samples this rank's memory every ``interval_s`` seconds on a daemon thread.

    Every sample goes to each sink (a callable taking a :class:`VramSample`). A failing
    sink or driver call is logged once and sampling goes on. Use as a context manager, or
    call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        rank: int,
        device: torch.device | str,
        interval_s: float,
        backend: str = "auto",
        sinks: Sequence[Callable[[VramSample], None]] = (),
        step_fn: Callable[[], int] = lambda: 0,
        log: Callable[[str], None] = print,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        device = torch.device(device)
        if device.type == "cuda" and device.index is None and torch.cuda.is_available():
            # Resolved here, on the caller's thread: the sampler thread's current device is 0.
            device = torch.device("cuda", torch.cuda.current_device())
        self.rank = rank
        self.device = device
        self.interval_s = interval_s
        self.backend_names = candidates(backend, device_vendor(device))
        self.sinks = tuple(sinks)
        self.step_fn = step_fn
        self._log = lambda message: log(f"[vram rank {rank}] {message}")
        self._once = LogOnce(self._log)
        self._process = psutil.Process()
        self._on_gpu = False
        self._driver: GpuBackend | None = None
        self._gpu: GpuDevice | None = None
        self._uuid: str | None = None
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._lifecycle = threading.Lock()
        self._stopped = False
        self._state = threading.Lock()
        self._latest: VramSample | None = None
        self._peaks = PeakSummary(rank=rank)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> VramSampler:
        """Attach to the driver and start the sampling thread (first sample right away)."""
        with self._lifecycle:
            if self._thread is not None or self._stopped:
                raise RuntimeError("a VramSampler can be started once")
            self._attach()
            self._thread = threading.Thread(target=self._run, name=f"vram-sampler-rank{self.rank}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop and join the thread, take one last sample, release the driver. Idempotent."""
        with self._lifecycle:
            if self._stopped:
                return
            self._stopped = True
            thread = self._thread
        if thread is None:
            return
        self._stop_event.set()
        thread.join(timeout=max(_JOIN_GRACE_S, 3 * self.interval_s))
        if thread.is_alive():
            self._log("sampler thread is stuck in a driver call; leaving it behind (daemon thread)")
            return
        self._sample_and_emit()
        if self._driver is not None:
            self._driver.close()

    def __enter__(self) -> VramSampler:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ results

    def peaks(self) -> PeakSummary:
        """Highest values seen so far (safe to call from any thread)."""
        with self._state:
            return self._peaks

    def latest(self) -> VramSample | None:
        """The most recent sample, or None before the first (safe to call from any thread)."""
        with self._state:
            return self._latest

    # ------------------------------------------------------------------ internals

    def _attach(self) -> None:
        # Runs once (start() refuses a second call), so its messages need no de-duplication.
        if self.device.type != "cuda" or not torch.cuda.is_available():
            # The start-up summary already names the device; one short line is enough here.
            self._log(f"{self.device}: host RSS only, no GPU telemetry")
            return
        self._on_gpu = True
        uuid, bus_id = torch_device_identity(self.device)
        self._uuid = uuid
        if not self.backend_names:
            self._log("driver sampling is off (vram_sampler: none): allocator stats and cudaMemGetInfo only, "
                      "no per-process figure")
            return
        try:
            driver = open_first(self.backend_names, self._log)
        except BackendUnavailable as exc:
            self._log(f"{exc}. Recording allocator stats only.")
            return
        gpu = driver.find(uuid, bus_id)
        if gpu is None:
            self._log(f"{driver.name} lists no device with UUID {uuid} or PCI bus id {bus_id} "
                      f"(torch {self.device}); recording allocator stats only")
            driver.close()
            return
        self._driver, self._gpu, self._uuid = driver, gpu, gpu.uuid or uuid

    def _run(self) -> None:
        self._sample_and_emit()
        while not self._stop_event.wait(self.interval_s):
            self._sample_and_emit()

    def _sample_and_emit(self) -> None:
        try:
            sample = self._take()
        except Exception as exc:  # the thread must outlive any one bad sample
            self._once(f"sample:{type(exc).__name__}", f"taking a sample failed ({describe_error(exc)}); will keep trying")
            return
        with self._state:
            self._latest = sample
            self._peaks = self._peaks.update(sample)
        for i, sink in enumerate(self.sinks):
            try:
                sink(sample)
            except Exception as exc:
                self._once(f"sink{i}:{type(exc).__name__}",
                           f"sink {sink!r} failed ({describe_error(exc)}); it keeps getting samples, "
                           "repeats of this error are not logged")

    def _take(self) -> VramSample:
        base = dict(
            time=time.time(),
            step=int(self.step_fn()),
            rank=self.rank,
            device_index=self.device.index,
            device_uuid=self._uuid,
            host_rss_mb=self._process.memory_info().rss / MB,
        )
        if not self._on_gpu:
            return VramSample(**base, source="none", pid_visible=False, process_mb=None, device_used_mb=None,
                              device_total_mb=None, allocated_mb=None, reserved_mb=None, max_allocated_mb=None,
                              non_torch_mb=None)
        # One memory_stats call so the three allocator figures describe the same instant.
        stats = torch.cuda.memory_stats(self.device)
        reserved = stats.get("reserved_bytes.all.current", 0) / MB
        used, total, process_mb, pid_visible = self._driver_figures(holds_memory=reserved > 0)
        if process_mb is not None:
            non_torch = process_mb - reserved
        else:
            non_torch = used - reserved if used is not None else None
        return VramSample(
            **base,
            source=self._driver.name if self._driver is not None else "none",
            pid_visible=pid_visible,
            process_mb=process_mb,
            device_used_mb=used,
            device_total_mb=total,
            allocated_mb=stats.get("allocated_bytes.all.current", 0) / MB,
            reserved_mb=reserved,
            max_allocated_mb=stats.get("allocated_bytes.all.peak", 0) / MB,
            non_torch_mb=non_torch,
        )

    def _driver_figures(self, holds_memory: bool) -> tuple[float | None, float | None, float | None, bool]:
        """(device used, device total, this process's usage, own PID listed) for our device."""
        used = total = process_mb = None
        pid_visible = False
        if self._driver is not None and self._gpu is not None:
            reading = self._driver.read(self._gpu)
            used, total = reading.used_mb, reading.total_mb
            if reading.processes is not None:
                mine = [p for p in reading.processes if p.pid == os.getpid()]
                pid_visible = bool(mine)
                process_mb = mine[0].used_mb if mine else None
                if not mine:
                    # Before PyTorch holds memory there may be no CUDA context yet: absence proves nothing.
                    if holds_memory:
                        self._once("pid-missing", f"PID {os.getpid()} is not in {self._driver.name}'s process list "
                                   "for this device (a container with its own PID namespace sees host PIDs there); "
                                   "using device-level numbers, flagged pid_visible=False")
                elif process_mb is None:
                    self._once("value-not-available", f"{self._driver.name} lists this process but not its memory "
                               "(value not available); using device-level numbers")
        if used is None or total is None:
            try:
                free_b, total_b = torch.cuda.mem_get_info(self.device)
                used, total = (total_b - free_b) / MB, total_b / MB
            except Exception as exc:
                self._once("mem_get_info", f"cudaMemGetInfo failed ({describe_error(exc)}); device figures unknown")
        return used, total, process_mb, pid_visible
