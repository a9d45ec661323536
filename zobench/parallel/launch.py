"""Run a suite's data-parallel runs as one of N torch.distributed processes.

    torchrun --nproc-per-node 2 -m zobench.parallel.launch SUITE.yaml [--results results] [--data-dir DIR]

Every process expands the same suite and runs the same pending runs in the same order (rank 0 decides which
are pending and tells the others), so their collectives meet; rank 0 writes the results folder, the other
ranks write to a temporary store that is thrown away. Only runs with `parallel: {data: N}` for this N are
accepted: a one-process run here would run N times. The same entry point works under a Slurm job with N
tasks (srun torchrun ..., or the torchrun environment set per task).

The executors start one run's N workers themselves (parallel/workers.py, the same env:// rendezvous):

    python -m torch.distributed.run --standalone --nproc-per-node N -m zobench.parallel.launch \
        --spec SPEC.json --results ROOT --out RESULT.json      (the subprocess pool)

a Slurm job with N tasks (submitit's `TorchDistributedEnvironment` exports the variables) and N Ray tasks in
a placement group (meeting at a file:// rendezvous in the shared results folder) call
`zobench.parallel.workers.run_spec_distributed` directly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from zobench.errors import UserError


def _one_spec(args: argparse.Namespace) -> int:
    """`--spec`: one run as one of the workers torchrun started; rank 0 writes what it returns to `--out`."""
    from zobench.parallel.workers import run_spec_distributed

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
