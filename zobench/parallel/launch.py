"""Run a suite's data-parallel runs as one of N torch.distributed processes.

    torchrun --nproc-per-node 2 -m zobench.parallel.launch SUITE.yaml [--results results] [--data-dir DIR]

Every process expands the same suite and runs the same pending runs in the same order (rank 0 decides which
are pending and tells the others), so their collectives meet; rank 0 writes the results folder, the other
ranks write to a temporary store that is thrown away. Only runs with `parallel: {data: N}` for this N are
accepted: a one-process run here would run N times. The same entry point works under a Slurm job with N
tasks (srun torchrun ..., or the torchrun environment set per task).

The executors start one run's N workers themselves (`run_spec_distributed`, the same env:// rendezvous):

    python -m torch.distributed.run --standalone --nproc-per-node N -m zobench.parallel.launch \
        --spec SPEC.json --results ROOT --out RESULT.json      (the subprocess pool)

a Slurm job with N tasks (submitit's `TorchDistributedEnvironment` exports the variables) and N Ray tasks in
a placement group (meeting at a file:// rendezvous in the shared results folder) call
`run_spec_distributed` directly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
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


def _one_spec(args: argparse.Namespace) -> int:
    """`--spec`: one run as one of the workers torchrun started; rank 0 writes what it returns to `--out`."""
    result = run_spec_distributed(args.spec.read_text(), str(args.results), args.threads, args.wait)
    if args.out is not None and "rank" not in result:
        from zobench.store import atomic_write

        atomic_write(args.out, json.dumps(result, default=str).encode())
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m zobench.parallel.launch")
    ap.add_argument("suite", type=Path, nargs="?")
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--spec", type=Path, default=None, help="one RunSpec as JSON (how the executors start a run)")
    ap.add_argument("--out", type=Path, default=None, help="with --spec: where rank 0 writes the run's summary")
    ap.add_argument("--threads", type=int, default=None, help="with --spec: torch/OpenMP threads per worker")
    ap.add_argument("--wait", action="store_true", help="with --spec: wait for another process holding the run")
    args = ap.parse_args(argv)
    if args.spec is not None:
        return _one_spec(args)
    if args.suite is None:
        ap.error("give a SUITE, or --spec SPEC.json")
    from zobench import runner
    from zobench.cli import plan
    from zobench.executors import pending, suite_record
    from zobench.store import Store

    try:
        suite, specs = plan(args.suite, args.data_dir, None)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if "WORLD_SIZE" not in os.environ:
        print("error: start this under torchrun (torchrun --nproc-per-node N -m zobench.parallel.launch SUITE)",
              file=sys.stderr)
        return 2
    world = int(os.environ["WORLD_SIZE"])
    wrong = [s.run_id for s in specs if s.settings.parallel is None or s.settings.parallel.data != world]
    if wrong:
        print(f"error: {args.suite}: {len(wrong)} run(s) do not ask for parallel: {{data: {world}}} (e.g. "
              f"{wrong[0]}); give them `parallel: {{data: {world}}}` under defaults or settings, or run them with "
              "`zobench run`", file=sys.stderr)
        return 2
    cuda = torch.cuda.is_available() and all(s.settings.device != "cpu" for s in specs)
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        rank = dist.get_rank()
        store = Store(args.results, suite.name)
        if rank == 0:
            store.write_suite(suite_record(suite))  # what the report needs from the YAML, as `zobench run` writes
        todo = [[s.run_id for s in pending(specs, store)] if rank == 0 else None]
        dist.broadcast_object_list(todo, src=0)
        with tempfile.TemporaryDirectory() as scratch:
            mine = store if rank == 0 else Store(Path(scratch), suite.name)
            for spec in specs:
                if spec.run_id in todo[0]:
                    record = runner.run(spec, mine)
                    if rank == 0:
                        print(f"{spec.run_id}: {record.outcome.status} "
                              f"comm_bytes_per_step={record.cost.comm_bytes_per_step}", flush=True)
                    dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
