"""Low-rank and subspace perturbations for matrix parameters: LOZO and SubZero.

Both perturb a weight W (viewed as rows × rest) inside a rank-r structure and fall back to plain
Gaussian z for vectors (biases, norms). The sparse/low-rank part is how z is drawn; the update is
the engine's SGD on ĝ = g·z.
"""

from __future__ import annotations

import math

import torch
from pydantic import PositiveInt

from zobench.optim.zo import _MIX, ZOMethod, ZOParams
from zobench.registry import methods


def _as_matrix(p: torch.Tensor) -> tuple[int, int]:
    return p.shape[0], p.numel() // p.shape[0]


class _Bases(ZOMethod):
    """Shared: per-period seeds for bases that change every `interval` steps."""

    own_draw = True

    def period_seed(self, interval: int) -> int:
        return (self.seed * 1_000_003 + (self.t - 1) // interval) % (2**62)

    def basis_generator(self, p: torch.Tensor, seed: int, i: int) -> torch.Generator:
        gen = torch.Generator(device=p.device)
        gen.manual_seed((seed + (i + 1) * _MIX * 3) % (2**63))
        return gen


class LOZOParams(ZOParams):
    rank: PositiveInt = 2  # r
    interval: PositiveInt = 50  # ν: steps between refreshes of V


@methods.register("lozo")
class LOZO(_Bases):
    """LOZO (Chen et al. 2024, arXiv 2410.07698): low-rank perturbations Z = UVᵀ with lazily refreshed V.

    For each matrix W ∈ R^{m×n}: U ∈ R^{m×r} fresh every step, V ∈ R^{n×r} redrawn every ν steps
    (both N(0, 1)); z = UVᵀ with no rescaling, as the reference perturbs and steps
    (optsuite/LOZO large_models/LOZOtrainer.py:709-716 and :806-812), so each entry has variance r
    and the reference's published learning rates mean the same here. Tensors of fewer than 2 dimensions
    get Gaussian z (LOZOtrainer.py:717-719). V is not stored: it is regenerated from the run seed and
    the period index. No state. Defaults r = 2, ν = 50.
    """

    Params = LOZOParams
    hp: LOZOParams

    def draw(self, i: int, p: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if p.dim() < 2:
            return self.noise(p, gen)
        m, n = _as_matrix(p)
        r = min(self.hp.rank, m, n)
        u = self.noise(p.new_empty((m, r)), gen)
        v = self.noise(p.new_empty((n, r)), self.basis_generator(p, self.period_seed(self.hp.interval), i))
        return (u @ v.T).view(p.shape)


class SubZeroParams(ZOParams):
    rank: PositiveInt = 8  # r
    interval: PositiveInt = 2000  # F: steps between refreshes of the subspace bases P, Q (the reference's 2000)


@methods.register("subzero")
class SubZero(_Bases):
    """SubZero (Yu et al. 2024, arXiv 2410.08989): random subspace perturbations Z = P Z̃ Qᵀ per matrix.

    P ∈ R^{m×r}, Q ∈ R^{n×r} have orthonormal columns (QR of Gaussian matrices), redrawn every F
    steps and kept as state (small: (m + n)·r per matrix); Z̃ ∈ R^{r×r} ~ N(0, I) is fresh every step.
    z = √(mn)/r · P Z̃ Qᵀ, so ‖z‖_F ≈ √(mn) as for MeZO's z and one (ε, η) suits matrices and vectors
    alike; vectors get Gaussian z. The √(mn)/r factor and F = 2000 follow issue 17's reading of the
    authors' code (YangBigMn/SubZero); that repository was not available to us to cite by line.
    """

    Params = SubZeroParams
    hp: SubZeroParams

    def __init__(self, params: list[torch.nn.Parameter], hp: SubZeroParams, seed: int) -> None:
        super().__init__(params, hp, seed)
        self.bases: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def begin_step(self) -> None:
        if (self.t - 1) % self.hp.interval:
            return
        seed = self.period_seed(self.hp.interval)
        for i, p in enumerate(self.params):
            if p.dim() >= 2:
                m, n = _as_matrix(p)
                r = min(self.hp.rank, m, n)
                gen = self.basis_generator(p, seed, i)
                ps, qs = (torch.linalg.qr(torch.randn(k, r, generator=gen, device=p.device,
                                                      dtype=torch.float32))[0].to(p.dtype) for k in (m, n))
                self.bases[i] = (ps, qs)

    def draw(self, i: int, p: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if i not in self.bases:
            return self.noise(p, gen)
        ps, qs = self.bases[i]
        core = self.noise(p.new_empty((ps.shape[1], qs.shape[1])), gen)
        m, n, r = ps.shape[0], qs.shape[0], ps.shape[1]
        return (ps @ core @ qs.T).mul_(math.sqrt(m * n) / r).view(p.shape)

    def state_tensors(self) -> list[torch.Tensor]:
        return [t for pair in self.bases.values() for t in pair]
