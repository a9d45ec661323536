"""sparse-mezo: Sparse MeZO (Liu et al. 2024, arXiv 2402.15751): perturb only small-magnitude weights."""

from __future__ import annotations

import torch
from pydantic import Field

from zobench.optim.zo import ZOMethod, ZOParams
from zobench.registry import methods


class SparseMeZOParams(ZOParams):
    sparsity: float = Field(0.75, ge=0, lt=1, description="fraction of each tensor (largest |θ|) left unperturbed")


@methods.register("sparse-mezo")
class SparseMeZO(ZOMethod):
    """Sparse MeZO: perturb and update only small-magnitude weights, z ⊙ 1[|θ| ≤ h].

    h is each tensor's magnitude quantile, so large weights are neither perturbed nor updated. It is
    recomputed from θ at the start of every step (one k-th-value per tensor, kept as a scalar);
    θ does not move during the step's forwards, so all passes and the update see the same mask. The
    mask is applied on the fly, never stored. No state. Default sparsity 0.75 (perturb the 25 %
    smallest entries of each tensor). Follows the paper's Algorithm 1 (mask from |θ| against a
    per-tensor threshold, the same mask for both forwards and the update); the authors' code was not
    in our reference store, so no file and line are cited, and the per-tensor quantile (rather than a
    threshold tuned per layer) is our reading.
    """

    Params = SparseMeZOParams
    hp: SparseMeZOParams
    reads_theta = True  # the mask is |θ| ≤ h
    own_draw = True

    def begin_step(self) -> None:
        self.thresholds: list[float] = []
        for p in self.params:
            keep = max(1, round((1 - self.hp.sparsity) * p.numel()))
            flat = p.detach().abs().flatten()
            self.thresholds.append(float(flat.kthvalue(keep).values) if keep < flat.numel() else float("inf"))

    def draw(self, i: int, p: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        z = self.noise(p, gen)
        return z.masked_fill_(p.detach().abs() > self.thresholds[i], 0.0)
