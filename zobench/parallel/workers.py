"""One worker of a run with `parallel: {data: N}` whose N processes an executor started: torchrun's (the
subprocess pool, through `zobench.parallel.launch --spec`), a Slurm job's N tasks, N Ray tasks.

Apart from launch.py so that the executors can call it without importing the command line (launch's suite
mode reads suites through `zobench.cli.plan`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from zobench.errors import UserError


def init_from_env(device: str, init: str | None = None, rank: int | None = None, world: int | None = None,
                  gpus: int = 1) -> None:
    """Join the group the launcher described in the environment (RANK, WORLD_SIZE, MASTER_ADDR/PORT: env://),
    or at `init` (e.g. file:// on the results' shared filesystem) as `rank` of `world`; NCCL with one GPU per
    worker where the run may use a GPU and one is visible (the first of its `gpus`: LOCAL_RANK × gpus), else gloo."""
    cuda = torch.cuda.is_available() and device != "cpu"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)) * gpus % torch.cuda.device_count())
    if init is None:
        dist.init_process_group("nccl" if cuda else "gloo", init_method="env://")
    else:
        dist.init_process_group("nccl" if cuda else "gloo", init_method=init, rank=rank, world_size=world)


def run_spec_distributed(spec_json: str, results: str, threads: int | None = None, wait: bool = False,
                         init: str | None = None, rank: int | None = None, world: int | None = None) -> dict[str, Any]:
    """One worker of a `parallel: {data: N}` run whose N processes an executor started (torchrun, a Slurm job's
    N tasks, N Ray tasks). Rank 0 claims the run and writes the results folder; it tells the others whether to
    run (the run may be done or held by another process), and they train into a scratch store thrown away.

    Returns what `zobench.worker.run_spec_json` returns, from rank 0; the other ranks return {"rank": r}.
    """
    from zobench import runner
    from zobench.executors.lines import StepFile
    from zobench.grid import RunSpec
    from zobench.runlog import third_party_output_to
    from zobench.store import Store
    from zobench.worker import thread_env, torch_threads

    if threads is not None:
        os.environ.update(thread_env(threads))
    spec = RunSpec.model_validate_json(spec_json)
    init_from_env(spec.settings.device, init, rank, world, spec.settings.gpus or 1)
    try:
        rank = dist.get_rank()
        with torch_threads(threads):
            if rank != 0:
                decision = [None]
                dist.broadcast_object_list(decision, src=0)
                if decision[0] == "run":
                    with tempfile.TemporaryDirectory() as scratch:
                        runner.run(spec, Store(Path(scratch), spec.suite))
                return {"rank": rank, "run_id": spec.run_id}
            store = Store(results, spec.suite)
            with store.claim(spec.run_id, wait=wait) as mine:
                done = mine and store.is_done(spec.run_id, spec.spec_hash)
                decision = ["run" if mine and not done else "skip"]
                dist.broadcast_object_list(decision, src=0)
                if not mine:
                    return {"held_elsewhere": True, "run_id": spec.run_id}
                if done:
                    return store.summary(spec.run_id) or {"run_id": spec.run_id}
                store.begin(spec.run_id)
                with third_party_output_to(store.run_dir(spec.run_id) / "run.log"):
                    record = runner.run(spec, store, StepFile(store.run_dir(spec.run_id)))
            return record.flat()
    except UserError as e:
        return {"user_error": str(e), "run_id": spec.run_id}
    finally:
        dist.destroy_process_group()
