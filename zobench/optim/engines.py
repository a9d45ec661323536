"""How a ZO method's forwards see θ ± εz: the virtual engine (views, θ never written) or the in-place one.

`VirtualEngine` (`engine: virtual`; what `auto` picks for a method that cannot run in place): every
parameter is swapped once per step for a view (optim/virtual.py) whose ops see θ + εz made by the
directions' `shift`; θ is bit-exact (a step with lr 0 returns every parameter unchanged) at the price of a
Python hook per op that reads a parameter.
`InplaceEngine` (`engine: inplace`, and `auto` for every method that can): MeZO's way, θ += εz, forward,
θ −= 2εz, forward (MeZO large_models/trainer.py:691-731, `zo_step`); the restore and plain SGD's update are
folded into the next step's first perturbation (ZO2's folding), so a step passes over θ twice and draws z
three times against MeZO's four. θ returns only up to rounding, but the forwards are plain (what a GPU's
step is made of).
The deferred update lives here: `settle` does it before anything reads θ (the runner calls it before
every evaluation). Both engines share the directions' `add` for plain SGD's update.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar, Protocol

import torch

from zobench.optim.base import LossFn
from zobench.optim.directions import Directions, Terms
from zobench.optim.virtual import Control, Shift, swapped


class Prober(Protocol):
    """What an engine asks of the method: its objective evaluations and its query."""

    def evaluate(self, loss_fn: LossFn, shift: Shift | None = None) -> float: ...

    def query(self, loss_fn: LossFn, seed: int, base: float | None) -> tuple[float, float]: ...


class Engine:
    """Shared: one forward at θ or at a shift of θ, and plain SGD's update pass by pass."""

    name: ClassVar[str]

    def __init__(self, params: list[torch.Tensor], directions: Directions, eps: float, one_sided: bool) -> None:
        self.params, self.directions, self.eps, self.one_sided = params, directions, eps, one_sided

    def loss(self, loss_fn: LossFn, shift: Shift | None) -> float:
        """The objective at θ (shift None) or at shift(θ), θ untouched."""
        if shift is None:
            return float(loss_fn())
        with swapped(self.params, Control(shift)):
            return float(loss_fn())

    def waiting(self) -> set[int]:
        """Seeds whose directions a deferred update will still draw (their cached seeds are kept)."""
        return set()

    def begin(self, with_base: bool) -> None:
        """Before the step's first forward (and before the method's `begin_step`)."""

    def measure(self, method: Prober, loss_fn: LossFn, seeds: list[int],
                with_base: bool) -> tuple[list[float], list[float], float | None]:
        """(projected gradients, losses seen, L(θ) if asked) for the step's seeds."""
        raise NotImplementedError

    @contextmanager
    def folding(self, on: bool) -> Iterator[None]:
        """Within the block the step's update is plain SGD, which may take over the last restore."""
        yield

    def settle(self) -> None:
        """Do work left for later, so θ is the stepped θ."""

    @torch.no_grad()
    def sgd(self, seeds: list[int], grads: list[float], lr: float, weight_decay: float, later: bool = False) -> None:
        """θ ← (1 − η·wd)θ − η/q Σ_j g_j z_j, one pass per query (`later`: a hint the in-place engine takes)."""
        keep = 1 - lr * weight_decay
        self._apply(keep, self._terms(seeds, grads, lr, keep), weight_decay != 0)

    def _terms(self, seeds: list[int], grads: list[float], lr: float, keep: float) -> Terms:
        q = len(seeds)
        return [(seed, 0.0 - lr * grad / q) for seed, grad in zip(seeds, grads, strict=True)]

    def _apply(self, keep: float, terms: Terms, decay: bool, then: tuple[int, float] | None = None) -> None:
        if decay:
            torch._foreach_mul_(self.params, keep)
        for seed, alpha in terms[:-1]:
            self.directions.add(seed, alpha)
        self.directions.add(*terms[-1], then=then)


