"""Timers (phases, laps, the context-var helper) and peak memory (windows, labelled sources, fallbacks)."""

from __future__ import annotations

import time

import pytest
import torch

from zobench import measure
from zobench.measure import Clock, PeakMemory, environment, inference_probe, phase, timed

CPU = torch.device("cpu")
MIB = 2**20


def test_phase_is_a_no_op_without_an_active_clock():
    assert measure._ACTIVE.get() is None
    with phase("perturbation"):
        pass
    assert phase("update") is phase("forward")  # the one shared null context: nothing allocated per call


def test_clock_times_phases_laps_and_counts_a_nested_phase_once():
    with Clock(CPU) as clock:
        assert measure._ACTIVE.get() is clock
        for _ in range(3):
            with clock.phase("step"):
                with phase("forward"), phase("forward"):  # the runner and an engine both timing "forward"
                    time.sleep(0.01)
                with phase("update"):
                    time.sleep(0.002)
            lap = clock.lap()
            assert set(lap) == {"step", "forward", "update"}
            assert lap["step"] >= lap["forward"] + lap["update"]
            assert 0.009 < lap["forward"] < lap["step"]  # counted once, not twice
    assert measure._ACTIVE.get() is None
    summary = clock.summary()
    assert summary["forward"]["laps"] == 3
    assert summary["forward"]["total_s"] == pytest.approx(sum(clock.steps["forward"]))
    assert summary["step"]["median_s"] >= summary["forward"]["median_s"]


def test_timed_wraps_a_callable_as_a_phase():
    clock = Clock(CPU)
    double = timed("forward", lambda x: 2 * x)
    assert double(3) == 6  # no clock active: plain call
    with clock:
        assert double(4) == 8
    assert "forward" in clock.totals


