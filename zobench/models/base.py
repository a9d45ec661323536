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


def blocks(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks (its largest ModuleList of same-typed modules: transformer layers, with any
    LoRA inside them), else the module itself. Why blocks, not the model: every task's forward runs through
    them, however it enters the model (an OPT calls its decoder directly, an MLM task its encoder then the
    head at the mask, prompt tuning passes inputs_embeds), and identical blocks compile once (regional
    compilation); embeddings and heads stay eager (small, and their shapes vary by task)."""
    lists = [m for m in module.modules()
             if isinstance(m, torch.nn.ModuleList) and len(m) > 0 and len({type(c) for c in m}) == 1]
    if not lists:
        return [module]
    return list(max(lists, key=lambda blocks: sum(p.numel() for p in blocks.parameters())))


def compile_blocks(module: torch.nn.Module) -> list[torch.nn.Module]:
    """torch.compile the model's blocks (`blocks`) in place: the `compile: true` run setting."""
    found = blocks(module)
    for block in found:
        block.compile()
    return found


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
