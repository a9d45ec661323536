"""forward-grad: the forward gradient (Baydin et al. 2022, arXiv 2202.08587), as benchmarked in ZO-Bench."""

from __future__ import annotations

from typing import Literal

import torch
import torch.autograd.forward_ad as fwAD
from torch.nn.attention import SDPBackend, sdpa_kernel

from zobench.optim.base import LossFn
from zobench.optim.virtual import shifted
from zobench.optim.zo import ZOMethod, ZOParams
from zobench.registry import methods


class ForwardGradParams(ZOParams):
    one_sided: Literal[False] = False  # no finite difference: ∇L·z is exact


@methods.register("forward-grad")
class ForwardGrad(ZOMethod):
    """Forward gradient: ĝ = (∇L·z)·z with the directional derivative from one forward-mode (jvp) pass.

    Each parameter is made a dual tensor (θ, z) through the engine's virtual view, so the loss
    function needs no functional rewrite (the same jvp torch.func computes; ZO-Bench uses
    torch.func.jvp over functional_call). Unbiased: E[zzᵀ] = I. One jvp pass per query, counted as
    one forward pass (it costs about two). The objective must be differentiable and every op must
    have a forward-mode rule: the fused SDPA kernels have none, so attention runs on SDPA's math
    backend (composite ops) during the jvp. No state. Update and decay as ZO-Bench/ZO-LLM
    zo-bench/trainer.py:1357-1412: θ ← θ − η(jvp·v + wd·θ), no decay on biases and layer norms.
    """

    Params = ForwardGradParams
    differentiates = True  # ∇L·z by forward-mode AD: a metric objective has none
    own_queries = True

    def query(self, loss_fn: LossFn, seed: int, base: float | None) -> tuple[float, float]:
        with torch.no_grad(), fwAD.dual_level(), sdpa_kernel(SDPBackend.MATH):
            with shifted(self.params, lambda i, raw: fwAD.make_dual(raw, self.direction(i, raw, seed))):
                primal, tangent = fwAD.unpack_dual(loss_fn())
        self.forward_passes += 1
        if tangent is None:  # the loss does not depend on the parameters
            return 0.0, float(primal)
        return float(tangent), float(primal)
