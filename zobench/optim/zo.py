"""The perturbation engine every zeroth-order method shares.

One step: draw q seeds; for each, evaluate the objective at θ ± εz (or θ + εz and θ, one-sided)
and keep only the scalar projected gradient g; then one update pass over the parameters that
regenerates each query's z and turns Σ g·z / q into an update. Directions are never stored:
each parameter's z is regenerated from (query seed, parameter index) with a `torch.Generator`
on the parameter's device. The forward passes see θ + εz through `virtual.shifted`, so θ is never
written except by the update (bit-exact: a step with lr 0 returns every parameter unchanged).

A method is a subclass that says how z is drawn (`draw`, may read the method's state) and how
the estimate becomes an update (`apply`, or `update` for methods that need more than g·z).
The objective is any scalar the loss function returns; nothing assumes it is differentiable.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt

from zobench.measure import phase
from zobench.optim.base import LossFn, Method, MethodParams
from zobench.optim.virtual import Shift, shifted

_MIX = 0x9E3779B97F4A7C15  # odd constant: spreads (seed, index) pairs over the seed space


class ZOParams(MethodParams):
    lr: PositiveFloat = 1e-6
    eps: PositiveFloat = 1e-3  # perturbation scale ε
    q: PositiveInt = 1  # queries (directions) averaged per step
    direction: Literal["gaussian", "rademacher", "sphere"] = "gaussian"  # sphere: uniform, radius √d
    one_sided: bool = False  # (L(θ+εz) − L(θ))/ε: q + 1 forwards per step instead of 2q
    weight_decay: NonNegativeFloat = 0.0


class ZOMethod(Method):
    """Two-point SPSA with regenerated directions (MeZO's Algorithm 1 generalised to q queries)."""

    Params = ZOParams
    hp: ZOParams
    needs_base: ClassVar[bool] = False  # the method needs L(θ) every step (besides one-sided differences)

    def __init__(self, params: list[torch.nn.Parameter], hp: ZOParams, seed: int) -> None:
        super().__init__(params, hp, seed)
        self._rng = np.random.default_rng(seed)
        self._generators: dict[torch.device, torch.Generator] = {}
        self._sphere: dict[int, float] = {}
        self.t = 0  # steps taken
        self.dim = sum(p.numel() for p in self.params)
        self.projected_grads: list[float] = []
        self.base_loss: float | None = None

    # -- how z is drawn -------------------------------------------------------------------
    def generator(self, p: torch.Tensor, seed: int, i: int) -> torch.Generator:
        gen = self._generators.get(p.device)
        if gen is None:
            gen = self._generators[p.device] = torch.Generator(device=p.device)
        gen.manual_seed((seed + i * _MIX) % (2**63))
        return gen

    def noise(self, p: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Fresh unit-variance noise shaped like p (Rademacher ±1 or Gaussian; sphere starts Gaussian)."""
        if self.hp.direction == "rademacher":
            z = torch.randint(0, 2, p.shape, generator=gen, device=p.device, dtype=torch.int8)
            return z.to(p.dtype).mul_(2).sub_(1)
        return torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype)

    def draw(self, i: int, p: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Parameter i's direction for this query, before any sphere normalisation. Override me."""
        return self.noise(p, gen)

    def sphere_scale(self, seed: int) -> float:
        """√d / ‖z‖ over all parameters (1 unless direction is 'sphere'): one extra regeneration per query."""
        if self.hp.direction != "sphere":
            return 1.0
        if seed not in self._sphere:
            sq = sum(float(self.draw(i, p, self.generator(p, seed, i)).double().pow(2).sum())
                     for i, p in enumerate(self.params))
            self._sphere[seed] = math.sqrt(self.dim / sq) if sq > 0 else 0.0
        return self._sphere[seed]

    @torch.no_grad()
    def direction(self, i: int, p: torch.Tensor, seed: int) -> torch.Tensor:
        """z_i for the query `seed`, regenerated (a fresh tensor the caller may modify)."""
        z = self.draw(i, p, self.generator(p, seed, i))
        scale = self.sphere_scale(seed)
        return z if scale == 1.0 else z.mul_(scale)

    def along(self, seed: int, scale: float) -> Shift:
        """The shift θ_i ↦ θ_i + scale·z_i(seed), for `evaluate`."""
        return lambda i, raw: self.direction(i, raw, seed).mul_(scale).add_(raw)

    # -- objective evaluations -------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, loss_fn: LossFn, shift: Shift | None = None) -> float:
        """One forward pass at θ (shift None) or at shift(θ), θ untouched."""
        with shifted(self.params, shift):
            loss = float(loss_fn())
        self.forward_passes += 1
        return loss

    def begin_step(self) -> None:
        """Per-step preparation before any forward (schedules, masks, refreshed bases)."""

    def query(self, loss_fn: LossFn, seed: int, base: float | None) -> tuple[float, float]:
        """(projected gradient g ≈ ∇L·z, loss seen) for one direction."""
        eps = self.hp.eps
        plus = self.evaluate(loss_fn, self.along(seed, eps))
        if self.hp.one_sided:
            assert base is not None
            return (plus - base) / eps, base
        minus = self.evaluate(loss_fn, self.along(seed, -eps))
        return (plus - minus) / (2 * eps), (plus + minus) / 2

    def probe(self, loss_fn: LossFn) -> tuple[list[int], list[float], float]:
        """Draw the step's q seeds and measure each projected gradient. Returns (seeds, grads, loss)."""
        self.t += 1
        self._sphere.clear()
        seeds = [int(s) for s in self._rng.integers(0, 2**62, size=self.hp.q)]
        self.begin_step()
        base = self.evaluate(loss_fn) if (self.hp.one_sided or self.needs_base) else None
        grads, losses = [], []
        for seed in seeds:
            g, loss = self.query(loss_fn, seed, base)
            grads.append(g)
            losses.append(loss)
        self.projected_grads, self.base_loss = grads, base
        return seeds, grads, (base if base is not None else float(np.mean(losses)))

    # -- how the estimate becomes an update --------------------------------------------------
    @torch.no_grad()
    def estimate(self, i: int, p: torch.Tensor, seeds: list[int], grads: list[float]) -> torch.Tensor:
        """ĝ_i = (1/q) Σ_j g_j z_ij for one parameter: the q seeds are replayed, nothing d-sized is summed."""
        q = len(seeds)
        est = self.direction(i, p, seeds[0]).mul_(grads[0] / q)
        for seed, g in zip(seeds[1:], grads[1:], strict=True):
            est.add_(self.direction(i, p, seed), alpha=g / q)
        return est

    @torch.no_grad()
    def apply(self, i: int, p: torch.Tensor, est: torch.Tensor) -> None:
        """Default: SGD with decoupled weight decay, θ ← (1 − η·wd)θ − η·ĝ."""
        if self.hp.weight_decay:
            p.mul_(1 - self.hp.lr * self.hp.weight_decay)
        p.add_(est, alpha=-self.hp.lr)

    @torch.no_grad()
    def update(self, seeds: list[int], grads: list[float]) -> None:
        for i, p in enumerate(self.params):
            self.apply(i, p, self.estimate(i, p, seeds, grads))

    # -- the step ---------------------------------------------------------------------------
    def step(self, loss_fn: LossFn) -> float:
        seeds, grads, loss = self.probe(loss_fn)
        with phase("update"):
            self.update(seeds, grads)
        return loss

    @torch.no_grad()
    def gradient_estimate(self, loss_fn: LossFn) -> list[torch.Tensor]:
        """The step's gradient estimate as dense tensors, without updating (diagnostics and tests only)."""
        seeds, grads, _ = self.probe(loss_fn)
        return [self.estimate(i, p, seeds, grads) for i, p in enumerate(self.params)]