def test_peak_memory_windows_on_cpu_are_rss_only_and_labelled():
    with PeakMemory(CPU) as memory:
        keep = torch.ones(8 * MIB // 4)  # 8 MiB held from setup on
        with memory.window("inference"):
            tmp = torch.ones(16 * MIB // 4)
            del tmp
        memory.switch("train")
        tmp = torch.ones(64 * MIB // 4)
        tmp.add_(1)
        del tmp
    record, windows = memory.record(), memory.by_window()
    assert set(record) == {"rss"}  # no GPU here: the NVML and allocator figures are absent, not zero
    assert record["rss"]["source"] and record["rss"]["bytes"] >= record["rss"]["baseline_bytes"] > 0
    assert record["rss"]["loaded_bytes"] >= record["rss"]["baseline_bytes"]
    assert {"setup", "inference", "train"} <= set(windows)
    assert windows["train"]["rss"] - windows["inference"]["rss"] > 40 * MIB
    assert windows["inference"]["rss"] - record["rss"]["loaded_bytes"] > 12 * MIB
    assert record["rss"]["bytes"] == max(w["rss"] for w in windows.values())
    del keep


def test_peak_memory_falls_back_to_sampling_without_the_kernel_high_water_mark(monkeypatch):
    def unavailable() -> None:
        raise OSError("no /proc/self/clear_refs here")

    monkeypatch.setattr(measure._KernelHWM, "reset", staticmethod(unavailable))
    with PeakMemory(CPU, interval=0.005) as memory:
        memory.switch("train")
        big = torch.ones(64 * MIB // 4)
        time.sleep(0.1)  # several sampling intervals with the tensor alive
        del big
    rss = memory.record()["rss"]
    assert "sampled" in rss["source"]
    assert memory.by_window()["train"]["rss"] - rss["loaded_bytes"] > 48 * MIB


def test_inference_probe_leaves_rng_and_mode_alone():
    module = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5))
    module.train()
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    times = inference_probe(lambda x: module(x).sum(), module, torch.ones(2, 4), CPU, repeats=3)
    assert len(times) == 3 and all(t > 0 for t in times)
    assert module.training
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(p.grad is None for p in module.parameters())


def test_environment_names_its_sources():
    env = environment(CPU)
    assert env["device"] == "cpu" and env["packages"]["torch"]
    assert "git_revision" in env and "driver" not in env and env["cpu_count"] >= 1


def test_a_run_records_phases_windows_and_per_step_times(write_suite, tmp_path):
    from conftest import TINY_LLAMA

    from zobench.config import load_suite
    from zobench.grid import expand
    from zobench.runner import run
    from zobench.store import Store

    path = write_suite({"name": "m", "defaults": {"steps": 4, "batch_size": 4, "eval_every": 2, "device": "cpu"},
                        "grid": {"models": [{"name": "tiny", "config": TINY_LLAMA}],
                                 "tasks": [{"name": "synthetic-sentiment", "train_size": 16, "dev_size": 8,
                                            "test_size": 8}],
                                 "methods": [{"name": "zo-sgd", "lr": 0.01}, {"name": "fo-adam", "lr": 0.01}]}})
    suite, lines = load_suite(path)
    for spec in expand(suite, path, lines):
        record = run(spec, Store(tmp_path / "results", "m"))
        assert record.status == "done", record.outcome.error
        assert {"setup", "inference", "train", "evaluation"} <= set(record.memory_by_phase)
        phases = record.timing.phases
        assert {"step", "forward", "evaluation"} <= set(phases)
        assert phases["step"].laps == 4
        assert phases["forward"].total_s <= phases["step"].total_s
        assert record.timing.inference_forward_s > 0
        import pandas as pd

        curve = pd.read_parquet(tmp_path / "results" / "m" / spec.run_id / "curve.parquet")
        steps = curve[curve["step"] > 0]
        assert steps["step_s"].notna().all() and (steps["forward_s"] <= steps["step_s"]).all()
        assert list(steps["forward_passes"]) == ([2, 4, 6, 8] if spec.method.name == "zo-sgd" else [1, 2, 3, 4])


# --------------------------------------------------------------------------- NVML, faked (no GPU needed)
class FakeNVML:
    """pynvml's calls that measure.py makes, over a made-up machine of GPUs (NVML's numbering: PCI order)."""

    class NVMLError(Exception):
        pass

    def __init__(self, gpus: list[dict], procs: dict[str, list] | None = None) -> None:
        self.gpus, self.procs = gpus, procs or {}

    def nvmlInit(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def _find(self, key: str, value: str) -> dict:
        for gpu in self.gpus:
            if gpu[key].lower() == value.lower():
                return gpu
        raise self.NVMLError(f"no GPU with {key} {value}")

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> dict:
        return self._find("uuid", uuid)

    def nvmlDeviceGetHandleByPciBusId(self, bus: str) -> dict:
        return self._find("pci", bus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> dict:
        return self.gpus[index]

    def nvmlDeviceGetMemoryInfo(self, handle: dict):
        from types import SimpleNamespace

        return SimpleNamespace(used=handle["used"], total=80 * 2**30)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: dict) -> list:
        return self.procs.get(handle["uuid"], [])


GPUS = [{"uuid": "GPU-aaaa", "pci": "00000000:3b:00.0", "used": 10 * MIB},
        {"uuid": "GPU-bbbb", "pci": "00000000:86:00.0", "used": 500 * MIB}]


def torch_sees(monkeypatch, **props) -> None:
    """torch sees one GPU (cuda:0) with these properties (what CUDA_VISIBLE_DEVICES left it)."""
    from types import SimpleNamespace

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: SimpleNamespace(**props))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


@pytest.mark.parametrize("props", [{"uuid": "bbbb"}, {"uuid": "GPU-bbbb"},
                                   {"pci_domain_id": 0, "pci_bus_id": 0x86, "pci_device_id": 0}])
def test_nvml_matches_torchs_gpu_by_uuid_or_pci_bus_not_by_index(monkeypatch, props):
    """CUDA_VISIBLE_DEVICES=1: torch's cuda:0 is NVML's GPU 1."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    torch_sees(monkeypatch, **props)
    handle, how = measure.nvml_handle(FakeNVML(GPUS), 0)
    assert handle["uuid"] == "GPU-bbbb", how


def test_nvml_without_uuid_or_bus_reads_a_uuid_in_cuda_visible_devices_or_nothing(monkeypatch):
    torch_sees(monkeypatch)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbbb")
    assert measure.nvml_handle(FakeNVML(GPUS), 0)[0]["uuid"] == "GPU-bbbb"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    with pytest.raises(RuntimeError, match="cannot tell which of NVML's 2 GPUs"):
        measure.nvml_handle(FakeNVML(GPUS), 0)  # index 0 would be GPU-aaaa: absent beats wrong
    assert measure.nvml_handle(FakeNVML(GPUS[1:]), 0)[0]["uuid"] == "GPU-bbbb"  # the only GPU


def fake_cuda(monkeypatch, nvml: FakeNVML) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    torch_sees(monkeypatch, uuid="GPU-bbbb")
    for name in ("empty_cache", "reset_peak_memory_stats", "synchronize"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a, **k: 0)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a, **k: 0)


def test_nvml_records_the_process_and_the_device_under_their_own_names(monkeypatch):
    """Another process on the GPU grows by 300 MiB while ours holds 200 MiB: two figures, never one mixed."""
    import os
    from types import SimpleNamespace

    nvml = FakeNVML([dict(g) for g in GPUS])
    fake_cuda(monkeypatch, nvml)
    gpu = nvml.gpus[1]
    with PeakMemory(torch.device("cuda", 0), interval=60) as memory:  # samples taken at window edges only
        gpu["used"] += 500 * MIB
        nvml.procs["GPU-bbbb"] = [SimpleNamespace(pid=os.getpid(), usedGpuMemory=200 * MIB),
                                  SimpleNamespace(pid=os.getpid() + 1, usedGpuMemory=300 * MIB)]
        memory.switch("train")
    record = memory.record()
    assert record["nvml"]["bytes"] == 200 * MIB and "own" in record["nvml"]["source"]
    assert record["nvml_device"]["bytes"] == 500 * MIB and "minus" in record["nvml_device"]["source"]
    assert "GPU-bbbb" in record["nvml"]["source"]
    train = memory.by_window()["train"]
    assert (train["nvml"], train["nvml_device"]) == (200 * MIB, 500 * MIB)


def test_nvml_without_per_process_figures_leaves_nvml_absent(monkeypatch):
    nvml = FakeNVML([dict(g) for g in GPUS])
    fake_cuda(monkeypatch, nvml)
    with PeakMemory(torch.device("cuda", 0), interval=60) as memory:
        nvml.gpus[1]["used"] += 64 * MIB
        memory.switch("train")
    record = memory.record()
    assert "nvml" not in record and record["nvml_device"]["bytes"] == 64 * MIB
