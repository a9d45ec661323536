"""hizoo: HiZOO (Zhao et al. 2024, arXiv 2402.15173), a diagonal-Hessian-informed ZO optimiser."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from zobench.optim.base import LossFn
from zobench.optim.zo import ZOMethod, ZOParams
from zobench.registry import methods


class HiZOOParams(ZOParams):
    one_sided: Literal[False] = False  # the curvature needs L+ and L−
    hessian_smooth: float = Field(1e-8, ge=0, lt=1, description="α_t, the EMA weight of each new Hessian estimate")
    # updated: step along u/√Σ⁻¹_{t+1}, Σ updated first (the authors' code); perturbed: along the Σ_t^{1/2}u
    # that was perturbed (the paper's equations)
    step_sigma: Literal["updated", "perturbed"] = "updated"


@methods.register("hizoo")
class HiZOO(ZOMethod):
    """HiZOO: perturb along Σ^{1/2}u, with Σ⁻¹ a running diagonal Hessian estimate (3 forwards per step).

    u ~ N(0, I);  L0 = L(θ), L± = L(θ ± ε Σ_t^{1/2} u);  g = (L+ − L−)/2ε;
    Σ_{t+1}⁻¹ = (1−α)·Σ_t⁻¹ + α·|L+ + L− − 2L0| / (2ε²) · diag(Σ_t^{-1/2} u uᵀ Σ_t^{-1/2});
    θ ← θ − η·g·Σ_{t+1}^{1/2} u. State: the diagonal Σ⁻¹ (one parameter-sized tensor, initialised to 1).
    The step's Σ follows the authors' code (Yanjun-Zhao/HiZOO trainer.py:505-513: Σ⁻¹ is updated
    first, then θ ← θ − η(g·u/√Σ⁻¹_{t+1} + wd·θ), every tensor decayed); `step_sigma: perturbed` steps
    along the Σ_t^{1/2}u that was perturbed, as the paper's equations read (E[ĝ] = Σ_t ∇L). Default
    α = 1e-8 as in the authors' OPT scripts (0 gives MeZO exactly).
    """

    Params = HiZOOParams
    hp: HiZOOParams
    needs_base = own_draw = own_queries = True
    sgd_update = False
    decays_vectors = True  # trainer.py:513 decays every tensor

    def __init__(self, params: list[torch.nn.Parameter], hp: HiZOOParams, seed: int) -> None:
        super().__init__(params, hp, seed)
        self.hess = [torch.ones_like(p) for p in self.params]  # Σ⁻¹, diagonal

    def draw(self, i: int, p: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return self.noise(p, gen).div_(self.hess[i].sqrt())

    def begin_step(self) -> None:
        self.pairs: list[tuple[float, float]] = []  # (L+, L−) per query

    def query(self, loss_fn: LossFn, seed: int, base: float | None) -> tuple[float, float]:
        eps = self.hp.eps
        plus = self.evaluate(loss_fn, self.along(seed, eps))
        minus = self.evaluate(loss_fn, self.along(seed, -eps))
        self.pairs.append((plus, minus))
        return (plus - minus) / (2 * eps), (plus + minus) / 2

    @torch.no_grad()
    def update(self, seeds: list[int], grads: list[float]) -> None:
        hp, base, q = self.hp, self.base_loss, len(seeds)
        assert base is not None
        for i, p in enumerate(self.params):
            step = self.estimate(i, p, seeds, grads) if hp.step_sigma == "perturbed" else None  # before Σ moves
            if hp.hessian_smooth:
                fresh = torch.zeros_like(p)
                for seed, (plus, minus) in zip(seeds, self.pairs, strict=True):
                    u = self.noise(p, self.generator(p, seed, i)).mul_(self.directions.sphere_scale(seed))
                    fresh.addcmul_(u, u, value=abs(plus + minus - 2 * base) / (2 * hp.eps**2) / q)
                # Σ⁻¹ ← (1−α)Σ⁻¹ + α·curvature·u²·Σ⁻¹  (diag of Σ^{-1/2} u uᵀ Σ^{-1/2}), both terms from the old Σ⁻¹
                fresh.mul_(self.hess[i])
                self.hess[i].mul_(1 - hp.hessian_smooth).add_(fresh, alpha=hp.hessian_smooth)
            self.apply(i, p, step if step is not None else self.estimate(i, p, seeds, grads))

    def state_tensors(self) -> list[torch.Tensor]:
        return list(self.hess)
