"""What both scorers share: the prompt-choice example, and the virtual tokens a peft prompt-learning model adds.

Causal scoring (`tasks/scoring.py`) and masked-LM scoring (`tasks/masked.py`) both import from here, so
neither imports the other's module back (scoring dispatches to masked; masked needs nothing of scoring).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Choice:
    prompt: str  # the text before the option (for a masked LM: before the mask)
    options: list[str]
    label: int  # the option trained towards
    suffix: str = ""  # text after the mask (masked LMs); causal scoring ignores it
    correct: tuple[int, ...] | None = None  # every acceptable option (ReCoRD); None = (label,)

    def is_correct(self, predicted: int) -> bool:
        return predicted in (self.correct if self.correct is not None else (self.label,))

    def answer_text(self) -> str:
        """The prompt completed with its correct option: one in-context demonstration."""
        return self.prompt + self.options[self.label]


def prompt_learning(model: torch.nn.Module) -> int:
    """Virtual tokens a peft prompt-learning model prepends to the sequence (prompt tuning); else 0."""
    config: Any = getattr(model, "active_peft_config", None)
    if config is None or not getattr(config, "is_prompt_learning", False):
        return 0
    return int(config.num_virtual_tokens) if str(config.peft_type).endswith("PROMPT_TUNING") else 0
