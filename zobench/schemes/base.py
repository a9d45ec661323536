"""What every tuning scheme declares (grid.py and the runner use these, never probe for them)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import BaseModel


class Scheme:
    """A tuning scheme: which parameters of the model train. `apply` may wrap the model (peft)."""

    Params: ClassVar[type[BaseModel] | None] = None  # None: takes no parameters

    @classmethod
    def check(cls, params: dict[str, Any]) -> None:
        """Planning-time check of validated params: raise FieldError(field, why + fix). Default: nothing."""

    @staticmethod
    def apply(model: torch.nn.Module, params: dict[str, Any]) -> torch.nn.Module:
        raise NotImplementedError
