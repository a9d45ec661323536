"""Honest measurement: CUDA-synchronised timers and peak memory from three labelled sources.

A source that is unavailable (no GPU, no NVML) is absent from the record, never zero.
"""

from __future__ import annotations

import os
import platform
import subprocess
import threading
import time
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import psutil
import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Wall-clock per named phase, synchronised with the device so GPU work is counted where it happens."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.totals: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str):
        sync(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            sync(self.device)
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - start


class _NVML:
    """Device memory through pynvml: this process's own use where the driver reports it, else device-used
    minus the baseline taken before the run."""

    def __init__(self, device: torch.device) -> None:
        import pynvml

        pynvml.nvmlInit()
        self.nvml = pynvml
        index = device.index if device.index is not None else torch.cuda.current_device()
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self.baseline = pynvml.nvmlDeviceGetMemoryInfo(self.handle).used
        self.source = "nvml-process"

    def read(self) -> int | None:
        try:
            procs = self.nvml.nvmlDeviceGetComputeRunningProcesses(self.handle)
            mine = [p.usedGpuMemory for p in procs if p.pid == os.getpid() and p.usedGpuMemory]
            if mine:
                self.source = "nvml-process"
                return int(sum(mine))
        except self.nvml.NVMLError:
            pass
        self.source = "nvml-device-minus-baseline"
        return int(self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used - self.baseline)


class PeakMemory:
    """Samples RSS (and NVML when on a GPU) on a thread; reads the torch allocator's peak at the end."""

    def __init__(self, device: torch.device, interval: float = 0.02) -> None:
        self.device = device
        self.interval = interval
        self.process = psutil.Process()
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._nvml: _NVML | None = None
        if device.type == "cuda":
            try:
                self._nvml = _NVML(device)
            except Exception:  # no driver library, no permission: the NVML figure is absent
                self._nvml = None

    def _sample(self) -> None:
        rss = self.process.memory_info().rss
        self.peaks["rss"] = max(self.peaks.get("rss", 0), rss)
        if self._nvml is not None:
            used = self._nvml.read()
            if used is not None:
                self.peaks["nvml"] = max(self.peaks.get("nvml", 0), used)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        if self.device.type == "cuda":
            self.peaks["torch_allocator"] = int(torch.cuda.max_memory_allocated(self.device))

    def record(self) -> dict[str, dict[str, Any]]:
        """{name: {bytes, source}} for each source that was measured."""
        sources = {"rss": "psutil process RSS (sampled)", "torch_allocator": "torch.cuda.max_memory_allocated"}
        if self._nvml is not None:
            sources["nvml"] = self._nvml.source
        return {k: {"bytes": v, "source": sources[k]} for k, v in self.peaks.items()}


def _version(pkg: str) -> str | None:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=os.path.dirname(__file__))
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> dict[str, Any]:
    """Where a number came from: device, driver, package versions, git revision."""
    env: dict[str, Any] = {
        "device": str(device), "host": platform.node(), "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
        "packages": {p: _version(p) for p in ("zobench", "torch", "transformers", "peft", "datasets")},
        "git_revision": git_revision(),
    }
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        try:
            import pynvml

            pynvml.nvmlInit()
            env["driver"] = pynvml.nvmlSystemGetDriverVersion()
        except Exception:
            pass
    return env
