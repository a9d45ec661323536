"""What black-box methods that keep their own points (particles, a search distribution) share.

The runner hands a method `step(loss_fn)`, a closure over the current θ. A population method writes each
point it wants to score into the trainable parameters and calls the closure: one forward per point, counted
in `forward_passes` like every ZO query, so curves compare at equal function evaluations. Between steps θ
holds the method's current answer (CBO's consensus, nevergrad's recommendation), which is what evaluations
see. Points are float64 numpy vectors, the form CBXpy and nevergrad work in (torch's
`parameters_to_vector` / `vector_to_parameters` flatten and restore the parameters).
"""

from __future__ import annotations

import importlib.util
from typing import Any, ClassVar

import numpy as np
import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from zobench.errors import FieldError, UserError
from zobench.optim.base import LossFn, Method


class PopulationMethod(Method):
    """Scores numpy points by writing them into θ and running one forward each."""

    requires: ClassVar[str] = ""  # the package the method drives (an optional dependency)
    max_dim: ClassVar[int] = 1_000_000  # trainable parameters beyond which its float64 N × d arrays are refused

    @classmethod
    def incompatible(cls, task: str, task_params: dict) -> str | None:
        """Refused on a model's weights: it keeps N float64 copies of θ (CBXpy's particles, nevergrad's
        population or covariance, a federated client's query archive), N × d × 8 bytes, gigabytes for even a
        small language model, and allocating them would only fail later or swap."""
        from zobench.registry import tasks

        if task in tasks and tasks.get(task).needs_model:
            return (f"keeps its points as float64 arrays of N × d (d: the trainable parameters, a model's weights "
                    f"for task '{task}'), so it runs only on the synthetic problems without a model "
                    "(test-function, softmax-regression, attention-regression, federated-*)")
        return super().incompatible(task, task_params)

    def __init__(self, params: list[torch.nn.Parameter], hp: Any, seed: int) -> None:
        super().__init__(params, hp, seed)
        dim = sum(p.numel() for p in self.params)
        if dim > self.max_dim:
            raise UserError(f"method '{self.registered_name}' keeps float64 arrays of N × d and d = {dim:,} "
                            f"trainable parameters is above its limit of {self.max_dim:,}; use a zeroth-order "
                            "method (zo-sgd, zo-ranksgd) or a smaller problem (its task's dimension parameter)")
        self.start = self.point()
        self.dim = self.start.size

    @classmethod
    def check(cls, params: dict) -> None:
        """The package is installed (planning time, so a suite fails before any run)."""
        if cls.requires and importlib.util.find_spec(cls.requires) is None:
            raise FieldError("name", f"method '{cls.registered_name}' needs the package '{cls.requires}', which is "
                             "not installed; pip install 'zobench[blackbox]'")

    def point(self) -> np.ndarray:
        """θ as one float64 vector."""
        return parameters_to_vector([p.detach() for p in self.params]).to("cpu", torch.float64).numpy().copy()

    @torch.no_grad()
    def set_point(self, x: np.ndarray) -> None:
        """θ ← x (cast to the parameters' dtype and device)."""
        p0 = self.params[0]
        vector_to_parameters(torch.from_numpy(np.ascontiguousarray(x)).to(p0.device, p0.dtype), self.params)

    def loss_at(self, loss_fn: LossFn, x: np.ndarray) -> float:
        """One forward at θ = x (θ is left at x: the caller sets the answer after the step)."""
        self.set_point(x)
        self.forward_passes += 1
        with torch.inference_mode():
            return float(loss_fn())


def array_bytes(obj: object) -> int:
    """Bytes of the numpy arrays an object holds as attributes (one level deep): a method's kept state."""
    return sum(v.nbytes for v in vars(obj).values() if isinstance(v, np.ndarray))
