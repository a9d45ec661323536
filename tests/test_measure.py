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
        summary = run(spec, Store(tmp_path / "results", "m"))
        assert summary["status"] == "done", summary.get("error")
        assert {"setup", "inference", "train", "evaluation"} <= set(summary["memory_by_phase"])
        assert {"step", "forward", "evaluation"} <= set(summary["phases"])
        assert summary["phases"]["step"]["laps"] == 4
        assert summary["phases"]["forward"]["total_s"] <= summary["phases"]["step"]["total_s"]
        assert summary["inference_forward_s"] > 0
        import pandas as pd

        curve = pd.read_parquet(tmp_path / "results" / "m" / spec.run_id / "curve.parquet")
        steps = curve[curve["step"] > 0]
        assert steps["step_s"].notna().all() and (steps["forward_s"] <= steps["step_s"]).all()
        assert list(steps["forward_passes"]) == ([2, 4, 6, 8] if spec.method.name == "zo-sgd" else [1, 2, 3, 4])
