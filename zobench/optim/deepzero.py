"""DeepZero's gradient estimators (Chen et al., ICLR 2024, arXiv 2310.02025): RGE and CGE."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field, PositiveFloat, PositiveInt

from zobench.optim.base import LossFn
from zobench.optim.zo import ZOMethod, ZOParams
from zobench.registry import methods


class RGEParams(ZOParams):
    one_sided: bool = True  # DeepZero's RGE is a forward difference


@methods.register("rge")
class RGE(ZOMethod):
    """DeepZero RGE: ĝ = (1/q) Σ_j (L(θ + μ u_j) − L(θ))/μ · u_j, u_j ~ N(0, I); q + 1 forwards per step.

    The engine's zo-sgd with a forward difference by default (eps is μ); `direction: sphere` gives
    the sphere version (DeepZero's d·u with u on the unit sphere, μ rescaled by √d). No state.
    The paper's Eq. 1 estimator, unbiased for the smoothed gradient. The released `rge`
    (OPTML-Group/DeepZero algorithm/zoo/gradient_estimate.py:13-31) normalises u per tensor and
    returns (L(θ + μû) − L(θ))·û, μ/‖u‖ times ours; it only ranks weights for pruning
    (algorithm/prune/importance_scores.py:67-71), where a common scale cancels, and never trains.
    """

    Params = RGEParams


class CGEParams(ZOParams):
    eps: PositiveFloat = 5e-3  # μ (DeepZero's default)
    q: PositiveInt | None = None  # coordinates estimated per step; None: all d (DeepZero's CGE)
    direction: Literal["coordinate"] = "coordinate"
    one_sided: bool = True  # DeepZero's CGE is a forward difference
    momentum: float = Field(0.9, ge=0, lt=1)  # DeepZero trains CGE with torch SGD, momentum 0.9
    nesterov: bool = False


@methods.register("cge")
class CGE(ZOMethod):
    """DeepZero CGE: ĝ = Σ_i (L(θ + μ e_i) − L(θ))/μ · e_i over coordinates; one forward per coordinate.

    With q set, q distinct coordinates are drawn per step (seeded) and the estimate is scaled by d/q
    so that it stays unbiased; q = None estimates every coordinate (d + 1 forwards per step).
    Each coordinate is perturbed in place and restored from the one saved scalar (exact), so only
    O(q) numbers are kept. Meant for small models, as in DeepZero.

    The step is torch.optim.SGD's, as DeepZero's trainer builds it (experiments/sparse_gradient_training.py:47,
    defaults tools/misc.py:15-19: momentum 0.9, coupled weight decay on every tensor, optional Nesterov):
    d ← ĝ + wd·θ;  b ← μ·b + d (b = d on the first step);  θ ← θ − η·(d + μ·b if nesterov else b).
    momentum 0 gives plain SGD. State: b, one parameter-sized buffer per parameter when μ > 0.
    """

    Params = CGEParams
    hp: CGEParams
    decays_vectors = True  # torch SGD over network.parameters(): every tensor decays
    own_queries = True
    sgd_update = False

    def __init__(self, params: list[torch.nn.Parameter], hp: CGEParams, seed: int) -> None:
        super().__init__(params, hp, seed)
        self.offsets = np.cumsum([0] + [p.numel() for p in self.params])
        self.buf: list[torch.Tensor | None] = [None] * len(self.params)

    @torch.no_grad()
    def apply(self, i: int, p: torch.Tensor, est: torch.Tensor) -> None:
        hp = self.hp
        if hp.weight_decay:
            est.add_(p, alpha=hp.weight_decay)
        if hp.momentum:
            buf = self.buf[i]
            if buf is None:
                buf = self.buf[i] = est.clone()
            else:
                buf.mul_(hp.momentum).add_(est)
            est = est.add_(buf, alpha=hp.momentum) if hp.nesterov else buf
        p.add_(est, alpha=-hp.lr)

    def state_tensors(self) -> list[torch.Tensor]:
        return [b for b in self.buf if b is not None]

    @torch.no_grad()
    def probe(self, loss_fn: LossFn) -> tuple[list[int], list[float], float]:
        self.t += 1
        d, q = self.dim, self.hp.q
        coords = np.arange(d) if q is None or q >= d else np.sort(self._rng.choice(d, size=q, replace=False))
        scale = d / len(coords)
        base = self.evaluate(loss_fn)
        mu, grads = self.hp.eps, []
        for c in coords:
            i = int(np.searchsorted(self.offsets, c, side="right") - 1)
            flat = self.params[i].view(-1)
            j = int(c - self.offsets[i])
            saved = flat[j].clone()
            flat[j] += mu
            plus = float(loss_fn())
            if self.hp.one_sided:
                g = (plus - base) / mu
            else:
                flat[j] = saved - mu
                g = (plus - float(loss_fn())) / (2 * mu)
                self.forward_passes += 1
            flat[j] = saved  # exact restore
            self.forward_passes += 1
            grads.append(scale * g)
        self.base_loss = base
        return [int(c) for c in coords], grads, base

    @torch.no_grad()
    def estimate(self, i: int, p: torch.Tensor, seeds: list[int], grads: list[float]) -> torch.Tensor:
        """Here `seeds` are the global coordinates probed this step."""
        est = torch.zeros_like(p)
        coords, values = np.asarray(seeds), np.asarray(grads)
        inside = (coords >= self.offsets[i]) & (coords < self.offsets[i + 1])
        if inside.any():
            index = torch.as_tensor(coords[inside] - self.offsets[i], device=p.device)
            est.view(-1)[index] = torch.as_tensor(values[inside], device=p.device, dtype=p.dtype)
        return est
