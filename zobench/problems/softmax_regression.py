"""Softmax regression (Deng, Li, Song et al., arXiv 2307.08352).

L(x) = ½‖⟨exp(Ax), 1⟩⁻¹ exp(Ax) − b‖² with a planted b = softmax(Ax*), so L* = 0 and the
reported loss is the exact optimality gap L − L*.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, NonNegativeFloat, PositiveFloat, PositiveInt

from zobench.models.base import ModelBundle
from zobench.registry import tasks
from zobench.tasks.base import Task
from zobench.workload import Workload


class SoftmaxRegressionParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: PositiveInt = 64  # rows of A (length of the softmax vector)
    d: PositiveInt = 32  # dimension of x
    scale: PositiveFloat = 1.0  # entries of A are N(0, scale²/d)
    reg: NonNegativeFloat = 0.0  # the paper's regulariser: + ½·reg·‖Ax‖² (changes L*; off by default)
    instance_seed: int | None = None  # None: the run seed draws A and x*


class SoftmaxRegression(torch.nn.Module):
    def __init__(self, p: SoftmaxRegressionParams, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed if p.instance_seed is None else p.instance_seed)
        self.register_buffer("A", torch.randn(p.n, p.d, generator=gen, dtype=torch.float64) * p.scale / p.d**0.5)
        x_star = torch.randn(p.d, generator=gen, dtype=torch.float64)
        self.register_buffer("b", torch.softmax(self.A @ x_star, dim=0))
        self.x = torch.nn.Parameter(torch.zeros(p.d, dtype=torch.float64))
        self.reg = p.reg

    def forward(self) -> torch.Tensor:
        u = self.A @ self.x
        loss = 0.5 * (torch.softmax(u, dim=0) - self.b).pow(2).sum()
        return loss + 0.5 * self.reg * u.pow(2).sum() if self.reg else loss


@tasks.register("softmax-regression")
class SoftmaxRegressionTask(Task):
    """SPSA's test bed in arXiv 2307.08352: planted softmax regression, metric = L − L* (lower is better)."""

    Params = SoftmaxRegressionParams
    needs_model = False

    @classmethod
    def build(cls, params: dict[str, Any], bundle: ModelBundle | None, device: torch.device,
              seed: int) -> Workload:
        p = SoftmaxRegressionParams.model_validate(params)
        problem = SoftmaxRegression(p, seed).to(device)
        start = float(problem().detach())

        @torch.no_grad()
        def evaluate(split: str) -> dict[str, float]:
            gap = float(problem().detach())  # L* = 0 without the regulariser
            return {"loss_gap": gap, "relative_gap": gap / start if start else 0.0}

        return Workload(module=problem, train_size=0, loss=lambda _batch: problem(), make_batch=lambda _i: None,
                        evaluate=evaluate, metric="loss_gap", higher_is_better=False, info={"dim": p.d})
