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


def compile_backbone(module: torch.nn.Module) -> torch.nn.Module:
    """torch.compile the network body every forward runs through (a transformers model's `base_model`,
    under peft's wrapper; else the module itself), in place. Why the body, not the top module: tasks call
    the body directly (an MLM encoder, then the head at the mask only; a soft prompt's inputs_embeds), and
    LoRA's layers live inside it. Heads stay eager: small, and their shapes vary by task."""
    base = module.get_base_model() if hasattr(module, "get_base_model") else module
    body = getattr(base, "base_model", base)
    body.compile()
    return body


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
