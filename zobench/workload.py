"""What the runner trains: a module's trainable parameters, a loss on a batch, and evaluation.

Tasks build workloads: a language task from a model and its data, a synthetic problem from itself.
The runner knows nothing else about either.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Workload:
    module: torch.nn.Module
    train_size: int  # examples to draw batches from; 0 for a deterministic objective
    loss: Callable[[Any], torch.Tensor]  # mean loss on a batch (the ZO objective)
    make_batch: Callable[[list[int]], Any]  # example indices → batch
    evaluate: Callable[[str], dict[str, float]]  # split ("dev"/"test") → metrics
    metric: str  # the metric that picks the best dev evaluation, e.g. "accuracy"
    higher_is_better: bool = True
    info: dict[str, Any] = field(default_factory=dict)  # split sizes, parameter counts, ...
    example_ids: dict[str, list[str]] = field(default_factory=dict)  # per split, each example's source row

    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]
