"""`parallel: {data: N}` and `gpus: k` through the executors: each starts a run's N workers itself.

The subprocess pool (torchrun, N gloo processes) and submitit's local executor (a job of N tasks) run the same
2-worker run of a tiny model; its summary must equal a one-process run on the full batch to float64 summation
order, and say it ran as two workers (comm_bytes_per_step: one float64 loss per forward, two forwards a step;
a one-process run records none). Slurm and Ray: the job script and the placement group they would submit.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from zobench.cli import app
from zobench.executors.pool import Slot, Slots, SubprocessExecutor, joined

SUITE = """name: dp-exec
defaults: {batch_size: 8, steps: 4, eval_every: 4, select: last, device: cpu}
executor:
  name: subprocess
  subprocess: {workers: 2, threads: 1}
  slurm: {cluster: local, gpus_per_node: 0, threads: 1, poll_s: 0.2, timeout_min: 5}
grid:
  tasks: [{name: attention-regression, init: random}]
  methods: [{name: zo-sgd, lr: 0.01, eps: 0.001, settings: {parallel: {data: 2}}}]
  seeds: [0]
"""
ONE_PROCESS = SUITE.replace(", settings: {parallel: {data: 2}}", "")


def _plan(path: Path, text: str) -> list:
    from zobench.cli import plan

    path.write_text(text)
    return plan(path)[1]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict:
    """The same run in this process, on the full batch."""
    from zobench import runner
    from zobench.store import Store

    tmp = tmp_path_factory.mktemp("one")
    [spec] = _plan(tmp / "suite.yaml", ONE_PROCESS)
    return runner.run(spec, Store(tmp / "results", "dp-exec")).flat()


def _tolerance(value: float) -> float:
    """Summation order only (the shard losses are reduced in float64): a few hundred roundings of |value|."""
    return 1e3 * torch.finfo(torch.float64).eps * max(1.0, abs(value))


@pytest.mark.parametrize("engine", ["subprocess", "slurm"])
def test_executor_runs_two_gloo_workers_equal_to_one_process(one_process: dict, tmp_path: Path, engine: str) -> None:
    if engine == "slurm":
        pytest.importorskip("submitit")
    path = tmp_path / "suite.yaml"
    [spec] = _plan(path, SUITE)
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = CliRunner().invoke(app, ["run", str(path), "--results", str(tmp_path / "r"), "--no-report",
                                      "--executor", engine], env=env)
    assert result.exit_code == 0, result.output
    two = json.loads((tmp_path / "r" / "dp-exec" / spec.run_id / "summary.json").read_text())
    assert two["status"] == "done", two.get("error")
    assert two["comm_bytes_per_step"] == 2 * 8 and one_process["comm_bytes_per_step"] is None
    assert two["pid"] != os.getpid()
    for key in ("final_train_loss", "test_metric"):
        assert abs(two[key] - one_process[key]) <= _tolerance(one_process[key]), key
    if engine == "slurm":  # one job of two tasks, each with its rank's result
        assert len(list((tmp_path / "r" / ".submitit" / "dp-exec").glob("*_[01]_result.pkl"))) == 2


def test_slurm_submits_a_job_of_n_tasks_per_parallel_run(tmp_path: Path, monkeypatch) -> None:
    """What would go to a real Slurm: the one-process run in an array of 1 task and 1 GPU, the 2-worker run in
    an array of 2 tasks and 2 GPUs on one node (srun starts the tasks; each exports torch's env from Slurm's)."""
    pytest.importorskip("submitit")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ncp \"$1\" {tmp_path}/sbatch-$$.sh\necho 'Submitted batch job 77'\n")
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    both = SUITE.replace("[{name: zo-sgd, lr: 0.01, eps: 0.001, settings: {parallel: {data: 2}}}]",
                         "[{name: zo-sgd, lr: 0.01, eps: 0.001, settings: {parallel: {data: 2}}}, "
                         "{name: zo-sgd, label: one, lr: 0.01, eps: 0.001}]")
    both = both.replace("name: subprocess", "name: slurm").replace(
        "slurm: {cluster: local, gpus_per_node: 0, threads: 1, poll_s: 0.2, timeout_min: 5}",
        "slurm: {partition: gpu, gpus_per_node: 1, wait: false}")
    (tmp_path / "suite.yaml").write_text(both)
    result = CliRunner().invoke(app, ["run", str(tmp_path / "suite.yaml"), "--results", str(tmp_path / "r"),
                                      "--no-report"])
    assert result.exit_code == 0, result.output
    scripts = sorted(p.read_text() for p in tmp_path.glob("sbatch-*.sh"))
    assert len(scripts) == 2, result.output
    two = next(s for s in scripts if "--ntasks-per-node=2" in s)
    one = next(s for s in scripts if "--ntasks-per-node=1" in s)
    assert "#SBATCH --gpus-per-node=2" in two and "#SBATCH --gpus-per-node=1" in one
    assert "srun" in two and "#SBATCH --partition=gpu" in two


def test_slurm_task_exports_the_torch_environment_from_slurms(monkeypatch) -> None:
    """A task of a 2-task job finds the others through Slurm's variables: rank, world, the job's first host."""
    submitit = pytest.importorskip("submitit")
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    slurm = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "77", "SLURM_NTASKS": "2", "SLURM_PROCID": "1",
             "SLURM_LOCALID": "1", "SLURM_JOB_NUM_NODES": "1", "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "gpu-node7"}
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    seen: dict = {}

    def fake(spec_json, results, threads, wait, **_):
        seen.update({k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "LOCAL_RANK")})
        return {"rank": 1}

    monkeypatch.setattr("zobench.parallel.workers.run_spec_distributed", fake)
    from zobench.executors.slurm import Run
    from zobench.grid import RunSpec

    assert submitit.JobEnvironment().cluster == "slurm"
    spec = json.dumps({**RunSpec.model_validate(_spec_dict()).model_dump(mode="json")})
    assert Run(requeue=False)(spec, "/tmp/results", 1, False) == {"rank": 1}
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        os.environ.pop(key, None)  # export() wrote them outside monkeypatch
    assert seen == {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "gpu-node7", "LOCAL_RANK": "1"}


def _spec_dict(gpus: int | None = None) -> dict:
    resolved = {"name": "x", "label": "x", "params": {}}
    settings = {"parallel": {"data": 2}, **({"gpus": gpus} if gpus else {})}
    return {"suite": "s", "model": resolved, "task": resolved, "method": resolved, "scheme": resolved, "seed": 0,
            "settings": settings}


def test_ray_asks_for_a_placement_group_of_n_bundles() -> None:
    from zobench.executors.ray_cluster import placement
    from zobench.grid import RunSpec

    spec = RunSpec.model_validate(_spec_dict())
    assert placement(spec, 1.0, 1.0) == {"bundles": [{"CPU": 1.0, "GPU": 1.0}] * 2, "strategy": "PACK"}
    assert placement(spec, 2.0, 0.0)["bundles"] == [{"CPU": 2.0}] * 2  # a CPU cluster: no GPU asked for
    wide = RunSpec.model_validate(_spec_dict(gpus=2))
    assert placement(wide, 1.0, 1.0)["bundles"] == [{"CPU": 1.0, "GPU": 2.0}] * 2


def test_ray_starts_rank_r_in_bundle_r_meeting_at_one_rendezvous(tmp_path: Path, monkeypatch) -> None:
    """The tasks Ray would get (a recording stand-in for ray.remote): N tasks, rank r pinned to bundle r, all with
    the same file:// rendezvous in the run's folder; rank 0's is the run's result."""
    pytest.importorskip("ray")
    from zobench.executors.ray_cluster import RayExecutor
    from zobench.grid import RunSpec
    from zobench.store import Store

    calls: list[tuple[dict, tuple]] = []

    class Task:
        def __init__(self, options: dict | None = None) -> None:
            self.opts = options or {}

        def options(self, **kw):
            return Task({**self.opts, **kw})

        def remote(self, *args):
            calls.append((self.opts, args))
            return f"ref{len(calls) - 1}"

    groups: list = []
    monkeypatch.setattr("ray.util.placement_group", lambda bundles, strategy: groups.append(bundles) or "pg")
    fake_ray = SimpleNamespace(remote=lambda fn: Task(), __version__="x")
    ex = RayExecutor({"num_cpus": 1, "threads": 1})
    ex._groups = []
    spec = RunSpec.model_validate(_spec_dict())
    ref = ex._submit_workers(fake_ray, spec, str(tmp_path), 1, False, 0.0, Store(tmp_path, "s"))
    assert ref == "ref0" and groups == [[{"CPU": 1.0}] * 2]
    assert [c[0]["scheduling_strategy"].placement_group_bundle_index for c in calls] == [0, 1]
    assert [c[1][4:6] for c in calls] == [(0, 2), (1, 2)]  # (rank, world)
    inits = {c[1][6] for c in calls}
    assert len(inits) == 1 and next(iter(inits)).startswith(f"file://{tmp_path}")


