"""qzo: Quantized Zeroth-order Optimization (Shang et al. 2025, arXiv 2505.13430) on a model kept 4-bit."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import PositiveFloat

from zobench.errors import FieldError, UserError
from zobench.models.quantized import weight_bytes
from zobench.optim.zo import ZOMethod, ZOParams
from zobench.registry import methods

# Where each choice comes from: maifoundations/QZO @ f843ddc, large_language_models/trainer.py (ZOTrainer,
# the "QZO Added" blocks; the stored copy carries no line numbers, so functions are named) and
# large_language_models/scripts/qzo.sh.
REFERENCE_CLIP = 100.0  # trainer.py ZOTrainer.zo_update: projected_grad = min(max(-100, projected_grad), 100)
REFERENCE_FLOOR = 1e-7  # trainer.py ZOTrainer.zo_update: scales = clamp(scales - lr·g·z, min=1e-7)


class QZOParams(ZOParams):
    lr: PositiveFloat = 1e-5  # qzo.sh:6 LR=1e-5 (constant schedule, qzo.sh:55)
    eps: PositiveFloat = 1e-3  # qzo.sh:7 EPS=1e-3
    clip: PositiveFloat = REFERENCE_CLIP  # C: g is clipped to [-C, C] before the update (--clip_zo_grad, qzo.sh:59)
    scale_floor: PositiveFloat = REFERENCE_FLOOR  # a scale never goes below this after an update
    # which continuous quantization parameters train: the reference trains GPTQ's `scales` only (zo_step collects
    # module.scales; the zero points stay, train_unquantized is off in qzo.sh); with Q4_1 (w = d·q + m) that is d.
    train: Literal["scales", "scales+minimums"] = "scales"


@methods.register("qzo")
class QZO(ZOMethod):
    """QZO: ZO-SGD on the quantization scales of a quantized model, with directional-derivative clipping.

    The weights stay quantized (`Q4Linear`: 4-bit codes + a scale d and minimum m per block of 32); only the
    scales are perturbed and updated, the codes never change. One step (q = 1, as the reference):
    g = (L(d + εz) − L(d − εz)) / 2ε, z ~ N(0, I) over the scales; g ← clip(g, −C, C);
    d ← max(d − η·g·z, floor). Reference: maifoundations/QZO large_language_models/trainer.py, ZOTrainer.zo_step
    (the scales of every quantized Linear are the parameters; two forwards at ±ε) and ZOTrainer.zo_update
    ("QZO Added: Directional Derivative Clipping", C = 100; the clamp at 1e-7); defaults from
    scripts/qzo.sh (lr 1e-5, ε 1e-3). With q > 1 each query's g is clipped before averaging.
    No optimiser state. `train: scales+minimums` also trains Q4_1's minimums m (not clamped); the reference has
    no counterpart (GPTQ's zero points are integers), so it is an option, not the default.
    """

    Params = QZOParams
    hp: QZOParams
    sgd_update = False  # clipping and the floor: not plain SGD on ĝ

    def __init__(self, params: list[torch.nn.Parameter], hp: QZOParams, seed: int) -> None:
        roles = {"scale"} if hp.train == "scales" else {"scale", "minimum"}
        chosen = [p for p in params if p.requires_grad and getattr(p, "quant_role", None) in roles]
        if not chosen:
            raise UserError("method 'qzo' trains the quantization scales of a quantized model, and this model has "
                            "no trainable quantized layers (Q4Linear); use model: smollm2-q4 with scheme: full "
                            "(zobench/models/quantized.py)")
        super().__init__(chosen, hp, seed)
        self.is_scale = [getattr(p, "quant_role", None) == "scale" for p in self.params]

    @classmethod
    def check(cls, params: dict) -> None:
        super().check(params)
        if params.get("weight_decay"):
            raise FieldError("weight_decay", "'qzo' applies no weight decay to quantization scales (as the "
                             "reference); remove weight_decay")

    def match_model(self, module: torch.nn.Module) -> None:
        self.sizes = weight_bytes(module)

    def precision(self) -> dict[str, Any]:
        """The weights it trained: 4-bit codes with float scales, and their bytes (for the memory table)."""
        return {"weights": "q4_1", **getattr(self, "sizes", {})}

    def clipped(self, grads: list[float]) -> list[float]:
        c = self.hp.clip
        return [min(max(g, -c), c) for g in grads]

    @torch.no_grad()
    def update(self, seeds: list[int], grads: list[float]) -> None:
        super().update(seeds, self.clipped(grads))

    @torch.no_grad()
    def apply(self, i: int, p: torch.Tensor, est: torch.Tensor) -> None:
        p.add_(est, alpha=-self.hp.lr)
        if self.is_scale[i]:
            p.clamp_(min=self.hp.scale_floor)
