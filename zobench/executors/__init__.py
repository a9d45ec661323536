"""Executors: how a list of run specs gets run. All write through the same store.

local (in-process), subprocess (a process per run, one per GPU), slurm (submitit job arrays),
ray (one task per run). Engines that need a package import it only when used.
"""

from __future__ import annotations

from typing import Any

from zobench.executors import local, pool, ray_cluster, slurm  # noqa: F401
from zobench.executors.local import Executor, ExecutorOptions, pending
from zobench.store import Store, SuiteRecord

__all__ = ["Executor", "ExecutorOptions", "pending", "run_specs", "suite_record"]


def suite_record(suite: Any) -> SuiteRecord:
    """The suite's settings the report reads from its results folder (config.Suite → store.SuiteRecord)."""
    return SuiteRecord(name=suite.name, description=suite.description or "", regenerates=suite.regenerates)


def run_specs(suite: Any, specs: list, store: Store, engine: str, *, rerun: bool = False, console: Any = None) -> int:
    """What `zobench run` and `zobench.run` share: forget `specs` when rerunning, run what is not done with
    executor `engine` (options from the suite), write through `store`. Returns how many runs were pending."""
    from zobench.registry import executors

    store.write_suite(suite_record(suite))  # what the report needs from the YAML, before any run starts
    if rerun:  # forget their results (a run another process is running right now is left to it)
        for spec in specs:
            store.discard(spec.run_id)
    todo = pending(specs, store)
    if console is not None:
        console.print(f"suite [bold]{suite.name}[/]: {len(specs)} runs, {len(specs) - len(todo)} already done, "
                      f"{len(todo)} to run")
    options = suite.executor.options_for(engine)
    (executors.get(engine)(options, console=console) if console is not None
     else executors.get(engine)(options)).run(todo, store)
    return len(todo)
