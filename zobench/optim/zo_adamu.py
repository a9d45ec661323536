"""zo-adamu: ZO-AdaMU (Jiang et al., AAAI 2024): momentum and uncertainty on the perturbation itself."""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from zobench.optim.zo import ZOMethod, ZOParams
from zobench.registry import methods

PHI = {"alpha": 1.0, "beta1": 0.1, "beta2": 1.5}  # φ of Eq. 7 for α, β1, β2
END = {"alpha": 0.5, "beta1": 0.9, "beta2": 0.01}  # the values the paper's text fixes for t ≥ T2


def cosine(t: int, t1: int, t2: int, t3: int, phi: float, monotone: bool = False) -> float:
    """Eq. 7's middle branch, 0.5 + 0.5·cos(π (t − T1) / (T3 − (t − T1)·φ·(T3 − T2)/(T2 − T1))), with t held
    at T2 after it. The paper prints the numerator as (T3 − T1), which makes the schedule jump at T1; the
    authors' code (MathIsAll/ZO-AdaMU trainer.py:242) uses (t − T1), which starts the cosine at 1.
    Where φ(T3 − T2) + T1 > T2 the angle passes π before T2 and the cosine climbs again; `monotone`
    stops it at 0 instead (the paper's Figure 1 shows every value annealing one way)."""
    s = min(t, t2) - t1
    angle = s / (t3 - s * phi * (t3 - t2) / (t2 - t1))
    return 0.5 + 0.5 * math.cos(math.pi * (min(angle, 1.0) if monotone else angle))


def anneal(t: int, t1: int, t2: int, t3: int, phi: float, end: float | None = None) -> float:
    """Eq. 7's simulated annealing: 1 while t < T1, a cosine with a shrinking period on [T1, T2), then held.

    end None (authors' code): the cosine itself, held at its T2 value for t ≥ T2, as trainer.py:238-246
    does (there the third branch repeats the cosine at T2); with the suite's T's that is α ≈ 0.04,
    β1 ≈ 0.19, β2 ≈ 0. end set (paper): the text's end points (§ "simulated annealing": α = 0.5,
    β1 = 0.9, β2 = 0.01 for t ≥ T2) reached continuously: the cosine (stopped at 0, see `cosine`)
    rescaled from [c(T2), 1] onto [end, 1], so phase 2 keeps Eq. 7's shape, every value stays between
    its end point and 1, and phase 3 holds the stated values.
    """
    if t < t1:
        return 1.0
    if end is None:
        return cosine(t, t1, t2, t3, phi)
    c, c_end = cosine(t, t1, t2, t3, phi, monotone=True), cosine(t2, t1, t2, t3, phi, monotone=True)
    return end + (1 - end) * (c - c_end) / (1 - c_end)


class ZOAdaMUParams(ZOParams):
    t1: PositiveInt = 1024  # warm-up: plain SPSA until T1 (authors' code: 1024)
    t2: PositiveInt = 16000  # end of annealing (authors' code: 0.8 × max steps)
    t3: PositiveInt = 20000  # horizon of the schedule (authors' code: max steps)
    sigma: PositiveFloat = 1e-8  # σ in θ ← θ − η g m / √(v + σ)
    signed_history: bool = Field(False, description="authors'-code variant: keep sign(g)·m as the momentum")
    # paper: the text's end points α, β1, β2 = 0.5, 0.9, 0.01; authors-code: the cosine held at its T2 value
    schedule: Literal["paper", "authors-code"] = "paper"

    @model_validator(mode="after")
    def _schedule(self) -> ZOAdaMUParams:
        if not self.t1 < self.t2 <= self.t3:
            raise ValueError(f"need t1 < t2 <= t3 (got {self.t1}, {self.t2}, {self.t3})")
        if self.t3 - max(PHI.values()) * (self.t3 - self.t2) <= 0:
            raise ValueError(f"Eq. 7's β2 schedule (φ = 1.5) has a pole unless t2 > t3/3; got t2 = {self.t2}, "
                             f"t3 = {self.t3}")
        return self


