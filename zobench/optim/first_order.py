"""First-order baselines: torch.optim's SGD, Adam, AdamW and Adamax behind the same `step(loss_fn)`."""

from __future__ import annotations

import torch
from pydantic import NonNegativeFloat, PositiveFloat

from zobench.optim.base import LossFn, Method, MethodParams
from zobench.registry import methods


class FOParams(MethodParams):
    lr: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 0.0


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
        self.optimizer = self.build()

    def build(self) -> torch.optim.Optimizer:
        raise NotImplementedError

    def step(self, loss_fn: LossFn) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = loss_fn()
            loss.backward()
        self.optimizer.step()
        self.forward_passes += 1
        self.backward_passes += 1
        return float(loss.detach())

    def state_tensors(self) -> list[torch.Tensor]:
        return [v for s in self.optimizer.state.values() for v in s.values()
                if isinstance(v, torch.Tensor) and v.dim() > 0]


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
