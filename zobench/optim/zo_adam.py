"""zo-adam: ZO-AdaMM (Chen et al. 2019, NeurIPS, arXiv 1910.06513), the ZO-Adam of ZO-Bench."""

from __future__ import annotations

import torch
from pydantic import Field, PositiveFloat

from zobench.optim.zo import ZOMethod, ZOParams
from zobench.registry import methods


class ZOAdamParams(ZOParams):
    lr: PositiveFloat = 1e-4
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    adam_eps: PositiveFloat = 1e-8
    amsgrad: bool = True  # ZO-AdaMM's v̂ = max(v̂, v); False gives plain ZO-Adam without bias correction


@methods.register("zo-adam")
class ZOAdam(ZOMethod):
    """ZO-AdaMM (Chen et al. 2019, Alg. 1): Adam moments of the ZO estimate ĝ = g·z.

    m ← β1·m + (1−β1)·ĝ;  v ← β2·v + (1−β2)·ĝ²;  v̂ ← max(v̂, v);  θ ← θ − η·m / (√v̂ + δ).
    No bias correction, as in the paper. Weight decay is decoupled (AdamW-style). State: m, v and
    (amsgrad) v̂ — three parameter-sized tensors per parameter.
    """

    Params = ZOAdamParams
    hp: ZOAdamParams

    def __init__(self, params: list[torch.nn.Parameter], hp: ZOAdamParams, seed: int) -> None:
        super().__init__(params, hp, seed)
        self.moments: list[dict[str, torch.Tensor]] = [{} for _ in self.params]

    @torch.no_grad()
    def apply(self, i: int, p: torch.Tensor, est: torch.Tensor) -> None:
        hp, s = self.hp, self.moments[i]
        if not s:
            s["m"], s["v"] = torch.zeros_like(p), torch.zeros_like(p)
            if hp.amsgrad:
                s["v_max"] = torch.zeros_like(p)
        s["m"].mul_(hp.beta1).add_(est, alpha=1 - hp.beta1)
        s["v"].mul_(hp.beta2).addcmul_(est, est, value=1 - hp.beta2)
        v = s["v"]
        if hp.amsgrad:
            torch.maximum(s["v_max"], v, out=s["v_max"])
            v = s["v_max"]
        if hp.weight_decay:
            p.mul_(1 - hp.lr * hp.weight_decay)
        p.addcdiv_(s["m"], est.copy_(v).sqrt_().add_(hp.adam_eps), value=-hp.lr)

    def state_tensors(self) -> list[torch.Tensor]:
        return [t for s in self.moments for t in s.values()]
