"""Data-parallel ZO (zobench/parallel/data.py) in two gloo processes against one process.

Shard mode: the 2-worker trajectory equals the 1-process one on the full batch up to summation order;
the shards are uneven (6 and 5 of 11 examples), so an unweighted mean of the shard means would fail.
Queries mode: 2 workers with one query each equal a q = 2 run with the same seeds.
The model is float64 so the tolerance (from its epsilon) is far below what a wrong reduction moves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from zobench import registry
from zobench.parallel.data import DataParallelZO, ddp_bytes_per_step, parameter_bytes, shard_bounds
from zobench.workload import Workload

N_EXAMPLES, STEPS, LR, EPS = 11, 6, 0.05, 1e-3
DTYPE = torch.float64


def _model() -> torch.nn.Module:
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).to(DTYPE)


def _workload(model: torch.nn.Module) -> Workload:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(N_EXAMPLES, 6, generator=g, dtype=DTYPE)
    y = torch.randint(0, 3, (N_EXAMPLES,), generator=g)
    return Workload(module=model, train_size=N_EXAMPLES, loss=lambda idx: F.cross_entropy(model(x[idx]), y[idx]),
                    make_batch=lambda idx: list(idx), evaluate=lambda split: {}, metric="loss")


def _method(model: torch.nn.Module, q: int, engine: str):
    cls = registry.methods.get("zo-sgd")
    model.requires_grad_(False)
    params = list(model.parameters())
    for p in params:
        p.requires_grad_(True)
    return cls(params, cls.Params.model_validate({"lr": LR, "eps": EPS, "q": q, "engine": engine}), 7)


def _train(mode: str | None, q: int, engine: str) -> tuple[list[torch.Tensor], list[float], float]:
    """Trajectory (flat θ after each step), losses, and comm bytes per step (0 without a group)."""
    model = _model()
    workload = _workload(model)
    method = _method(model, q, engine)
    dp = DataParallelZO(mode) if mode else None
    if dp is not None:
        workload = dp.workload(workload)
        method = dp.attach(method)
    trajectory, losses = [], []
    for step in range(STEPS):
        batch = workload.make_batch([(step + k) % N_EXAMPLES for k in range(N_EXAMPLES)])
        with torch.no_grad():
            losses.append(method.step(lambda b=batch: workload.loss(b)))
        method.settle()
        trajectory.append(torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()]))
    return trajectory, losses, dp.comm_bytes_per_step() if dp else 0.0


CASES = [("shard", 1, "virtual"), ("shard", 1, "inplace"), ("queries", 2, "virtual"), ("queries", 2, "inplace")]


def _worker(rank: int, world: int, init: str, out: str) -> None:
    """Every case in one pair of processes (a spawn costs more than the cases)."""
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        result = {case: _train(*case) for case in CASES}
        model = _model()  # the first-order baseline's bytes on the same model
        x = torch.randn(N_EXAMPLES, 6, dtype=DTYPE)
        y = torch.zeros(N_EXAMPLES, dtype=torch.long)
        result["ddp"] = ddp_bytes_per_step(model, lambda m: F.cross_entropy(m(x), y), steps=2)
        result["param_bytes"] = parameter_bytes(list(model.parameters()))
        torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def workers() -> list[dict]:
    """Two gloo processes' results for every case."""
    world = 2
    with tempfile.TemporaryDirectory() as tmp:
        init = "file://" + os.path.join(tmp, "rendezvous")
        mp.spawn(_worker, args=(world, init, tmp), nprocs=world, join=True)
        return [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(world)]


def _tolerance(losses: list[float], n_terms: int) -> float:
    """Summation order only: each loss may move by n·u·|L| (u: float64 unit roundoff), g by that over ε,
    θ by lr·Δg·|z| per step (|z| ≤ 6 for the few hundred Gaussian numbers here), summed over the steps."""
    u = torch.finfo(DTYPE).eps / 2
    dg = 2 * n_terms * u * max(abs(v) for v in losses) / (2 * EPS)
    return 10 * STEPS * LR * dg * 6.0


def test_shard_bounds_cover_the_batch_unevenly() -> None:
    assert [shard_bounds(11, r, 2) for r in range(2)] == [(0, 6), (6, 11)]
    assert [shard_bounds(2, r, 3) for r in range(3)] == [(0, 1), (1, 2), (2, 2)]


