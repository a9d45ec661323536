"""Executors: how a list of run specs gets run. All write through the same store.

local (in-process), subprocess (a process per run, one per GPU), slurm (submitit job arrays),
ray (one task per run). Engines that need a package import it only when used.
"""

from zobench.executors import local, pool, ray_cluster, slurm  # noqa: F401
from zobench.executors.local import Executor, ExecutorOptions, pending

__all__ = ["Executor", "ExecutorOptions", "pending"]
