"""First-order baselines: torch.optim's SGD, Adam, AdamW and Adamax behind the same `step(loss_fn)`.

On half-precision weights they train as MeZO's FT rows did: HF Trainer with `--fp16` (princeton-nlp/MeZO
large_models/finetune.sh:67, on a model loaded in float32, large_models/run.py:156-160), i.e. float32 master
weights, the forward and backward under torch.autocast, and (for float16) dynamic loss scaling with
torch.amp.GradScaler. Plain Adam on float16 parameters fails: its eps (1e-8) rounds to 0 in float16, so a
gradient that underflows divides 0 by 0, and the weights are non-finite after one step
(tests/test_precision.py). `mixed_precision: "no"` keeps that behaviour reachable.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Literal

import torch
from pydantic import NonNegativeFloat, PositiveFloat

from zobench.optim.base import LossFn, Method, MethodParams
from zobench.registry import methods

HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}


class FOParams(MethodParams):
    lr: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 0.0
    # accelerate's vocabulary. auto: mixed precision at the model's own dtype when its weights are float16 or
    # bfloat16 (float32 weights: full precision, as before); fp16 / bf16: autocast to that dtype over float32
    # master weights whatever the model's dtype; no: the optimiser steps the weights in their own dtype
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"


class SGDParams(FOParams):
    momentum: NonNegativeFloat = 0.0


class AdamParams(FOParams):
    beta1: float = 0.9
    beta2: float = 0.999
    adam_eps: PositiveFloat = 1e-8


class FirstOrder(Method):
    """Backpropagation: one forward and one backward per step."""

    needs_grad = True

    def __init__(self, params: list[torch.nn.Parameter], hp: FOParams, seed: int) -> None:
        super().__init__(params, hp, seed)
        self.device_type = self.params[0].device.type
        self.storage_dtype = _lowest_float({p.dtype for p in self.params})
        self.autocast_dtype: torch.dtype | None = None
        self.skipped_steps = 0
        self._use_precision(self.storage_dtype)
        self.optimizer = self.build()

    def match_model(self, module: torch.nn.Module) -> None:
        """`auto` follows the model's dtype, not only the trainable parameters': peft keeps LoRA adapters
        in float32 on a float16 base, and MeZO's LoRA FT ran under `--fp16` all the same."""
        self.storage_dtype = _lowest_float({p.dtype for p in module.parameters()} | {self.storage_dtype})
        self._use_precision(self.storage_dtype)

    def _use_precision(self, model_dtype: torch.dtype) -> None:
        mode = self.hp.mixed_precision
        want = HALF.get(mode) if mode != "auto" else (model_dtype if model_dtype in HALF.values() else None)
        if want is None or want == self.autocast_dtype:
            return
        self.autocast_dtype = want
        for p in self.params:  # float32 master weights; the optimiser has no state yet (it is built lazily)
            if p.dtype != torch.float32:
                p.data = p.data.float()
        # float16 gradients underflow without loss scaling; bfloat16 has float32's range and needs none
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=want == torch.float16)

    def autocast(self) -> AbstractContextManager:
        """The forward's precision: the runner evaluates under it too, as HF Trainer does with `--fp16`."""
        return torch.autocast(self.device_type, dtype=self.autocast_dtype or torch.float32,
                              enabled=self.autocast_dtype is not None)

    def precision(self) -> dict[str, Any]:
        """What the numbers were computed in: the run's summary records it."""
        scaling = self.autocast_dtype == torch.float16
        return {"mixed_precision": self.hp.mixed_precision, "model_dtype": _name(self.storage_dtype),
                "parameters": _name(_lowest_float({p.dtype for p in self.params})),
                "autocast": _name(self.autocast_dtype) if self.autocast_dtype else None,
                "loss_scale": float(self.scaler.get_scale()) if scaling else None,
                "skipped_steps": self.skipped_steps if scaling else None}

    def build(self) -> torch.optim.Optimizer:
        raise NotImplementedError

    def step(self, loss_fn: LossFn) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        if self.autocast_dtype is None:
            with torch.enable_grad():
                loss = loss_fn()
                loss.backward()
            self.optimizer.step()
        else:
            with torch.enable_grad():
                with self.autocast():
                    loss = loss_fn()
                self.scaler.scale(loss).backward()
            scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
            self.scaler.step(self.optimizer)  # skipped when a gradient is inf/NaN (the scale then shrinks)
            self.scaler.update()
            if scale is not None and self.scaler.get_scale() < scale:
                self.skipped_steps += 1
        self.forward_passes += 1
        self.backward_passes += 1
        return float(loss.detach())

    def state_tensors(self) -> list[torch.Tensor]:
        return [v for s in self.optimizer.state.values() for v in s.values()
                if isinstance(v, torch.Tensor) and v.dim() > 0]


def _lowest_float(dtypes: set[torch.dtype]) -> torch.dtype:
    """The narrowest floating dtype among `dtypes` (float32 when there is none)."""
    floats = [d for d in dtypes if d.is_floating_point]
    return min(floats, key=lambda d: torch.finfo(d).bits, default=torch.float32)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@methods.register("fo-sgd")
class FOSGD(FirstOrder):
    """SGD with optional momentum (torch.optim.SGD)."""

    Params = SGDParams

    def build(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.params, lr=self.hp.lr, momentum=self.hp.momentum,
                               weight_decay=self.hp.weight_decay)


@methods.register("fo-adam")
class FOAdam(FirstOrder):
    """Adam (Kingma & Ba 2015), torch.optim.Adam; weight decay is L2 added to the gradient."""

    Params = AdamParams

    def build(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.params, lr=self.hp.lr, betas=(self.hp.beta1, self.hp.beta2),
                                eps=self.hp.adam_eps, weight_decay=self.hp.weight_decay)


@methods.register("fo-adamw")
class FOAdamW(FOAdam):
    """AdamW (Loshchilov & Hutter 2019): decoupled weight decay."""

    def build(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.params, lr=self.hp.lr, betas=(self.hp.beta1, self.hp.beta2),
                                 eps=self.hp.adam_eps, weight_decay=self.hp.weight_decay)


@methods.register("fo-adamax")
class FOAdamax(FOAdam):
    """Adamax (Kingma & Ba 2015, §7.1): Adam with the ∞-norm second moment, torch.optim.Adamax."""

    def build(self) -> torch.optim.Optimizer:
        return torch.optim.Adamax(self.params, lr=self.hp.lr, betas=(self.hp.beta1, self.hp.beta2),
                                  eps=self.hp.adam_eps, weight_decay=self.hp.weight_decay)
