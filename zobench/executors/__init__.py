"""Executors: how a list of run specs gets run. All write through the same store."""

from zobench.executors import local  # noqa: F401
from zobench.executors.local import Executor, pending

__all__ = ["Executor", "pending"]
