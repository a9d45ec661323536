"""`full`: every parameter of the model is trainable."""

from __future__ import annotations

from typing import Any

import torch

from zobench.registry import schemes
from zobench.schemes.base import Scheme


@schemes.register("full")
class Full(Scheme):
    """Full-parameter tuning (MeZO's default)."""

    Params = None

    @staticmethod
    def apply(model: torch.nn.Module, params: dict[str, Any]) -> torch.nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
