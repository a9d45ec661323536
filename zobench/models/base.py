"""What a model loader returns, and the placeholder for tasks that bring their own parameters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import BaseModel

from zobench.registry import models


@dataclass
class ModelBundle:
    model: torch.nn.Module
    tokenizer: Any
    kind: str = "causal"  # "causal" or "masked": how a task scores its options


class ModelLoader:
    Params: ClassVar[type[BaseModel] | None] = None

    @classmethod
    def load(cls, params: dict[str, Any], device: torch.device, seed: int) -> ModelBundle | None:
        raise NotImplementedError

    @classmethod
    def check(cls, params: dict[str, Any]) -> None:
        """Planning-time check of validated params (local path exists, ...): raise FieldError(field, why + fix).
        Cheap, side-effect free, no network: it runs for every suite before anything is written."""


@models.register("none")
class NoModel(ModelLoader):
    """No model: the task is a synthetic problem that owns its parameters."""

    @classmethod
    def load(cls, params: dict[str, Any], device: torch.device, seed: int) -> None:
        return None