def test_a_run_needing_two_gpus_waits_for_two_free_ones() -> None:
    slots = Slots([Slot(f"gpu {g}", {"CUDA_VISIBLE_DEVICES": g}, 4, g) for g in ("0", "0", "1", "1")])
    mine = slots.take(2)
    assert sorted(s.device for s in mine) == ["0", "1"]  # two distinct GPUs, not both slots of GPU 0
    first = slots.take(1)
    got: list = []
    waiting = threading.Thread(target=lambda: got.append(slots.take(2)), daemon=True)
    waiting.start()
    waiting.join(0.2)
    assert not got  # one free slot left: the 2-GPU run waits
    later: list = []
    behind = threading.Thread(target=lambda: later.append(slots.take(1)), daemon=True)
    behind.start()
    behind.join(0.2)
    assert not later  # a free slot, but the 2-GPU run asked first: no starving it
    slots.give(first + mine)
    waiting.join(30)
    behind.join(30)
    assert got and sorted(s.device for s in got[0]) == ["0", "1"] and len(later[0]) == 1
    run = joined(got[0], processes=2)
    assert run.env["CUDA_VISIBLE_DEVICES"] == "0,1" and run.threads == 4


def test_pool_records_a_run_needing_more_gpus_than_it_has_as_failed(tmp_path: Path) -> None:
    """Recorded without starting anything (no worker.log), so a suite's 16-GPU row does not stop the 1-GPU rows."""
    [spec] = _plan(tmp_path / "suite.yaml", SUITE.replace("device: cpu", "device: auto"))
    from zobench.store import Store

    [summary] = SubprocessExecutor({"gpus": ["0"]}).fan([spec], Store(tmp_path / "r", "dp-exec"), wait=False)
    assert summary["status"] == "failed" and "needs 2 GPUs" in summary["error"] and "pool has 1" in summary["error"]
    assert not (tmp_path / "r" / "dp-exec" / spec.run_id / "worker.log").exists()


