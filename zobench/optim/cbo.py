"""Consensus-based optimization through CBXpy (`cbx`), as studied in "Gradient is All You Need?" (Riedl,
Klock, Geldhauser, Fornasier, arXiv 2306.09778).

N particles x_i; each step scores every particle (N forwards), forms the consensus point
v_α = Σ_i x_i·exp(−α f(x_i)) / Σ_i exp(−α f(x_i)) (cbx/dynamics/pdyn.py:582-587, `compute_consensus_default`,
a log-sum-exp softmax), and moves every particle x_i ← x_i − λ·dt·(x_i − v_α) + σ·√dt·‖x_i − v_α‖·ξ_i
(cbx/dynamics/cbo.py:3-4 `cbo_update`, :40-50 `cbo_step`; isotropic noise cbx/noise.py:91-117), or with
`noise: anisotropic` the componentwise (x_i − v_α)⊙ξ_i (cbx/noise.py:146-170). Defaults are CBXpy's
(CBXDynamic.__init__, cbx/dynamics/pdyn.py:629-637: dt = 0.01, α = 1, σ = 5.1, λ = 1); `alpha_growth`
multiplies α after each step as cbx's default scheduler does in `optimize` (×1.05, capped at 1e5;
pdyn.py:803-816, cbx/scheduler.py:85-106). The method's answer, which θ holds between steps, is the
consensus point of the step's evaluations.

The particles start at θ₀ + U(−r, r)^d (cbx's own start is U(−1, 1)^d, pdyn.py:210-211) from the run
seed; the noise ξ comes from cbx's sampler seeded with the run seed. Memory: CBXpy keeps the particles,
their previous positions and the drift as float64 N×d arrays, so this is a method for the synthetic problems,
not for a language model's weights. File and line references are to cbx 1.0.4 as installed from PyPI.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

from zobench.optim.base import LossFn
from zobench.optim.population import PopulationMethod, array_bytes
from zobench.registry import methods


class CBOParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    particles: PositiveInt = 20  # N: forwards per step
    dt: PositiveFloat = 0.01
    lamda: PositiveFloat = 1.0  # drift towards the consensus (cbx spells it lamda)
    sigma: float = Field(5.1, ge=0)  # noise scale
    alpha: PositiveFloat = 1.0  # inverse temperature of the consensus weights
    alpha_growth: float = Field(1.0, ge=1.0)  # α ← min(α·growth, 1e5) after each step (cbx's default: 1.05)
    noise: Literal["isotropic", "anisotropic"] = "isotropic"
    init_radius: PositiveFloat = 1.0  # particles start uniform in θ₀ ± r


@methods.register("cbo")
class CBO(PopulationMethod):
    """Consensus-based optimization (arXiv 2306.09778) through CBXpy: N particles, N forwards per step."""

    Params = CBOParams
    hp: CBOParams
    requires = "cbx"

    def __init__(self, params: list[torch.nn.Parameter], hp: CBOParams, seed: int) -> None:
        super().__init__(params, hp, seed)
        from cbx.dynamics import CBO as CBXDynamic
        from cbx.scheduler import multiply

        rng = np.random.default_rng([seed, 0xCB0])
        x0 = self.start + rng.uniform(-hp.init_radius, hp.init_radius, size=(hp.particles, self.dim))
        self._loss_fn: LossFn | None = None
        self.dynamic = CBXDynamic(self._energies, f_dim="3D", check_f_dims=False, x=x0[None], dt=hp.dt,
                                  lamda=hp.lamda, sigma=hp.sigma, alpha=hp.alpha, noise=hp.noise, seed=seed,
                                  verbosity=0, max_it=2**62)
        self.schedule = multiply(name="alpha", factor=hp.alpha_growth, maximum=1e5)

    def _energies(self, x: np.ndarray) -> np.ndarray:
        """CBXpy's batched objective: x has shape (M, N, d); one forward per particle."""
        assert self._loss_fn is not None
        flat = x.reshape(-1, self.dim)
        return np.array([self.loss_at(self._loss_fn, xi) for xi in flat]).reshape(x.shape[:2])

    def step(self, loss_fn: LossFn) -> float:
        self._loss_fn = loss_fn
        try:
            self.dynamic.step()
        finally:
            self._loss_fn = None
        if self.hp.alpha_growth != 1.0:
            self.schedule.update(self.dynamic)
        self.set_point(self.dynamic.consensus[0, 0])
        return float(self.dynamic.energy.min())

    def state_bytes(self) -> int:
        """The float64 arrays CBXpy keeps between steps (particles, previous positions, drift, energies, ...)."""
        return array_bytes(self.dynamic)
