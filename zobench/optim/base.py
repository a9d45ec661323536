"""The optimiser interface the runner drives: one `step(loss_fn)` per training step."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

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
    registered_name: ClassVar[str] = ""

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