def test_unset_gpus_keeps_run_ids(tmp_path: Path) -> None:
    [plain] = _plan(tmp_path / "a.yaml", ONE_PROCESS)
    [two] = _plan(tmp_path / "b.yaml", ONE_PROCESS.replace("device: cpu}", "device: cpu, gpus: 2}"))
    assert "gpus" not in plain.hashed()["settings"] and two.settings.gpus == 2
    assert plain.run_id != two.run_id


REPORTED = """name: memory-report
regenerates: zo2-memory, mezo-table22
defaults: {steps: 2, batch_size: 2, eval_every: 2, eval_at_start: false, select: last, device: cpu}
grid:
  models:
    - {name: tiny, label: opt-1.3b, config: {model_type: opt, hidden_size: 16, word_embed_proj_dim: 16,
       num_hidden_layers: 1, num_attention_heads: 2, ffn_dim: 32, max_position_embeddings: 64}}
  tasks: [{name: synthetic-sentiment, train_size: 8, dev_size: 4, test_size: 4, max_length: 32}]
  methods: [{name: zo-sgd, lr: 0.001}, {name: fo-adam, lr: 0.001}]
"""


def test_memory_suites_report_the_published_figures_beside_ours(tmp_path: Path) -> None:
    """A tiny model labelled opt-1.3b lands in the OPT-1.3B rows of ZO2's and MeZO Table 22's layouts, the papers'
    GB figures beside it (ZO2 3.75; MeZO 4 for MeZO, 27 for full FT)."""
    path = tmp_path / "suite.yaml"
    path.write_text(REPORTED)
    result = CliRunner().invoke(app, ["run", str(path), "--results", str(tmp_path / "r"), "--reports",
                                      str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    from zobench.report.frame import runs_frame
    from zobench.report.papers import LAYOUTS, place

    frame = runs_frame(tmp_path / "r" / "memory-report")
    (zo2,) = place(frame, LAYOUTS["zo2-memory"])
    cells = zo2.cells.set_index(["row", "column"])
    assert cells.loc[("OPT-1.3B", "GPU memory (GB)"), "paper"] == 3.75
    assert cells.loc[("OPT-1.3B", "GPU memory (GB)"), "ours_mean"] > 0
    assert ("OPT-175B", "GPU memory (GB)") in cells.index  # published rows show without a run of ours
    (t22,) = place(frame, LAYOUTS["mezo-table22"])
    cells = t22.cells.set_index(["row", "column"])
    assert cells.loc[("OPT-1.3B", "zero-shot / MeZO"), "paper"] == 4
    assert cells.loc[("OPT-1.3B", "full FT"), "paper"] == 27
    ours = zo2.cells.set_index(["row", "column"]).loc[("OPT-1.3B", "GPU memory (GB)"), "ours_mean"]
    assert ours == cells.loc[("OPT-1.3B", "zero-shot / MeZO"), "ours_mean"]  # the ZO run's figure, not FT's
    assert ours != cells.loc[("OPT-1.3B", "full FT"), "ours_mean"]
    page = (tmp_path / "p" / "memory-report")
    assert "ZO2 — GPU memory of MeZO-SGD with CPU offload" in (page / "index.html").read_text()
    table = pd.read_csv(page / "tables" / "zo2-memory.csv").set_index("row")
    assert table.loc["OPT-175B", "paper"] == 18.04 and table.loc["OPT-1.3B", "ours_n"] == 1


FSDP = """name: fsdp
defaults: {steps: 3, batch_size: 4, eval_every: 3, eval_at_start: false, select: last, device: cpu}
grid:
  models: [{name: tiny, label: tiny-llama, config: {model_type: llama, hidden_size: 32, intermediate_size: 64,
            num_hidden_layers: 2, num_attention_heads: 2, num_key_value_heads: 2, max_position_embeddings: 128}}]
  tasks: [{name: synthetic-sentiment, train_size: 16, dev_size: 8, test_size: 8, max_length: 32}]
  methods:
    - {name: fo-adam, label: plain, lr: 0.001}
    - {name: fo-adam, label: sharded, lr: 0.001, settings: {fsdp: {cpu_offload: false}}}
    - {name: fo-adam, label: offload, lr: 0.001, settings: {fsdp: {}}}
"""


def test_fsdp_through_the_runner_trains_as_the_plain_run_and_offload_names_the_fix(tmp_path: Path) -> None:
    """FSDP2 over a group of one (this process) is the plain run: same losses. CPU offload on a machine without a
    GPU fails the run with the reason and the fix (FSDP2's CPUOffloadPolicy needs an accelerator)."""
    import torch.distributed as dist

    from zobench import runner
    from zobench.store import Store

    specs = {s.method.label: s for s in _plan(tmp_path / "suite.yaml", FSDP)}
    store = Store(tmp_path / "r", "fsdp")
    try:
        got = {label: runner.run(spec, store) for label, spec in specs.items()}
    finally:
        if dist.is_initialized():  # the group of one the fsdp run made in this process
            dist.destroy_process_group()
    assert got["plain"].outcome.status == got["sharded"].outcome.status == "done"
    assert got["sharded"].metrics.final_train_loss == pytest.approx(
        got["plain"].metrics.final_train_loss, rel=100 * torch.finfo(torch.float32).eps)
    assert "fsdp" not in specs["plain"].hashed()["settings"]
    if torch.cuda.is_available():
        assert got["offload"].outcome.status == "done"
    else:
        assert got["offload"].outcome.status == "failed"
        error = got["offload"].outcome.error
        assert "CPUOffloadPolicy" in error and "needs a GPU" in error and "cpu_offload: false" in error


def _fsdp_worker(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        torch.save(_fsdp_train(sharded=True), os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


class _Stack(torch.nn.Module):
    """Two blocks in a ModuleList (what zobench.models.base.blocks finds, and FSDP wraps each) and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList([torch.nn.Linear(6, 6), torch.nn.Linear(6, 6)])
        self.head = torch.nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.head(x)


def _fsdp_train(sharded: bool) -> tuple[list[float], torch.Tensor, int]:
    """Two Adam steps on a float64 stack of two blocks (every worker on the whole batch), losses and final θ."""
    from zobench.parallel.fsdp import shard

    torch.manual_seed(0)
    model = _Stack().to(torch.float64)
    params = shard(model, cpu_offload=False, device=torch.device("cpu")) if sharded else list(model.parameters())
    opt = torch.optim.Adam(params, lr=0.05)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g)
    losses = []
    for _ in range(2):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    full = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in model.parameters()]
    held = sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in model.parameters())
    return losses, torch.cat([p.detach().reshape(-1) for p in full]), held


def test_fsdp_sharding_over_two_gloo_processes_equals_one_process(tmp_path: Path) -> None:
    """Each worker holds half of every parameter (and of Adam's state); losses and the gathered θ after two steps
    equal one process's to float64 summation order (the average of two equal gradients)."""
    import torch.multiprocessing as mp

    mp.start_processes(_fsdp_worker, args=(2, f"file://{tmp_path}/rendezvous", str(tmp_path)), nprocs=2,
                       start_method="fork")  # no re-import of this module per worker
    ref_losses, ref_theta, whole = _fsdp_train(sharded=False)
    tol = 1e3 * torch.finfo(torch.float64).eps
    held = [torch.load(tmp_path / f"rank{rank}.pt")[2] for rank in range(2)]
    assert sum(held) == whole and max(held) < whole  # each worker holds its shard only
    for rank in range(2):
        losses, theta, _ = torch.load(tmp_path / f"rank{rank}.pt")
        assert losses == pytest.approx(ref_losses, rel=tol, abs=tol)
        assert float((theta - ref_theta).abs().max()) <= tol * max(1.0, float(ref_theta.abs().max()))