@pytest.mark.parametrize("engine", ["virtual", "inplace"])
def test_two_gloo_workers_reproduce_the_one_process_trajectory(workers: list[dict], engine: str) -> None:
    ref, ref_losses, _ = _train(None, 1, engine)
    results = [{"train": w[("shard", 1, engine)], **w} for w in workers]
    tol = _tolerance(ref_losses, N_EXAMPLES)
    for res in results:
        traj, losses, comm = res["train"]
        diff = max(float((a - b).abs().max()) for a, b in zip(traj, ref, strict=True))
        print(f"shard/{engine}: max |θ_2proc − θ_1proc| over {STEPS} steps = {diff:.3e} (tolerance {tol:.1e})")
        assert diff <= tol
        assert losses == pytest.approx(ref_losses, rel=0, abs=tol)
        assert comm == 2 * 8  # two forwards a step, one float64 scalar each
    assert torch.equal(results[0]["train"][0][-1], results[1]["train"][0][-1])  # the workers agree exactly
    ddp = results[0]["ddp"]
    assert ddp == results[0]["param_bytes"]  # DDP hands every gradient to its all-reduce once a step
    print(f"comm bytes/step: ZO-DP {results[0]['train'][2]:.0f}, FO-DDP {ddp:.0f} (parameters {ddp:.0f} B)")


@pytest.mark.parametrize("engine", ["virtual", "inplace"])
def test_query_mode_equals_a_q_equal_n_run(workers: list[dict], engine: str) -> None:
    ref, ref_losses, _ = _train(None, 2, engine)
    results = [{"train": w[("queries", 2, engine)]} for w in workers]
    tol = _tolerance(ref_losses, 1)  # the same numbers, only the in-place passes' rounding may differ
    for res in results:
        traj, losses, comm = res["train"]
        diff = max(float((a - b).abs().max()) for a, b in zip(traj, ref, strict=True))
        print(f"queries/{engine}: max |θ_2workers − θ_(q=2)| = {diff:.3e} (tolerance {tol:.1e})")
        assert diff <= tol
        assert losses == pytest.approx(ref_losses, rel=0, abs=tol)
        assert comm == 3 * 8  # one (seed, g, loss) triple of int64 words a step
    if engine == "virtual":  # θ is written only by the update, from the same seeds and g: bit for bit
        assert all(torch.equal(a, b) for a, b in zip(results[0]["train"][0], ref, strict=True))


SUITE = """name: dp-test
defaults: {batch_size: 8, steps: 4, eval_every: 4, select: last, device: cpu}
grid:
  tasks: [{name: attention-regression, init: random}]
  methods: [{name: zo-sgd, lr: 0.01, eps: 0.001, settings: {parallel: {data: 2}}}]
  seeds: [0]
"""


def _plan(tmp_path: Path, text: str) -> list:
    from zobench.cli import plan

    (tmp_path / "suite.yaml").write_text(text)
    return plan(tmp_path / "suite.yaml")[1]


def test_a_parallel_run_outside_a_launcher_fails_naming_the_fix(tmp_path: Path) -> None:
    from zobench import runner
    from zobench.store import Store

    spec = _plan(tmp_path, SUITE)[0]
    record = runner.run(spec, Store(tmp_path / "results", "dp-test"))
    assert record.outcome.status == "failed"
    assert "torchrun --nproc-per-node 2 -m zobench.parallel.launch" in record.outcome.error


def test_unset_parallel_keeps_run_ids(tmp_path: Path) -> None:
    with_none = _plan(tmp_path, SUITE.replace(", settings: {parallel: {data: 2}}", ""))[0]
    assert "parallel" not in with_none.hashed()["settings"]
    assert _plan(tmp_path, SUITE)[0].run_id != with_none.run_id


def test_launcher_runs_the_suite_as_two_workers(tmp_path: Path) -> None:
    """torchrun → zobench.parallel.launch → runner: rank 0's record equals a one-process run on the full batch."""
    from zobench import runner
    from zobench.store import Store

    (tmp_path / "suite.yaml").write_text(SUITE)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m",
                          "zobench.parallel.launch", str(tmp_path / "suite.yaml"), "--results", str(tmp_path / "r")],
                         env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    spec = _plan(tmp_path, SUITE)[0]
    two = json.loads((tmp_path / "r" / "dp-test" / spec.run_id / "summary.json").read_text())
    assert two["status"] == "done" and two["comm_bytes_per_step"] == 16.0
    one_spec = _plan(tmp_path, SUITE.replace(", settings: {parallel: {data: 2}}", ""))[0]
    one = runner.run(one_spec, Store(tmp_path / "one", "dp-test")).metrics.final_train_loss
    tol = 1e3 * torch.finfo(torch.float64).eps * max(1.0, abs(one))  # summation order only
    assert abs(two["final_train_loss"] - one) <= tol
