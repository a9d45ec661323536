"""Honest measurement: CUDA-synchronised phase timers and peak memory from three labelled sources.

Timers: a `Clock` times named phases (forward, perturbation, update, backward, evaluation, step),
synchronising the device at each boundary so GPU work is counted in the phase that queued it. Code deep
in a method calls `phase("perturbation")`, which times into the clock the runner activated and costs one
context-variable lookup when none is active.

Memory: `PeakMemory` records, per run and per window (setup, inference, train, evaluation):
- `rss`: the process's peak resident set, from the kernel's high-water mark (Linux VmHWM, reset per
  window through /proc/self/clear_refs) where possible, else from psutil samples taken on a thread;
- `nvml`: this process's own device memory through pynvml, where the driver reports it, and
  `nvml_device`: the device's used memory minus the baseline taken before the run (both sampled on a
  thread; the GPU is matched to torch's by UUID or PCI bus id, never by raw index);
- `torch_allocator`: torch.cuda.max_memory_allocated, reset per window.
A source that is unavailable (no GPU, no NVML) is absent from the record, never zero.
"""

from __future__ import annotations

import contextvars
import ctypes
import gc
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import psutil
import torch

_NULL = nullcontext()
_ACTIVE: contextvars.ContextVar[Clock | None] = contextvars.ContextVar("zobench_clock", default=None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- timers
class Clock:
    """Wall-clock per named phase, synchronised with the device so GPU work is counted where it happens.

    `totals` accumulate over the run; `lap()` returns what each phase took since the previous lap (one
    training step), so medians per step can be reported. A phase nested in itself counts once.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.totals: dict[str, float] = {}
        self._lap_start: dict[str, float] = {}
        self._open: set[str] = set()
        self.steps: dict[str, list[float]] = {}
        self._token: contextvars.Token | None = None

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if name in self._open:  # e.g. the runner and the engine both time "forward": count it once
            yield
            return
        sync(self.device)
        self._open.add(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            sync(self.device)
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - start
            self._open.discard(name)

    def lap(self) -> dict[str, float]:
        """Seconds per phase since the previous lap (phases that did not run are left out). Evaluation is
        not part of a step: it is in `totals` only."""
        out = {k: v - self._lap_start.get(k, 0.0) for k, v in self.totals.items() if k != "evaluation"}
        self._lap_start = dict(self.totals)
        out = {k: v for k, v in out.items() if v > 0.0}
        for k, v in out.items():
            self.steps.setdefault(k, []).append(v)
        return out

    def summary(self) -> dict[str, dict[str, float]]:
        """{phase: {total_s, median_s (per lap it ran in), laps}}."""
        return {k: {"total_s": v, "median_s": statistics.median(self.steps[k]) if self.steps.get(k) else None,
                    "laps": len(self.steps.get(k, []))} for k, v in self.totals.items()}

    def __enter__(self) -> Clock:
        """Make this the clock that `phase()` times into (for code that has no handle on it)."""
        self._token = _ACTIVE.set(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._token is not None:
            _ACTIVE.reset(self._token)
            self._token = None


def phase(name: str):
    """Time a block into the active clock; a shared no-op context when no clock is active.

    Use in methods: `with phase("update"): ...`; every name timed is reported in the runner's summary
    and curves.
    """
    clock = _ACTIVE.get()
    return _NULL if clock is None else clock.phase(name)


def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap `fn` so every call is timed as phase `name` (the runner wraps the loss as "forward")."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with phase(name):
            return fn(*args, **kwargs)

    return wrapper


# --------------------------------------------------------------------------- memory
def _malloc_trim() -> None:
    """Hand freed heap pages back to the OS (glibc), so a run's RSS baseline is not an earlier run's garbage."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


class _KernelHWM:
    """Linux VmHWM (peak RSS, exact, kept by the kernel); reset by writing 5 to /proc/self/clear_refs."""

    source = "kernel VmHWM (peak RSS), reset per window"

    def __init__(self) -> None:
        self.reset()  # raises OSError where the file is absent or not writable
        if self.read() is None:
            raise OSError("no VmHWM line in /proc/self/status")

    @staticmethod
    def read() -> int | None:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return None

    @staticmethod
    def reset() -> None:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")


def nvml_handle(pynvml: Any, index: int) -> tuple[Any, str]:
    """NVML's handle for torch's CUDA device `index`, and how it was matched.

    torch numbers only the GPUs CUDA_VISIBLE_DEVICES lets it see, in that list's order (and by default
    fastest first); NVML numbers every GPU on the machine by PCI bus. So the GPU is matched by its UUID,
    else its PCI bus id, else a UUID named in CUDA_VISIBLE_DEVICES; by raw index only when NVML sees a
    single GPU. Otherwise this raises and the NVML figures are absent rather than another GPU's.
    """
    props = torch.cuda.get_device_properties(index)
    uuid = getattr(props, "uuid", None)
    if uuid is not None:
        text = str(uuid)
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}"), \
                f"uuid {text}"
        except pynvml.NVMLError:
            pass
    if getattr(props, "pci_bus_id", None) is not None:
        bus = f"{getattr(props, 'pci_domain_id', 0):08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
        try:
            return pynvml.nvmlDeviceGetHandleByPciBusId(bus), f"pci {bus}"
        except pynvml.NVMLError:
            pass
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if index < len(visible) and visible[index].startswith(("GPU-", "MIG-")):
        return pynvml.nvmlDeviceGetHandleByUUID(visible[index]), f"uuid {visible[index]} (CUDA_VISIBLE_DEVICES)"
    if pynvml.nvmlDeviceGetCount() == 1:
        return pynvml.nvmlDeviceGetHandleByIndex(0), "the only GPU"
    raise RuntimeError(f"cannot tell which of NVML's {pynvml.nvmlDeviceGetCount()} GPUs is torch's cuda:{index}")


