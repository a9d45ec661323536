"""The perturbation engine every zeroth-order method shares.

Directions are never stored: each parameter's z is regenerated from (step seed, parameter index)
with a `torch.Generator` on the parameter's device. A method is a subclass that says how z is drawn
(`draw`) and how the projected gradient g·z becomes an update (`update`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch
from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt

from zobench.optim.base import LossFn, Method, MethodParams

_MIX = 0x9E3779B97F4A7C15  # odd constant: spreads (seed, index) pairs over the seed space


class ZOParams(MethodParams):
    lr: PositiveFloat = 1e-6
    eps: PositiveFloat = 1e-3
    q: PositiveInt = 1
    direction: Literal["gaussian", "rademacher"] = "gaussian"
    weight_decay: NonNegativeFloat = 0.0


class ZOMethod(Method):
    """Two-point SPSA (MeZO, Algorithm 1): perturb in place, two forwards, restore and update in one pass."""

    Params = ZOParams
    hp: ZOParams

    def __init__(self, params: list[torch.nn.Parameter], hp: ZOParams, seed: int) -> None:
        super().__init__(params, hp, seed)
        self._rng = np.random.default_rng(seed)
        self._generators: dict[torch.device, torch.Generator] = {}
        self.projected_grads: list[float] = []

    # -- how z is drawn -------------------------------------------------------------------
    def draw(self, p: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if self.hp.direction == "rademacher":
            z = torch.randint(0, 2, p.shape, generator=gen, device=p.device, dtype=torch.int8)
            return z.to(p.dtype).mul_(2).sub_(1)
        return torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype)

    def directions(self, seed: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """(index, parameter, z) for every trainable parameter, z regenerated from (seed, index)."""
        for i, p in enumerate(self.params):
            gen = self._generators.get(p.device)
            if gen is None:
                gen = self._generators[p.device] = torch.Generator(device=p.device)
            gen.manual_seed((seed + i * _MIX) % (2**63))
            yield i, p, self.draw(p, gen)

    # -- how g·z becomes an update ----------------------------------------------------------
    def update(self, i: int, p: torch.Tensor, z: torch.Tensor, g: float) -> None:
        """Default: SGD, p ← p − lr·(g·z + wd·p)."""
        if self.hp.weight_decay:
            p.mul_(1 - self.hp.lr * self.hp.weight_decay)
        p.add_(z, alpha=-self.hp.lr * g)

    # -- the step ---------------------------------------------------------------------------
    @torch.no_grad()
    def perturb(self, seed: int, scale: float) -> None:
        for _, p, z in self.directions(seed):
            p.add_(z, alpha=scale)

    @torch.no_grad()
    def estimate(self, loss_fn: LossFn, seed: int) -> tuple[float, float]:
        """Projected gradient g = (L(θ+εz) − L(θ−εz)) / 2ε; leaves θ at θ−εz. Returns (g, mean loss)."""
        eps = self.hp.eps
        self.perturb(seed, eps)
        loss_plus = float(loss_fn())
        self.perturb(seed, -2 * eps)
        loss_minus = float(loss_fn())
        self.forward_passes += 2
        return (loss_plus - loss_minus) / (2 * eps), (loss_plus + loss_minus) / 2

    def step(self, loss_fn: LossFn) -> float:
        seeds = [int(s) for s in self._rng.integers(0, 2**62, size=self.hp.q)]
        grads, losses = [], []
        for seed in seeds:
            g, loss = self.estimate(loss_fn, seed)
            grads.append(g / self.hp.q)
            losses.append(loss)
            if self.hp.q > 1:
                self.perturb(seed, self.hp.eps)  # restore θ before the next query
        with torch.no_grad():
            if self.hp.q == 1:  # restore and update fused: one regeneration instead of two
                for i, p, z in self.directions(seeds[0]):
                    p.add_(z, alpha=self.hp.eps)
                    self.update(i, p, z, grads[0])
            else:  # replay each query's direction; nothing d-sized is summed
                for seed, g in zip(seeds, grads, strict=True):
                    for i, p, z in self.directions(seed):
                        self.update(i, p, z, g)
        self.projected_grads = grads
        return float(np.mean(losses))
