"""Softmax regression (Deng, Li, Mahadevan, Song, arXiv 2307.08352).

L(x) = ½‖⟨exp(Ax), 1⟩⁻¹ exp(Ax) − b‖² + L_reg(x), with the paper's regulariser L_reg(x) = ½‖W A x‖²,
here W = √reg·I (reg = 0: no regulariser). b = softmax(Ax*) for a planted x*, so without the
regulariser L* = 0 at x*. With it the minimiser moves; the paper takes W large enough that L is
strongly convex, and we compute the minimiser x_reg by Newton's method in float64 at build time
(to ‖∇L‖ ≤ 1e-12, with a positive-definite Hessian there), so the reported L − L* is exact to
float64 precision either way.
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
    reg: NonNegativeFloat = 0.0  # w² of the paper's L_reg = ½‖diag(w) A x‖² (0: off)
    instance_seed: int | None = None  # None: the run seed draws A and x*


def softmax_loss(A: torch.Tensor, b: torch.Tensor, reg: float, x: torch.Tensor) -> torch.Tensor:
    u = A @ x
    loss = 0.5 * (torch.softmax(u, dim=0) - b).pow(2).sum()
    return loss + 0.5 * reg * u.pow(2).sum() if reg else loss


def newton_minimum(A: torch.Tensor, b: torch.Tensor, reg: float, x0: torch.Tensor,
                   tol: float = 1e-12, max_iter: int = 100) -> torch.Tensor:
    """The regularised minimiser by damped Newton (float64). Raises if it does not converge."""
    x = x0.clone()

    def f(v: torch.Tensor) -> torch.Tensor:
        return softmax_loss(A, b, reg, v)

    for _ in range(max_iter):
        grad = torch.autograd.functional.jacobian(f, x)
        if grad.norm() <= tol:
            hess = torch.autograd.functional.hessian(f, x)
            if torch.linalg.eigvalsh(hess).min() <= 0:
                break
            return x
        step = torch.linalg.solve(torch.autograd.functional.hessian(f, x), grad)
        t, fx = 1.0, f(x)
        while f(x - t * step) > fx and t > 1e-10:
            t /= 2
        x = x - t * step
    raise ValueError(f"softmax-regression: Newton's method found no strict minimum for reg={reg}; "
                     "raise reg (the paper assumes a strongly convex regularised loss)")


class SoftmaxRegression(torch.nn.Module):
    def __init__(self, p: SoftmaxRegressionParams, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed if p.instance_seed is None else p.instance_seed)
        self.register_buffer("A", torch.randn(p.n, p.d, generator=gen, dtype=torch.float64) * p.scale / p.d**0.5)
        x_star = torch.randn(p.d, generator=gen, dtype=torch.float64)
        self.register_buffer("b", torch.softmax(self.A @ x_star, dim=0))
        self.reg = p.reg
        self.register_buffer("x_opt", newton_minimum(self.A, self.b, p.reg, x_star) if p.reg else x_star)
        self.optimum = float(softmax_loss(self.A, self.b, p.reg, self.x_opt)) if p.reg else 0.0
        self.x = torch.nn.Parameter(torch.zeros(p.d, dtype=torch.float64))

    def forward(self) -> torch.Tensor:
        return softmax_loss(self.A, self.b, self.reg, self.x)


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
        start = float(problem().detach()) - problem.optimum

        @torch.no_grad()
        def evaluate(split: str) -> dict[str, float]:
            gap = float(problem()) - problem.optimum
            return {"loss_gap": gap, "relative_gap": gap / start if start else 0.0,
                    "distance": float((problem.x - problem.x_opt).norm())}

        return Workload(module=problem, train_size=0, loss=lambda _batch: problem(), make_batch=lambda _i: None,
                        evaluate=evaluate, metric="loss_gap", higher_is_better=False,
                        info={"dim": p.d, "optimum": problem.optimum})