class _NVML:
    """Device memory through pynvml, two figures under their own names: `nvml`, this process's own use
    where the driver reports it (absent where it does not, e.g. in many containers), and `nvml_device`,
    the device's used memory minus what was used before the run (other processes on the GPU count too)."""

    def __init__(self, device: torch.device) -> None:
        import pynvml

        pynvml.nvmlInit()
        self.nvml = pynvml
        index = device.index if device.index is not None else torch.cuda.current_device()
        self.handle, self.matched = nvml_handle(pynvml, index)
        self.baseline = pynvml.nvmlDeviceGetMemoryInfo(self.handle).used

    def read(self) -> dict[str, int]:
        out: dict[str, int] = {}
        try:
            procs = self.nvml.nvmlDeviceGetComputeRunningProcesses(self.handle)
            mine = [p.usedGpuMemory for p in procs if p.pid == os.getpid() and p.usedGpuMemory]
            if mine:
                out["nvml"] = int(sum(mine))
        except self.nvml.NVMLError:
            pass
        out["nvml_device"] = int(self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used - self.baseline)
        return out


class PeakMemory:
    """Peak memory over a run and per named window, from every source this machine offers.

    Windows are sequential: `with memory.window("evaluation")` inside the "train" window closes the
    train segment, and reopens it on exit; a window seen twice keeps its maximum.
    """

    def __init__(self, device: torch.device, interval: float = 0.02) -> None:
        self.device = device
        self.interval = interval
        self.process = psutil.Process()
        self.peaks: dict[str, int] = {}
        self.windows: dict[str, dict[str, int]] = {}
        self.baseline: dict[str, int] = {}
        self.loaded: dict[str, int] = {}  # live memory when setup (model, data, method) ends
        self.current = "setup"
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._hwm: _KernelHWM | None = None
        self._nvml: _NVML | None = None
        self._cuda = device.type == "cuda"

    # -- sampling (thread) --------------------------------------------------------------------
    def _note(self, source: str, value: int, window: str | None = None) -> None:
        with self._lock:
            self.peaks[source] = max(self.peaks.get(source, 0), value)
            w = self.windows.setdefault(window or self.current, {})
            w[source] = max(w.get(source, 0), value)

    def _sample(self) -> None:
        if self._hwm is None:
            self._note("rss", self.process.memory_info().rss)
        if self._nvml is not None:
            for source, used in self._nvml.read().items():
                self._note(source, used)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    # -- windows ------------------------------------------------------------------------------
    def _close_segment(self) -> None:
        """Attribute the exact peaks (kernel HWM, torch allocator) of the segment that ends now."""
        if self._hwm is not None:
            peak = self._hwm.read()
            if peak is not None:
                self._note("rss", peak, self.current)
        if self._cuda:
            self._note("torch_allocator", int(torch.cuda.max_memory_allocated(self.device)), self.current)

    def _open_segment(self, name: str) -> None:
        """Start a window from live memory only: freed heap pages (and CUDA cache) of the previous window are
        handed back first, so e.g. an evaluation's buffers are not counted in the training that follows."""
        leaving_setup = self.current == "setup" and name != "setup" and not self.loaded
        self.current = name
        _malloc_trim()
        if self._cuda:
            torch.cuda.empty_cache()
        if leaving_setup:
            self.loaded = self._levels()
        if self._hwm is not None:
            self._hwm.reset()
        if self._cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        self._sample()

    def _levels(self) -> dict[str, int]:
        """Memory held right now, per source."""
        out = {"rss": int(self.process.memory_info().rss)}
        if self._cuda:
            out["torch_allocator"] = int(torch.cuda.memory_allocated(self.device))
        if self._nvml is not None:
            out.update(self._nvml.read())
        return out

    def switch(self, name: str) -> None:
        """End the current window's segment and start one for `name`."""
        self._close_segment()
        self._open_segment(name)

    @contextmanager
    def window(self, name: str) -> Iterator[None]:
        previous = self.current
        self.switch(name)
        try:
            yield
        finally:
            self.switch(previous)

    # -- run ----------------------------------------------------------------------------------
    def __enter__(self) -> PeakMemory:
        gc.collect()
        _malloc_trim()
        try:
            self._hwm = _KernelHWM()
        except OSError:
            self._hwm = None
        if self._cuda:
            torch.cuda.empty_cache()
            try:
                self._nvml = _NVML(self.device)
            except Exception:  # no driver library, no permission: the NVML figure is absent
                self._nvml = None
        self.baseline.update(self._levels())
        self._open_segment("setup")
        if self._hwm is None or self._nvml is not None:  # something to sample
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        self._close_segment()

    def sources(self) -> dict[str, str]:
        out = {"rss": self._hwm.source if self._hwm is not None else f"psutil RSS sampled every {self.interval}s",
               "torch_allocator": "torch.cuda.max_memory_allocated, reset per window"}
        if self._nvml is not None:
            where = f"on the GPU matched by {self._nvml.matched}, sampled every {self.interval}s"
            out["nvml"] = f"nvml: this process's own device memory, {where}"
            out["nvml_device"] = f"nvml: the device's used memory minus its use before the run, {where}"
        return out

    def record(self) -> dict[str, dict[str, Any]]:
        """{name: {bytes, source, baseline_bytes, loaded_bytes}} for each source measured over the whole run.

        baseline: held before the run (imports, earlier runs' leftovers); loaded: held once the model,
        data and method were built (the floor of every later window)."""
        sources = self.sources()
        return {k: {"bytes": v, "source": sources[k], "baseline_bytes": self.baseline.get(k),
                    "loaded_bytes": self.loaded.get(k)} for k, v in self.peaks.items()}

    def by_window(self) -> dict[str, dict[str, int]]:
        """{window: {source: peak bytes}}: setup (loading), inference (forward-only probe), train, evaluation."""
        return {w: dict(v) for w, v in self.windows.items()}