class VirtualEngine(Engine):
    """The forwards see θ ± εz through views swapped in once per step; θ is written only by the update."""

    name = "virtual"

    def __init__(self, params: list[torch.Tensor], directions: Directions, eps: float, one_sided: bool) -> None:
        super().__init__(params, directions, eps, one_sided)
        self._control: Control | None = None  # set while the parameters are swapped for views (`measure`)

    def loss(self, loss_fn: LossFn, shift: Shift | None) -> float:
        if self._control is None:
            return super().loss(loss_fn, shift)
        self._control.shift = shift  # inside `measure`: the views are in place, show them this shift
        try:
            return float(loss_fn())
        finally:
            self._control.shift = None

    def measure(self, method: Prober, loss_fn: LossFn, seeds: list[int],
                with_base: bool) -> tuple[list[float], list[float], float | None]:
        grads, losses = [], []
        with swapped(self.params, Control()) as self._control:  # one swap for all of the step's forwards
            try:
                base = method.evaluate(loss_fn) if with_base else None
                for seed in seeds:
                    g, loss = method.query(loss_fn, seed, base)
                    grads.append(g)
                    losses.append(loss)
            finally:
                self._control = None
        return grads, losses, base


class InplaceEngine(Engine):
    """θ += εz, forward, θ −= 2εz, forward; the last restore and plain SGD's update wait for the next pass."""

    name = "inplace"

    def __init__(self, params: list[torch.Tensor], directions: Directions, eps: float, one_sided: bool) -> None:
        super().__init__(params, directions, eps, one_sided)
        self._restore: tuple[int, float] | None = None  # (seed, α): θ still holds −α·z(seed)
        self._pending: tuple[float, Terms] | None = None  # (decay factor, terms): the update, for the next pass
        self._fold = False  # inside a plain-SGD step: the last restore may wait for `sgd`

    def waiting(self) -> set[int]:
        return {seed for seed, _ in self._pending[1]} if self._pending is not None else set()

    def begin(self, with_base: bool) -> None:
        if with_base:
            self.settle()  # L(θ) must see the stepped θ

    @contextmanager
    def folding(self, on: bool) -> Iterator[None]:
        self._fold = on
        try:
            yield
        finally:
            self._fold = False

    def measure(self, method: Prober, loss_fn: LossFn, seeds: list[int],
                with_base: bool) -> tuple[list[float], list[float], float | None]:
        base = method.evaluate(loss_fn) if with_base else None
        grads, losses = [], []
        for seed in seeds:
            g, loss = self._query(method, loss_fn, seed, base, last=seed == seeds[-1])
            grads.append(g)
            losses.append(loss)
        return grads, losses, base

    @torch.no_grad()
    def _query(self, method: Prober, loss_fn: LossFn, seed: int, base: float | None,
               last: bool) -> tuple[float, float]:
        """(g, loss seen) by perturbing θ in place; the first pass also does the last step's update."""
        eps = self.eps
        self.settle(then=(seed, eps))
        plus = method.evaluate(loss_fn)
        if self.one_sided:
            assert base is not None
            g, loss, restore = (plus - base) / eps, base, -eps
        else:
            self.directions.add(seed, -2 * eps)
            minus = method.evaluate(loss_fn)
            g, loss, restore = (plus - minus) / (2 * eps), (plus + minus) / 2, eps
        if last and self._fold:
            self._restore = (seed, restore)
        else:
            self.directions.add(seed, restore)
        return g, loss

    def settle(self, then: tuple[int, float] | None = None) -> None:
        """Do the deferred update; `then` = (seed, α): also add α·z(seed), in the same pass as its last term."""
        pending, self._pending = self._pending, None
        if pending is None:
            if then is not None:
                self.directions.add(*then)
            return
        keep, terms = pending
        self._apply(keep, terms, keep != 1.0, then)

    def _terms(self, seeds: list[int], grads: list[float], lr: float, keep: float) -> Terms:
        """The update's terms, the held restore folded into its query's term."""
        restore, self._restore = self._restore, None
        q = len(seeds)
        return [(seed, (keep * restore[1] if restore is not None and restore[0] == seed else 0.0) - lr * grad / q)
                for seed, grad in zip(seeds, grads, strict=True)]

    @torch.no_grad()
    def sgd(self, seeds: list[int], grads: list[float], lr: float, weight_decay: float, later: bool = False) -> None:
        """`later`: keep the update for the next step's first pass (or `settle`)."""
        keep = 1 - lr * weight_decay
        terms = self._terms(seeds, grads, lr, keep)
        if later:
            self._pending = (keep, terms)
            return
        self._apply(keep, terms, weight_decay != 0)


def build(engine: str, params: list[torch.Tensor], directions: Directions, eps: float, one_sided: bool) -> Engine:
    return {"virtual": VirtualEngine, "inplace": InplaceEngine}[engine](params, directions, eps, one_sided)
