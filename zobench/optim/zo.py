"""The zeroth-order algorithm every ZO method shares: seeds, probes, the estimate and its update.

One step: draw q seeds; for each, evaluate the objective at θ ± εz (or θ + εz and θ, one-sided)
and keep only the scalar projected gradient g; then turn Σ g·z / q into an update, regenerating each
query's z. Directions are never stored. Where z comes from is optim/directions.py (`rng`, or the
method's own `draw`); how the forwards see θ ± εz is optim/engines.py (`engine`). MeZO's Algorithm 1
(princeton-nlp/MeZO large_models/trainer.py:691-806) is this with q = 1, Gaussian z, SGD.

A method is a subclass that says how z is drawn (`draw`, declared by `own_draw`) and how the estimate
becomes an update (`estimate`/`apply`/`update`, declared by `sgd_update = False`); one with its own
queries declares `own_queries`. The declarations are checked when the subclass is defined.
The objective is any scalar the loss function returns; nothing assumes it is differentiable.
"""

from __future__ import annotations

from functools import cached_property
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt

from zobench.errors import FieldError
from zobench.measure import phase
from zobench.optim import directions as directions_
from zobench.optim import engines
from zobench.optim import noise as pieces_
from zobench.optim.base import LossFn, Method, MethodParams
from zobench.optim.virtual import Shift

_MIX = 0x9E3779B97F4A7C15  # odd constant: spreads (seed, index) pairs over the seed space


class ZOParams(MethodParams):
    lr: PositiveFloat = 1e-6
    eps: PositiveFloat = 1e-3  # perturbation scale ε
    q: PositiveInt = 1  # queries (directions) averaged per step
    direction: Literal["gaussian", "rademacher", "sphere"] = "gaussian"  # sphere: uniform, radius √d
    one_sided: bool = False  # (L(θ+εz) − L(θ))/ε: q + 1 forwards per step instead of 2q
    weight_decay: NonNegativeFloat = 0.0
    # virtual: the forwards see θ ± εz without θ being written (bit-exact θ; a Python hook per op that reads a
    # parameter). inplace: MeZO's way (θ comes back only up to rounding; plain forwards). auto: inplace, the
    # faster with the same z, unless the method cannot run in place (then virtual); resolved in the run's spec
    engine: Literal["auto", "virtual", "inplace"] = "auto"
    # torch: torch.Generator in pieces. counter: a hash of each number's position, compiled (other numbers,
    # same distribution). triton: philox inside one GPU kernel (CUDA with Triton only). optim/directions.py
    rng: Literal["torch", "counter", "triton"] = "torch"