# --------------------------------------------------------------------------- inference probe
def inference_probe(loss: Callable[[Any], torch.Tensor], module: torch.nn.Module, batch: Any,
                    device: torch.device, repeats: int = 2) -> list[float]:
    """Forward-only passes of the training loss on one training batch, without autograd: the memory and
    time a ZO step should approach. Leaves RNG state and the module's train/eval mode as they were."""
    times = []
    was_training = module.training
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        module.eval()
        try:
            for _ in range(repeats):
                sync(device)
                start = time.perf_counter()
                float(loss(batch))
                sync(device)
                times.append(time.perf_counter() - start)
        finally:
            module.train(was_training)
    return times


# --------------------------------------------------------------------------- provenance
def _version(pkg: str) -> str | None:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5,
                             cwd=os.path.dirname(__file__))
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def git_revision() -> str | None:
    rev = _git("rev-parse", "--short", "HEAD")
    if rev and _git("status", "--porcelain", "--untracked-files=no"):
        rev += "+dirty"
    return rev or None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, Any]:
    """Where a number came from: device, driver, package versions, git revision."""
    env: dict[str, Any] = {
        "device": str(device), "host": platform.node(), "platform": platform.platform(),
        "python": platform.python_version(), "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
        "memory_total_bytes": psutil.virtual_memory().total, "torch_threads": torch.get_num_threads(),
        "packages": {p: _version(p) for p in ("zobench", "torch", "transformers", "peft", "datasets", "numpy",
                                              "pandas", "nvidia-ml-py")},
        "git_revision": git_revision(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),  # which GPUs this process could see
    }
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        env["device_memory_bytes"] = torch.cuda.get_device_properties(device).total_memory
        try:
            import pynvml

            pynvml.nvmlInit()
            env["driver"] = pynvml.nvmlSystemGetDriverVersion()
        except Exception:
            pass
    return env
