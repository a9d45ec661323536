"""Tasks. Importing this package registers every task."""

from zobench.tasks import sst2, synthetic  # noqa: F401
from zobench.tasks.base import ChoiceTask, Task

__all__ = ["ChoiceTask", "Task"]
