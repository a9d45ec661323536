"""nevergrad's black-box optimisers (Rapin & Teytaud, facebookresearch/nevergrad) as zobench methods.

One step is one ask/tell (`Optimizer.ask`, `Optimizer.tell`, nevergrad/optimization/base.py): one forward,
so `steps` is the evaluation budget and curves line up with the ZO methods' forward passes. θ holds
`Optimizer.recommend()` between steps, which is what evaluations score: for (1+1) the best point so far; for
CMA-ES the current `cma` run's best point (nevergrad 1.0.12 optimizerlib.py:824-842), and nevergrad starts a
new `cma` run when the old one stops (optimizerlib.py:760), so ng-cma's curve jumps back at each
restart. The search space is `ng.p.Array` started at θ₀ with the mutation scale `sigma`; the parametrization's
random state is seeded with the run seed, which seeds every draw nevergrad makes for it (and `cma`'s normal draws,
which nevergrad passes as `randn`, optimizerlib.py:766). State: the optimiser pickled
(its distribution, its archive of evaluated points), a measured size rather than a formula.

Known failure: with numpy 2.4, NGOpt at small budgets (e.g. 40 evaluations in 2-D) picks a metamodel whose
`float(model.predict(...))` on a length-1 array raises TypeError (nevergrad 1.0.12 metamodel.py:177); the run is
recorded as failed with that traceback. At 2000 evaluations (suites/blackbox.yaml) NGOpt runs.
"""

from __future__ import annotations

import io
import pickle
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, PositiveFloat, PositiveInt

from zobench.errors import FieldError
from zobench.optim.base import LossFn
from zobench.optim.population import PopulationMethod
from zobench.registry import methods


class NevergradParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sigma: PositiveFloat = 1.0  # the initial mutation scale (ng.p.Array.set_mutation)
    budget: PositiveInt | None = None  # evaluations, told to the optimiser (NGOpt picks its algorithm by it)


class AnyNevergradParams(NevergradParams):
    optimizer: str = "NGOpt"  # a key of nevergrad.optimizers.registry


class Nevergrad(PopulationMethod):
    """Any optimiser in nevergrad's registry: one ask/tell, one forward, per step."""

    Params: ClassVar[type[BaseModel]] = AnyNevergradParams
    hp: NevergradParams
    requires = "nevergrad"
    fixed: ClassVar[str | None] = None  # the registered variants name their optimiser (and take no `optimizer`)

    def __init__(self, params: list[torch.nn.Parameter], hp: NevergradParams, seed: int) -> None:
        super().__init__(params, hp, seed)
        import nevergrad as ng

        space = ng.p.Array(init=self.start).set_mutation(sigma=hp.sigma)
        space.random_state = np.random.RandomState(seed % 2**32)
        name = hp.optimizer if isinstance(hp, AnyNevergradParams) else self.fixed  # the variants fix it
        self.optimizer = ng.optimizers.registry[name](parametrization=space, budget=hp.budget, num_workers=1)
        self.lowest = float("inf")

    @classmethod
    def check(cls, params: dict) -> None:
        super().check(params)
        name = params.get("optimizer")
        if name is None:
            return
        import nevergrad as ng

        if name not in ng.optimizers.registry:
            close = [k for k in ng.optimizers.registry if k.lower() == str(name).lower()]
            raise FieldError("optimizer", f"'{name}' is not in nevergrad's registry"
                             + (f"; did you mean '{close[0]}'?" if close else "; e.g. CMA, OnePlusOne, NGOpt"))

    def step(self, loss_fn: LossFn) -> float:
        """One ask/tell. Returns the lowest loss told so far: one candidate far out (PSO and DE draw some
        through an unbounded transform) has loss ∞ without the search having diverged."""
        candidate = self.optimizer.ask()
        loss = self.loss_at(loss_fn, candidate.value)
        self.optimizer.tell(candidate, loss)
        self.set_point(self.optimizer.recommend().value)
        self.lowest = min(self.lowest, loss)
        return self.lowest

    def state_bytes(self) -> int:
        """The numeric arrays the optimizer keeps (CMA's covariance, a population): its pickled size would
        also count nevergrad's bookkeeping, which differs by a few bytes from one process to the next."""
        counter = _ArrayBytes()
        counter.dump(self.optimizer)
        return counter.total


class _ArrayBytes(pickle.Pickler):
    """Walks an object graph as pickle does, adding up the bytes of every numpy array it meets once."""

    def __init__(self) -> None:
        super().__init__(io.BytesIO())
        self.total = 0
        self.seen: set[int] = set()

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, np.ndarray) and id(obj) not in self.seen:
            self.seen.add(id(obj))
            self.total += obj.nbytes
        return NotImplemented


methods.register("nevergrad")(Nevergrad)


def _variant(name: str, optimizer: str, doc: str) -> type[Nevergrad]:
    cls = type(f"Nevergrad{optimizer}", (Nevergrad,), {"fixed": optimizer, "__doc__": doc, "Params": NevergradParams})
    return methods.register(name)(cls)


_variant("ng-cma", "CMA", "CMA-ES (Hansen & Ostermeier 2001) through nevergrad's CMA (the `cma` package); 1 eval/step.")
_variant("ng-oneplusone", "OnePlusOne", "(1+1)-ES with the one-fifth rule, nevergrad's OnePlusOne; 1 eval/step.")
_variant("ng-de", "TwoPointsDE", "Differential evolution, nevergrad's TwoPointsDE; 1 eval/step.")
_variant("ng-pso", "PSO", "Particle swarm optimisation, nevergrad's PSO; 1 eval/step.")
