"""The optimiser interface the runner drives: one `step(loss_fn)` per training step."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, PositiveFloat

LossFn = Callable[[], torch.Tensor]


class MethodParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lr: PositiveFloat = 1e-3


class Method:
    """One optimiser. Counts its forward and backward passes so curves can be drawn against them."""

    Params: ClassVar[type[MethodParams]] = MethodParams
    needs_grad: ClassVar[bool] = False
    differentiates: ClassVar[bool] = False  # needs a differentiable objective (backward or jvp), besides needs_grad
    only_tasks: ClassVar[tuple[str, ...]] = ()  # the tasks it can train, when not every task
    registered_name: ClassVar[str] = ""

    @classmethod
    def incompatible(cls, task: str, task_params: dict) -> str | None:
        """Why this method cannot train this task (None: it can), asked for every cell at planning time,
        so a suite fails at once with the fix instead of runs failing one by one."""
        if cls.only_tasks and task not in cls.only_tasks:
            return f"trains only the task(s) {', '.join(cls.only_tasks)}"
        objective = task_params.get("objective", "loss")
        if (cls.needs_grad or cls.differentiates) and objective != "loss":
            return (f"needs a differentiable objective, and this task's objective is '{objective}' "
                    "(use a zeroth-order method, or objective: loss)")
        return None

    @classmethod
    def resolved(cls, params: dict) -> dict:
        """Validated params with every value left to the method ('auto') made concrete, before `check`: the run
        id and the record then name what runs, never what the machine happened to pick. Default: as given."""
        return params

    @classmethod
    def check(cls, params: dict) -> None:
        """Planning-time check of validated params: raise FieldError(field, why + fix). Default: nothing."""

    @classmethod
    def uncompilable(cls, params: dict) -> str | None:
        """Why this method's forwards cannot run through a compiled model (None: they can), asked at
        planning time for runs with `compile: true`."""
        return None

    def __init__(self, params: list[torch.nn.Parameter], hp: MethodParams, seed: int) -> None:
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("no trainable parameters")
        self.hp = hp
        self.seed = seed
        self.forward_passes = 0
        self.backward_passes = 0

    def step(self, loss_fn: LossFn) -> float:
        """One optimisation step; returns the training loss it saw."""
        raise NotImplementedError

    def settle(self) -> None:
        """Finish work a step deferred (the in-place ZO engine folds its update into the next step), so the
        parameters hold the trained θ. The runner calls it before every evaluation and after training."""

    def state_tensors(self) -> list[torch.Tensor]:
        """Tensors the method keeps between steps (momenta, second moments, ...)."""
        return []

    def state_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state_tensors())

    # what the runner asks of every method; the defaults are a plain trained method's
    takes_steps: ClassVar[bool] = True  # False: zero-shot, ICL, linear probing (0 steps; evaluated as built)
    prepares: ClassVar[bool] = False  # True: `prepare(workload)` does work (timed as the "prepare" phase)

    def prepare(self, workload: Any) -> None:
        """Work before the first step that needs the workload (ICL's demonstrations, a linear probe's fit)."""

    def match_model(self, module: torch.nn.Module) -> None:
        """Adapt to the model's weights once built (first-order: mixed precision for half-precision weights)."""

    def autocast(self) -> AbstractContextManager:
        """The precision the training forward runs at; evaluations run under it too."""
        return contextlib.nullcontext()

    def precision(self) -> dict[str, Any] | None:
        """The precision it trained at, for the record (None: the model's own, nothing to say)."""
        return None
