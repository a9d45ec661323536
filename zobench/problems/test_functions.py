"""The six 2-D test functions of ZO-AdaMU's Figure 2 (Jiang et al., AAAI 2024), with their optima, and the
non-convex Rastrigin and Ackley functions (global minimum 0 at the origin) for the black-box methods.

Each is a task with no model: the trainable parameter is the point (x, y) itself, the objective is
f(x, y), and evaluation reports the point (so `eval_every: 1` records the trajectory as dev_x, dev_y)
and its distance to the optimum. Rosenbrock is the paper's printed form 100(x − y²)² + (1 − y)²
(x and y swapped from the usual one), minimum at (1, 1). A point that runs off beyond 1000 domain
half-widths gets the value ∞, so the runner records the run as diverged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict

from zobench.models.base import ModelBundle
from zobench.registry import tasks
from zobench.tasks.base import Task
from zobench.workload import Workload

Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ESCAPED = 1e3  # a point this many domain half-widths out has diverged


@dataclass(frozen=True)
class Function2D:
    formula: str
    f: Fn
    optimum: tuple[float, float]
    domain: tuple[float, float]  # the square [lo, hi]² of the paper's search domain
    start: tuple[float, float]  # our default start (the paper does not give its starting points)


def _beale(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


def _rastrigin(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 20 + x**2 + y**2 - 10 * (torch.cos(2 * torch.pi * x) + torch.cos(2 * torch.pi * y))


def _ackley(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (-20 * torch.exp(-0.2 * torch.sqrt(0.5 * (x**2 + y**2)))
            - torch.exp(0.5 * (torch.cos(2 * torch.pi * x) + torch.cos(2 * torch.pi * y))) + torch.e + 20)


FUNCTIONS: dict[str, Function2D] = {
    "a": Function2D("|x| + |y|", lambda x, y: x.abs() + y.abs(), (0.0, 0.0), (-3.0, 3.0), (-2.5, 2.0)),
    "b": Function2D("|x + y| + |x − y|/10", lambda x, y: (x + y).abs() + (x - y).abs() / 10,
                      (0.0, 0.0), (-3.0, 3.0), (-2.5, 2.0)),
    "c": Function2D("(x + y)² + (x − y)²/10", lambda x, y: (x + y) ** 2 + (x - y) ** 2 / 10,
                      (0.0, 0.0), (-3.0, 3.0), (-2.5, 2.0)),
    "d": Function2D("|x|/10 + |y|", lambda x, y: x.abs() / 10 + y.abs(), (0.0, 0.0), (-3.0, 3.0), (-2.5, 2.0)),
    "beale": Function2D("Beale", _beale, (3.0, 0.5), (-4.5, 4.5), (1.0, 1.5)),
    "rosenbrock": Function2D("100(x − y²)² + (1 − y)²", lambda x, y: 100 * (x - y**2) ** 2 + (1 - y) ** 2,
                               (1.0, 1.0), (-4.5, 4.5), (2.0, -2.0)),
}
# non-convex, with a local minimum near every integer point: where CBO claims global convergence (arXiv 2306.09778);
# not in ZO-AdaMU's figure, so kept apart from FUNCTIONS (which report/figure2.py regenerates)
NON_CONVEX: dict[str, Function2D] = {
    "rastrigin": Function2D("Rastrigin 20 + Σ x² − 10 cos 2πx", _rastrigin, (0.0, 0.0), (-5.12, 5.12), (2.5, -2.2)),
    "ackley": Function2D("Ackley", _ackley, (0.0, 0.0), (-5.0, 5.0), (2.5, -2.2)),
}
ALL_FUNCTIONS: dict[str, Function2D] = {**FUNCTIONS, **NON_CONVEX}


class Function2DParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    function: Literal["a", "b", "c", "d", "beale", "rosenbrock", "rastrigin", "ackley"] = "a"
    start: tuple[float, float] | None = None  # None: the function's default start


class Point(torch.nn.Module):
    def __init__(self, fn: Function2D, start: tuple[float, float]) -> None:
        super().__init__()
        self.fn = fn
        self.xy = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))

    def forward(self) -> torch.Tensor:
        xy = self.xy
        if bool((xy.detach().abs() > ESCAPED * self.fn.domain[1]).any()):  # blown up: report ∞ (the runner
            return xy.abs().sum() * torch.inf  # marks the run diverged) rather than values near the float limit
        return self.fn.f(xy[0], xy[1])


@tasks.register("test-function")
class Function2DTask(Task):
    """ZO-AdaMU Fig. 2's 2-D test functions (a–d, Beale, Rosenbrock as printed); metric: distance to optimum."""

    Params = Function2DParams
    needs_model = False

    @classmethod
    def build(cls, params: dict[str, Any], bundle: ModelBundle | None, device: torch.device,
              seed: int) -> Workload:
        p = Function2DParams.model_validate(params)
        fn = ALL_FUNCTIONS[p.function]
        point = Point(fn, p.start or fn.start).to(device)
        optimum = torch.tensor(fn.optimum, dtype=torch.float64, device=device)

        @torch.no_grad()
        def evaluate(split: str) -> dict[str, float]:
            x, y = (float(v) for v in point.xy)
            return {"x": x, "y": y, "value": float(point()),
                    "distance_to_optimum": float((point.xy - optimum).norm())}

        return Workload(module=point, train_size=0, loss=lambda _batch: point(), make_batch=lambda _i: None,
                        evaluate=evaluate, metric="distance_to_optimum", higher_is_better=False,
                        info={"function": p.function, "formula": fn.formula, "optimum": list(fn.optimum)})
