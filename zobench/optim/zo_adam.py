"""zo-adam and zo-adamm: Adam-style moments of the ZO gradient estimate.

`zo-adam` is ZO-Bench's ZO-Adam (Zhang et al. 2024, arXiv 2402.11592): the trainer builds
`torch.optim.Adam(model.parameters(), lr)` (ZO-Bench/ZO-LLM zo-bench/trainer.py:315-316), sets each
parameter's `.grad` to g·z and calls `optimizer.step()` (trainer.py:1066-1068): torch's Adam with its
defaults, bias-corrected, no AMSGrad, on the ZO gradient. `zo-adamm` is ZO-AdaMM (Chen et al. 2019,
NeurIPS, arXiv 1910.06513, Alg. 1): AMSGrad's max of second moments, no bias correction.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field, PositiveFloat

from zobench.optim.zo import ZOMethod, ZOParams
from zobench.registry import methods


class ZOAdamParams(ZOParams):
    lr: PositiveFloat = 1e-4
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    adam_eps: PositiveFloat = 1e-8  # δ in the denominator (torch Adam's eps)


@methods.register("zo-adam")
class ZOAdam(ZOMethod):
    """ZO-Bench's ZO-Adam: torch.optim.Adam's step on ĝ = g·z.

    m ← β1·m + (1−β1)·ĝ;  v ← β2·v + (1−β2)·ĝ²;  θ ← θ − η/(1−β1ᵗ) · m / (√v/√(1−β2ᵗ) + δ)
    (torch's Adam, torch/optim/adam.py single-tensor path). Weight decay, if set, is Adam's coupled L2
    (ĝ += wd·θ) on matrices only (ZO-Bench passes none). State: m and v, two parameter-sized tensors.
    """

    Params = ZOAdamParams
    hp: ZOAdamParams
    sgd_update = False

    def __init__(self, params: list[torch.nn.Parameter], hp: ZOAdamParams, seed: int) -> None:
        super().__init__(params, hp, seed)
        self.moments: list[dict[str, torch.Tensor]] = [{} for _ in self.params]

    @torch.no_grad()
    def apply(self, i: int, p: torch.Tensor, est: torch.Tensor) -> None:
        hp, s, t = self.hp, self.moments[i], self.t
        if not s:
            s["m"], s["v"] = torch.zeros_like(p), torch.zeros_like(p)
        if hp.weight_decay and self.decays(i):
            est.add_(p, alpha=hp.weight_decay)
        s["m"].mul_(hp.beta1).add_(est, alpha=1 - hp.beta1)
        s["v"].mul_(hp.beta2).addcmul_(est, est, value=1 - hp.beta2)
        denom = est.copy_(s["v"]).sqrt_().div_(math.sqrt(1 - hp.beta2**t)).add_(hp.adam_eps)
        p.addcdiv_(s["m"], denom, value=-hp.lr / (1 - hp.beta1**t))

    def state_tensors(self) -> list[torch.Tensor]:
        return [t for s in self.moments for t in s.values()]


@methods.register("zo-adamm")
class ZOAdaMM(ZOAdam):
    """ZO-AdaMM (Chen et al. 2019, Alg. 1): AMSGrad on ĝ = g·z, without bias correction.

    m ← β1·m + (1−β1)·ĝ;  v ← β2·v + (1−β2)·ĝ²;  v̂ ← max(v̂, v);  θ ← θ − η·m / (√v̂ + δ).
    Weight decay is decoupled (AdamW-style), matrices only. State: m, v and v̂.
    """

    @torch.no_grad()
    def apply(self, i: int, p: torch.Tensor, est: torch.Tensor) -> None:
        hp, s = self.hp, self.moments[i]
        if not s:
            s["m"], s["v"], s["v_max"] = torch.zeros_like(p), torch.zeros_like(p), torch.zeros_like(p)
        s["m"].mul_(hp.beta1).add_(est, alpha=1 - hp.beta1)
        s["v"].mul_(hp.beta2).addcmul_(est, est, value=1 - hp.beta2)
        torch.maximum(s["v_max"], s["v"], out=s["v_max"])
        if hp.weight_decay and self.decays(i):
            p.mul_(1 - hp.lr * hp.weight_decay)
        p.addcdiv_(s["m"], est.copy_(s["v_max"]).sqrt_().add_(hp.adam_eps), value=-hp.lr)