@methods.register("zo-adamu")
class ZOAdaMU(ZOMethod):
    """ZO-AdaMU (Jiang et al., AAAI 2024, Alg. 1 + Eq. 7): SPSA along a momentum of perturbations.

    Per step t, with α, β1, β2 = Anneal(t) (φ = 1, 0.1, 1.5):  ż ~ N(0, α·I),  z̈ ~ N(m_{t−1}, (1−α)·I),
    m_t = β1·ż + (1−β1)·z̈,  g = (L(θ+εm_t) − L(θ−εm_t)) / 2ε,  v = β2·ż² + (1−β2)·z̈²,
    θ ← θ − η·g·m_t / √(v + σ). ż and z̈ are regenerated from the step seed; m is the only state
    (one parameter-sized tensor per parameter), as the paper says. With q > 1 the θ update averages
    the q queries and m_t is their mean. Warm-up (t < T1) is MeZO with a per-coordinate normalised step.
    Update and decay follow MathIsAll/ZO-AdaMU trainer.py:827-841 (biases and norms not decayed). Two
    authors'-code options: `schedule: authors-code` (see `anneal`) and `signed_history` (trainer.py:841
    keeps sign(g)·m_t as the next mean). The released code's perturbation (trainer.py:733-735, 0.9·z̈ +
    0.1·ż, and an `_ema_weight()` call missing its argument) differs from its own update; we perturb
    along the m_t we step with, as Algorithm 1 does.
    """

    Params = ZOAdaMUParams
    hp: ZOAdaMUParams
    own_draw = True
    sgd_update = False

    def __init__(self, params: list[torch.nn.Parameter], hp: ZOAdaMUParams, seed: int) -> None:
        super().__init__(params, hp, seed)
        self.m: list[torch.Tensor | None] = [None] * len(self.params)
        self.alpha = self.beta1 = self.beta2 = 1.0

    def begin_step(self) -> None:
        hp = self.hp
        self.alpha, self.beta1, self.beta2 = (
            anneal(self.t, hp.t1, hp.t2, hp.t3, PHI[k], END[k] if hp.schedule == "paper" else None)
            for k in ("alpha", "beta1", "beta2"))

    def parts(self, i: int, p: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(ż, z̈): the zero-centred and the momentum-centred draws."""
        z_dot = self.noise(p, gen).mul_(math.sqrt(self.alpha))
        z_ddot = self.noise(p, gen).mul_(math.sqrt(1 - self.alpha))
        if self.m[i] is not None:
            z_ddot.add_(self.m[i])
        return z_dot, z_ddot

    def draw(self, i: int, p: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        z_dot, z_ddot = self.parts(i, p, gen)
        return z_ddot.mul_(1 - self.beta1).add_(z_dot, alpha=self.beta1)

    @torch.no_grad()
    def update(self, seeds: list[int], grads: list[float]) -> None:
        q, b1, b2, hp = len(seeds), self.beta1, self.beta2, self.hp
        for i, p in enumerate(self.params):
            step = m_new = None
            for seed, g in zip(seeds, grads, strict=True):
                z_dot, z_ddot = self.parts(i, p, self.generator(p, seed, i))
                m = z_ddot.mul(1 - b1).add_(z_dot, alpha=b1).mul_(self.directions.sphere_scale(seed))
                v = z_dot.square_().mul_(b2).addcmul_(z_ddot, z_ddot, value=1 - b2).add_(hp.sigma).sqrt_()
                del z_ddot
                if hp.signed_history and g:
                    m.mul_(math.copysign(1.0, g))
                    g = abs(g)
                term = v.reciprocal_().mul_(m).mul_(g / q)  # g·m/√(v+σ), averaged over queries
                step = term if step is None else step.add_(term)
                m_new = m.div_(q) if m_new is None else m_new.add_(m, alpha=1 / q)
            if hp.weight_decay and self.decays(i):
                p.mul_(1 - hp.lr * hp.weight_decay)
            p.add_(step, alpha=-hp.lr)
            self.m[i] = m_new

    def state_tensors(self) -> list[torch.Tensor]:
        return [m for m in self.m if m is not None]


class ZOAdaMUCodeParams(ZOAdaMUParams):
    schedule: Literal["paper", "authors-code"] = "authors-code"
    signed_history: bool = True


@methods.register("zo-adamu-code")
class ZOAdaMUCode(ZOAdaMU):
    """ZO-AdaMU as the authors' code runs it: cosine schedule held at its T2 value, momentum sign(g)·m_t.

    `zo-adamu` with `schedule: authors-code` and `signed_history: true` as defaults
    (MathIsAll/ZO-AdaMU trainer.py:238-246 and :841); see ZOAdaMU for the rest.
    """

    Params = ZOAdaMUCodeParams
    hp: ZOAdaMUCodeParams
