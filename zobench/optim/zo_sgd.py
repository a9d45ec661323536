"""The ZO-SGD family: MeZO's ZO-SGD and ZO-Bench's sign, momentum and conservative variants."""

from __future__ import annotations

import math

import torch
from pydantic import Field

from zobench.optim.base import LossFn
from zobench.optim.zo import ZOMethod, ZOParams
from zobench.registry import methods


@methods.register("zo-sgd")
class ZOSGD(ZOMethod):
    """MeZO ZO-SGD (Malladi et al. 2023, arXiv 2305.17333, Alg. 1): θ ← θ − η·g·z, no optimiser state.

    g = (L(θ+εz) − L(θ−εz)) / 2ε with z ~ N(0, I) regenerated from a per-step seed (two forwards);
    defaults follow MeZO's OPT runs (ε = 1e-3). The engine's options apply: q queries, Rademacher
    or sphere directions, one-sided differences. Weight decay as princeton-nlp/MeZO
    large_models/trainer.py:800-806: θ ← θ − η(g·z + wd·θ), not on biases and LayerNorm weights
    (the 1-D tensors, `ZOMethod.decays`).
    """


@methods.register("zo-sgd-sign")
class ZOSGDSign(ZOMethod):
    """ZO-SGD-Sign as in ZO-Bench (Zhang et al. 2024, arXiv 2402.11592): θ ← θ − η·sign(g)·z.

    Only the sign of each projected gradient is kept (ZO-Bench's `zo_sign_opt`, zo-bench/trainer.py:1055-1058:
    sign(g)·z, not sign(g·z)), so the step length does not depend on the size of the loss difference. No state.
    """

    sgd_update = False

    @torch.no_grad()
    def estimate(self, i: int, p: torch.Tensor, seeds: list[int], grads: list[float]) -> torch.Tensor:
        return super().estimate(i, p, seeds, [math.copysign(1.0, g) if g else 0.0 for g in grads])


class MomentumParams(ZOParams):
    momentum: float = Field(0.9, ge=0, lt=1)


@methods.register("zo-sgd-mmt")
class ZOSGDMomentum(ZOMethod):
    """ZO-SGD with heavy-ball momentum (ZO-Bench's ZO-SGD-MMT): m ← μ·m + ĝ; θ ← θ − η·m.

    ĝ = g·z (+ weight decay, coupled as in torch.optim.SGD, which ZO-Bench uses: ZO-Bench/ZO-LLM
    zo-bench/trainer.py:321 builds SGD(lr, momentum) and :1066-1068 steps it on .grad = g·z). State: one
    parameter-sized buffer m per parameter. Default μ = 0.9.
    """

    Params = MomentumParams
    hp: MomentumParams
    sgd_update = False

    def __init__(self, params: list[torch.nn.Parameter], hp: MomentumParams, seed: int) -> None:
        super().__init__(params, hp, seed)
        self.buf: list[torch.Tensor | None] = [None] * len(self.params)

    @torch.no_grad()
    def apply(self, i: int, p: torch.Tensor, est: torch.Tensor) -> None:
        if self.hp.weight_decay and self.decays(i):
            est.add_(p, alpha=self.hp.weight_decay)
        buf = self.buf[i]
        if buf is None:
            buf = self.buf[i] = est.clone()
        else:
            buf.mul_(self.hp.momentum).add_(est)
        p.add_(buf, alpha=-self.hp.lr)

    def state_tensors(self) -> list[torch.Tensor]:
        return [b for b in self.buf if b is not None]


@methods.register("zo-sgd-cons")
class ZOSGDConservative(ZOMethod):
    """Conservative ZO-SGD (ZO-Bench's ZO-SGD-Cons): keep the best of θ, θ − η·ĝ and θ + η·ĝ.

    After the usual estimate, the two candidate points are evaluated (through the engine's virtual
    shift, so θ is never written until the choice is made), and the step moves to the one with the
    lowest loss, with ZO-Bench's tie rules (zo-bench/trainer.py:1251-1336). Cost: L(θ) + 2q + 2 forwards
    per step. No state; weight decay, if set, is applied to the chosen move only.
    """

    needs_base = True

    def step(self, loss_fn: LossFn) -> float:
        seeds, grads, _ = self.probe(loss_fn)
        lr, base = self.hp.lr, self.base_loss
        assert base is not None

        def candidate(sign: float):
            return lambda i, raw: self.estimate(i, raw, seeds, grads).mul_(sign * lr).add_(raw)

        down = self.evaluate(loss_fn, candidate(-1.0))  # θ − η ĝ
        up = self.evaluate(loss_fn, candidate(+1.0))  # θ + η ĝ
        if down > base:  # ZO-Bench: reject a move that raises the loss
            sign = 0.0 if base < up else 1.0
        else:
            sign = -1.0 if down < up else 1.0
        if sign:
            with torch.no_grad():
                for i, p in enumerate(self.params):
                    if self.hp.weight_decay and self.decays(i):
                        p.mul_(1 - lr * self.hp.weight_decay)
                    p.add_(self.estimate(i, p, seeds, grads), alpha=sign * lr)
        return base