class ZOMethod(Method):
    """Two-point SPSA with regenerated directions (MeZO's Algorithm 1 generalised to q queries)."""

    Params = ZOParams
    hp: ZOParams
    needs_base: ClassVar[bool] = False  # the method needs L(θ) every step (besides one-sided differences)
    # weight decay on 1-D tensors too: MeZO (large_models/trainer.py:803) skips biases and LayerNorm weights,
    # which in the models we run are exactly the 1-D tensors; HiZOO and DeepZero decay every tensor
    decays_vectors: ClassVar[bool] = False
    reads_theta: ClassVar[bool] = False  # z depends on θ (a mask, a scale): θ may not move between its draws
    own_draw: ClassVar[bool] = False  # z comes from the method's `draw`/`noise`, not from a generator's pieces
    own_queries: ClassVar[bool] = False  # the method's own `query`/`probe`: the in-place engine would skip them
    sgd_update: ClassVar[bool] = True  # the update is SGD on ĝ = Σ g·z / q: passes may fold it (no own estimate)
    _DECLARED: ClassVar[dict[str, tuple[str, ...]]] = {
        "own_draw": ("draw", "noise"), "own_queries": ("query", "probe")}

    def __init_subclass__(cls, **kwargs: object) -> None:
        """An override the class does not declare would be skipped by the fast paths: refuse it here."""
        super().__init_subclass__(**kwargs)
        for flag, names in cls._DECLARED.items():
            if not getattr(cls, flag) and any(n in cls.__dict__ for n in names):
                raise TypeError(f"{cls.__name__} overrides {'/'.join(names)}: declare {flag} = True")
        if cls.sgd_update and any(n in cls.__dict__ for n in ("estimate", "apply", "update")):
            raise TypeError(f"{cls.__name__} has its own estimate/apply/update: declare sgd_update = False")

    def __init__(self, params: list[torch.nn.Parameter], hp: ZOParams, seed: int) -> None:
        super().__init__(params, hp, seed)
        self._rng = np.random.default_rng(seed)
        self._generator = torch.Generator()
        self.t = 0  # steps taken
        self.dim = sum(p.numel() for p in self.params)
        self.base_loss: float | None = None
        engine = self.resolved(hp.model_dump())["engine"]  # hp straight from code, not through a suite
        self.directions = directions_.build(self.params, hp.direction, hp.rng, self.generator,
                                            self.draw if self.own_draw else None, pack=engine == "inplace")
        self.engine = engines.build(engine, self.params, self.directions, hp.eps, hp.one_sided)

    @classmethod
    def resolved(cls, params: dict) -> dict:
        """`engine: auto` → MeZO's in-place engine (same z, fewer passes: bench, benchmarks/README.md), or the
        virtual one for a method that makes its own queries or draws z from θ, which in place would be wrong."""
        if params.get("engine") == "auto":
            params = {**params, "engine": "virtual" if cls.own_queries or cls.reads_theta else "inplace"}
        return params

    @classmethod
    def check(cls, params: dict) -> None:
        """The in-place engine replaces `query` and moves θ between draws; Triton makes only the engine's z."""
        if params.get("rng") == "triton" and cls.own_draw:
            raise FieldError("rng", f"'{cls.__name__}' draws its own z, which the Triton kernel cannot make; "
                             "use rng: torch (the default) or counter for this method")
        if params.get("engine") != "inplace":
            return
        if cls.own_queries:
            raise FieldError("engine", f"'{cls.__name__}' makes its own queries, which the in-place engine would "
                             "skip; use engine: virtual (or auto) for this method")
        if cls.reads_theta:
            raise FieldError("engine", f"'{cls.__name__}' draws z from θ itself, which the in-place engine moves "
                             "between draws; use engine: virtual (or auto) for this method")

    @classmethod
    def uncompilable(cls, params: dict) -> str | None:
        if params.get("engine") != "inplace":
            return ("shows the forwards θ ± εz through the virtual engine's per-op view, which a compiled "
                    "model would not call")
        return None

    # -- how z is drawn -------------------------------------------------------------------
    def generator(self, p: torch.Tensor, seed: int, i: int) -> torch.Generator:
        """A CPU generator seeded by (query seed, parameter index). It draws only the seeds of z's pieces
        (optim/noise.py), which are made on p's device: no device round trip per parameter."""
        self._generator.manual_seed((seed + i * _MIX) % (2**63))
        return self._generator

    def noise(self, p: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Fresh unit-variance noise shaped like p (Rademacher ±1 or Gaussian; sphere starts Gaussian),
        drawn in the pieces the engine's own directions use, so both give the same numbers."""
        return pieces_.fill(p.shape, p.dtype, p.device, self.directions.piece_kind, pieces_.base_of(gen))

    def draw(self, i: int, p: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Parameter i's direction for this query, before sphere scaling (override with `own_draw = True`)."""
        return self.noise(p, gen)

    def direction(self, i: int, p: torch.Tensor, seed: int) -> torch.Tensor:
        """z_i for the query `seed`, regenerated (a fresh tensor the caller may modify)."""
        return self.directions.dense(i, p, seed)

    def along(self, seed: int, scale: float) -> Shift:
        """The shift θ_i ↦ θ_i + scale·z_i(seed), for `evaluate`."""
        return self.directions.shift(seed, scale)

    # -- objective evaluations -------------------------------------------------------------
    @torch.inference_mode()
    def evaluate(self, loss_fn: LossFn, shift: Shift | None = None) -> float:
        """One forward pass at θ (shift None) or at shift(θ), θ untouched; in inference mode."""
        loss = self.engine.loss(loss_fn, shift)
        self.forward_passes += 1
        return loss

    def begin_step(self) -> None:
        """Per-step preparation before any forward (schedules, masks, refreshed bases)."""

    def query(self, loss_fn: LossFn, seed: int, base: float | None) -> tuple[float, float]:
        """(projected gradient g ≈ ∇L·z, loss seen) for one direction (the virtual engine's forwards)."""
        eps = self.hp.eps
        plus = self.evaluate(loss_fn, self.along(seed, eps))
        if self.hp.one_sided:
            assert base is not None
            return (plus - base) / eps, base
        minus = self.evaluate(loss_fn, self.along(seed, -eps))
        return (plus - minus) / (2 * eps), (plus + minus) / 2

    def settle(self) -> None:
        self.engine.settle()

    def probe(self, loss_fn: LossFn) -> tuple[list[int], list[float], float]:
        """Draw the step's q seeds and measure each projected gradient. Returns (seeds, grads, loss)."""
        self.t += 1
        self.directions.new_step(keep=self.engine.waiting())  # a folded update's seeds are reused
        seeds = [int(s) for s in self._rng.integers(0, 2**62, size=self.hp.q)]
        with_base = self.hp.one_sided or self.needs_base
        self.engine.begin(with_base)
        self.begin_step()
        grads, losses, base = self.engine.measure(self, loss_fn, seeds, with_base)
        self.base_loss = base
        return seeds, grads, (base if base is not None else float(np.mean(losses)))

    # -- how the estimate becomes an update --------------------------------------------------
    def decays(self, i: int) -> bool:
        """Whether weight decay applies to parameter i (see `decays_vectors`)."""
        return self.decays_vectors or self.params[i].dim() >= 2

    @torch.no_grad()
    def estimate(self, i: int, p: torch.Tensor, seeds: list[int], grads: list[float]) -> torch.Tensor:
        """ĝ_i = (1/q) Σ_j g_j z_ij for one parameter: the q seeds are replayed, nothing d-sized is summed."""
        q = len(seeds)
        est = self.direction(i, p, seeds[0]).mul_(grads[0] / q)
        for seed, g in zip(seeds[1:], grads[1:], strict=True):
            est.add_(self.direction(i, p, seed), alpha=g / q)
        return est

    @torch.no_grad()
    def apply(self, i: int, p: torch.Tensor, est: torch.Tensor) -> None:
        """Default: SGD with decoupled weight decay, θ ← (1 − η·wd)θ − η·ĝ."""
        if self.hp.weight_decay and self.decays(i):
            p.mul_(1 - self.hp.lr * self.hp.weight_decay)
        p.add_(est, alpha=-self.hp.lr)

    @cached_property
    def folds(self) -> bool:
        """The update is SGD over the generator's z with one decay for all: the engine does it pass by pass.
        Fixed for the method's life (parameters, hyper-parameters and class), so worked out once."""
        uniform_decay = not self.hp.weight_decay or all(self.decays(i) for i in range(len(self.params)))
        return self.sgd_update and not self.own_draw and uniform_decay

    @torch.no_grad()
    def update(self, seeds: list[int], grads: list[float]) -> None:
        """θ ← the step's update: SGD pass by pass when it folds, else `apply(estimate)` parameter by parameter."""
        if self.folds:
            self.engine.sgd(seeds, grads, self.hp.lr, self.hp.weight_decay)
            return
        for i, p in enumerate(self.params):
            self.apply(i, p, self.estimate(i, p, seeds, grads))

    # -- the step ---------------------------------------------------------------------------
    def step(self, loss_fn: LossFn) -> float:
        folds = self.folds
        with self.engine.folding(folds):  # the in-place engine may leave its last restore to the update
            seeds, grads, loss = self.probe(loss_fn)
        with phase("update"):
            if folds:  # the in-place engine does it in the next step's first pass, or in `settle`
                self.engine.sgd(seeds, grads, self.hp.lr, self.hp.weight_decay, later=True)
            else:
                self.update(seeds, grads)
        return loss

    @torch.no_grad()
    def gradient_estimate(self, loss_fn: LossFn) -> list[torch.Tensor]:
        """The step's gradient estimate as dense tensors, without updating (diagnostics and tests only)."""
        self.settle()
        seeds, grads, _ = self.probe(loss_fn)  # outside `step`: every restore is done inside the probe
        return [self.estimate(i, p, seeds, grads) for i, p in enumerate(self.params)]
