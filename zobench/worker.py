"""One run in whatever process an executor gives it: `python -m zobench.worker --results ROOT SPEC.json`.

The subprocess pool starts this module; Slurm (submitit) and Ray call `run_spec_json` directly; the local
executor calls `run_claimed`. Every path ends in `run_claimed` (the run's lock, then
`zobench.runner.run(spec, store)`), so atomic files and claiming are the same whichever engine ran the run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported only once the thread count is in the environment
    from zobench.grid import RunSpec
    from zobench.store import RunRecord, Store

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def thread_env(threads: int) -> dict[str, str]:
    """Environment for a child process that should use `threads` CPU threads (read before torch loads)."""
    return {var: str(threads) for var in THREAD_VARS}


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Use `threads` intra-op threads for the block (None: leave torch's setting alone)."""
    import torch

    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


HELD_ELSEWHERE = 3  # the worker's exit code when another process holds the run


def run_claimed(spec: RunSpec, store: Store, progress: Any = None, wait: bool = False) -> RunRecord | None:
    """Run one spec at most once across processes: under its lock, and only if it is not done by now.

    Returns None when another process holds the run (and not `wait`); the stored record when another
    process finished it meanwhile; else the new record. Every executor's worker ends here.
    """
    from zobench import runner
    from zobench.runlog import third_party_output_to

    with store.claim(spec.run_id, wait=wait) as mine:
        if not mine:
            return None
        if store.is_done(spec.run_id, spec.spec_hash):
            return store.record(spec.run_id)
        store.begin(spec.run_id)
        with third_party_output_to(store.run_dir(spec.run_id) / "run.log"):  # transformers' warnings: not the console
            return runner.run(spec, store, progress)


def run_spec_json(spec_json: str, results: str, threads: int | None = None, wait: bool = False) -> dict[str, Any]:
    """Rebuild a RunSpec from JSON and run it into `results/<suite>/` under the run's lock.

    Returns the run's summary; `{"held_elsewhere": True}` when another process holds the run (and not
    `wait`); `{"user_error": message}` for a reason the user must fix. Engines differ in how they carry
    exceptions back; a plain dict crosses all of them.
    """
    from zobench.errors import UserError
    from zobench.executors.lines import StepFile
    from zobench.grid import RunSpec
    from zobench.store import Store

    if threads is not None:
        os.environ.update(thread_env(threads))
    spec = RunSpec.model_validate_json(spec_json)
    try:
        with torch_threads(threads):
            store = Store(results, spec.suite)  # the step goes to the run's folder, for the parent's step lines
            record = run_claimed(spec, store, StepFile(store.run_dir(spec.run_id)), wait=wait)
    except UserError as e:
        return {"user_error": str(e), "run_id": spec.run_id}
    return record.flat() if record is not None else {"held_elsewhere": True, "run_id": spec.run_id}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zobench.worker", description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="a RunSpec as JSON (a file, or - for standard input)")
    parser.add_argument("--results", required=True, help="results root; the run lands in RESULTS/<suite>/<run_id>")
    parser.add_argument("--threads", type=int, default=None, help="torch/OpenMP threads for this run")
    parser.add_argument("--wait", action="store_true", help="wait for another process that holds the run")
    args = parser.parse_args(argv)
    spec_json = sys.stdin.read() if args.spec == "-" else Path(args.spec).read_text()
    summary = run_spec_json(spec_json, args.results, args.threads, args.wait)
    if "user_error" in summary:
        print(f"error: {summary['user_error']}", file=sys.stderr)
        return 2
    if summary.get("held_elsewhere"):
        print(f"run {summary['run_id']}: another process holds it", file=sys.stderr)
        return HELD_ELSEWHERE
    print(json.dumps({k: summary.get(k) for k in ("run_id", "status", "metric", "test_metric", "wall_s")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
