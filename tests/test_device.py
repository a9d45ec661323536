"""Where a run's device is decided: `auto` falling back to the CPU is said and recorded; `cuda` is checked
on the machine that executes the run, so a login node without GPUs can submit a Slurm or Ray grid."""

from __future__ import annotations

import pytest
import torch

from zobench import grid
from zobench.config import load_suite
from zobench.errors import UserError
from zobench.grid import expand
from zobench.runner import run
from zobench.store import Store

SUITE = {"name": "d", "defaults": {"steps": 2, "batch_size": 4, "eval_every": 2},
         "grid": {"tasks": [{"name": "softmax-regression", "n": 16, "d": 4}], "methods": [{"name": "fo-sgd"}]}}


def suite_with(write_suite, device: str, executor: str = "local"):
    path = write_suite({**SUITE, "executor": {"name": executor},
                        "defaults": {**SUITE["defaults"], "device": device}})
    suite, lines = load_suite(path)
    return suite, path, lines


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(grid, "_cuda_available", lambda: False)


def test_auto_without_a_gpu_warns_in_the_output_and_records_it(write_suite, tmp_path, no_gpu, capsys):
    suite, path, lines = suite_with(write_suite, "auto")
    (spec,) = expand(suite, path, lines)
    record = run(spec, Store(tmp_path / "results", "d"))
    assert record.status == "done" and record.env.device == "cpu"
    assert "no GPU" in record.outcome.device_fallback and "running on the CPU" in record.outcome.device_fallback
    err = capsys.readouterr().err
    assert f"WARNING [{spec.run_id}]: device: auto found no GPU" in err


def test_cpu_asked_for_is_not_a_fallback(write_suite, tmp_path, no_gpu, capsys):
    suite, path, lines = suite_with(write_suite, "cpu")
    (spec,) = expand(suite, path, lines)
    record = run(spec, Store(tmp_path / "results", "d"))
    assert record.status == "done" and "device_fallback" not in record.flat()
    assert "WARNING" not in capsys.readouterr().err


@pytest.mark.parametrize("executor", ["slurm", "ray"])
def test_a_login_node_without_gpus_plans_a_cuda_grid_for_a_cluster(write_suite, no_gpu, executor):
    suite, path, lines = suite_with(write_suite, "cuda", executor)
    (spec,) = expand(suite, path, lines)
    assert spec.settings.device == "cuda"
    suite, path, lines = suite_with(write_suite, "cuda")  # a local suite sent to a cluster with --executor
    assert len(expand(suite, path, lines, executor=executor)) == 1


def test_a_local_cuda_grid_without_a_gpu_is_refused_at_planning_with_the_line(write_suite, no_gpu):
    suite, path, lines = suite_with(write_suite, "cuda")
    with pytest.raises(UserError, match=rf"{path}:\d+: defaults.device: device 'cuda' is asked for"):
        expand(suite, path, lines)


def test_cuda_checked_where_the_run_executes(write_suite, tmp_path, no_gpu):
    """A job that lands on a node without a visible GPU fails alone, saying which host, and the grid goes on."""
    suite, path, lines = suite_with(write_suite, "cuda", "slurm")
    (spec,) = expand(suite, path, lines)
    record = run(spec, Store(tmp_path / "results", "d"))
    assert record.status == "failed"
    assert "device 'cuda' was asked for but no GPU is visible on" in record.outcome.error
    assert "CUDA_VISIBLE_DEVICES=" in record.outcome.error
