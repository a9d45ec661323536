"""The perturbation engine every zeroth-order method shares.

One step: draw q seeds; for each, evaluate the objective at θ ± εz (or θ + εz and θ, one-sided)
and keep only the scalar projected gradient g; then one update pass over the parameters that
regenerates each query's z and turns Σ g·z / q into an update. Directions are never stored:
z is regenerated from (query seed, parameter index) in the layout of optim/noise.py (big tensors
in pieces, small ones in groups sharing one draw).

Two engines (`engine`). `virtual` (default): the forwards see θ ± εz through views swapped in once
per step (optim/virtual.py), so θ is never written except by the update (bit-exact: a step with lr 0
returns every parameter unchanged); θ + εz is formed per piece or per group, big matrix products
and embedding lookups run block by block, so no temporary is larger than a piece or a group.
`inplace`: MeZO's way, θ += εz, forward, θ −= 2εz, forward; the restore and the update are folded
into the next step's first perturbation (ZO2), so one pass over θ draws both directions and a step
passes over θ twice (`settle` does a pending update before θ is read: the runner calls it before
every evaluation). θ returns only up to rounding, but the forwards are plain (no per-op hook), which
is what a GPU's step time is made of. Either way z is made three times per step against MeZO's
four; fewer draws need both forwards computed together, layer by layer. `rng: counter` makes z's
numbers from a hash of their position (optim/counter.py) instead of torch's sequential generator:
compiled, the in-place engine's passes draw, scale and add in one loop per tensor on every core (a
group of small tensors is moved into one buffer first, so it is one loop too).

A method is a subclass that says how z is drawn (`draw`, may read the method's state) and how
the estimate becomes an update (`apply`, or `update` for methods that need more than g·z).
The objective is any scalar the loss function returns; nothing assumes it is differentiable.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt

from zobench.errors import FieldError
from zobench.measure import phase
from zobench.optim import counter
from zobench.optim import fused as fused_
from zobench.optim import noise as pieces_
from zobench.optim.base import LossFn, Method, MethodParams
from zobench.optim.virtual import Control, PieceShift, Shift, swapped

_MIX = 0x9E3779B97F4A7C15  # odd constant: spreads (seed, index) pairs over the seed space
_CPU = torch.device("cpu")


class ZOParams(MethodParams):
    lr: PositiveFloat = 1e-6
    eps: PositiveFloat = 1e-3  # perturbation scale ε
    q: PositiveInt = 1  # queries (directions) averaged per step
    direction: Literal["gaussian", "rademacher", "sphere"] = "gaussian"  # sphere: uniform, radius √d
    one_sided: bool = False  # (L(θ+εz) − L(θ))/ε: q + 1 forwards per step instead of 2q
    weight_decay: NonNegativeFloat = 0.0
    # virtual: the forwards see θ ± εz without θ being written (bit-exact θ; a Python hook per op that reads a
    # parameter). inplace: MeZO's way, θ += εz, −2εz, then restore and update fused into one pass (θ comes
    # back only up to rounding: in bf16 that rounding is larger than a typical update); plain forwards,
    # so on a GPU, where the hooks' CPU time shows, it is the faster one
    engine: Literal["virtual", "inplace"] = "virtual"
    # torch: z from torch.Generator (a sequential Mersenne twister on CPU, ≈ 400 M numbers/s on one core).
    # counter: z from a hash of each number's position, compiled into one loop on every core (optim/counter.py;
    # ≈ 2× faster Gaussian passes on a 2-core CPU; other numbers than torch's, same with or without a compiler)
    rng: Literal["torch", "counter"] = "torch"


class ZOMethod(Method):
    """Two-point SPSA with regenerated directions (MeZO's Algorithm 1 generalised to q queries)."""

    Params = ZOParams
    hp: ZOParams
    needs_base: ClassVar[bool] = False  # the method needs L(θ) every step (besides one-sided differences)
    # weight decay on 1-D tensors too: MeZO (large_models/trainer.py:803) skips biases and LayerNorm weights,
    # which in the models we run are exactly the 1-D tensors; HiZOO and DeepZero decay every tensor
    decays_vectors: ClassVar[bool] = False
    reads_theta: ClassVar[bool] = False  # z depends on θ (a mask, a scale): θ may not move between its draws

    def __init__(self, params: list[torch.nn.Parameter], hp: ZOParams, seed: int) -> None:
        super().__init__(params, hp, seed)
        self._rng = np.random.default_rng(seed)
        self._generators: dict[torch.device, torch.Generator] = {}
        self._sphere: dict[int, float] = {}
        self.t = 0  # steps taken
        self.dim = sum(p.numel() for p in self.params)
        self.projected_grads: list[float] = []
        self.base_loss: float | None = None
        self._bases: dict[tuple[int, int], int] = {}  # (query seed, parameter index) → its pieces' seed, per step
        self._control: Control | None = None  # set while the parameters are swapped for views (`probe`)
        self._layout: pieces_.Layout | None = None
        self._batched: counter.Batched | None = None  # `rng: counter`: the in-place passes' calls, worked out once
        self._owners: list[int] = []  # for each tensor it adds: whose seed keys its numbers (its group's first)
        self._where: list[int] = []  # the parameters' memory when `_batched` was made (it holds that memory)
        self._strided: list[int] = []  # parameters `_batched` leaves out (not contiguous)
        self._restore: tuple[int, float] | None = None  # (seed, α): θ still holds −α·z(seed) (engine inplace)
        # (decay, [(seed, α), …]): the in-place engine's restore and update, left for the next step's first pass
        self._pending: tuple[float, list[tuple[int, float]]] | None = None
        self._fuse = False  # inside `step` of plain SGD: the last restore may wait for `update`
        self._fused: fused_.FusedPass | None | bool = None  # the GPU kernel for in-place passes (None: not decided)

    @classmethod
    def check(cls, params: dict) -> None:
        """The in-place engine replaces `query` and moves θ between draws: a method with its own queries
        (HiZOO's pairs, CGE's coordinates, forward gradients) or whose z reads θ keeps the virtual engine."""
        if params.get("engine") != "inplace":
            return
        if cls.query is not ZOMethod.query or cls.probe is not ZOMethod.probe:
            raise FieldError("engine", f"'{cls.__name__}' makes its own queries, which the in-place engine would "
                             "skip; use engine: virtual (the default) for this method")
        if cls.reads_theta:
            raise FieldError("engine", f"'{cls.__name__}' draws z from θ itself, which the in-place engine moves "
                             "between draws; use engine: virtual (the default) for this method")

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
        gen = self._generators.get(_CPU)
        if gen is None:
            gen = self._generators[_CPU] = torch.Generator()
        gen.manual_seed((seed + i * _MIX) % (2**63))
        return gen

    def noise(self, p: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Fresh unit-variance noise shaped like p (Rademacher ±1 or Gaussian; sphere starts Gaussian),
        drawn in the pieces `pieces` draws (optim/noise.py), so both give the same numbers."""
        return pieces_.fill(p.shape, p.dtype, p.device, self._kind(), pieces_.base_of(gen))

    def _kind(self) -> str:
        kind = "rademacher" if self.hp.direction == "rademacher" else "gaussian"
        return kind + (pieces_.COUNTER if self.hp.rng == "counter" else "")

    def counter_kind(self) -> str | None:
        """'gaussian' or 'rademacher' when z comes from optim/counter.py (`rng: counter`), else None."""
        return self._kind().removesuffix(pieces_.COUNTER) if self.hp.rng == "counter" else None

    def plain_draw(self) -> bool:
        """z is the engine's own noise (no override of draw/noise/direction): it can be made piecewise."""
        cls = type(self)
        return cls.draw is ZOMethod.draw and cls.noise is ZOMethod.noise and cls.direction is ZOMethod.direction

    def piece_base(self, i: int, p: torch.Tensor, seed: int) -> int:
        """The seed of z_i(seed)'s pieces: what `noise` draws from `generator`, kept for the step (3 uses)."""
        base = self._bases.get((seed, i))
        if base is None:
            base = self._bases[(seed, i)] = pieces_.base_of(self.generator(p, seed, i))
        return base

    def layout(self) -> pieces_.Layout:
        """How the parameters' z is drawn (pieces, groups); made once, when the first direction is drawn."""
        if self._layout is None:
            self._layout = pieces_.Layout(self.params, counter=self.hp.rng == "counter")
        return self._layout

    def group_draw(self, g: int, seed: int) -> torch.Tensor:
        """Group g's z for the query `seed`: one draw for all its (small) parameters, flat and fresh."""
        lay = self.layout()
        first = self.params[lay.members[g][0]]
        out = torch.empty(lay.size[g], dtype=first.dtype, device=first.device)
        return pieces_.piece_(out, self._kind(), self.piece_base(lay.members[g][0], first, seed), 0)

    def pieces(self, i: int, p: torch.Tensor, seed: int,
               rows: torch.Tensor | None = None) -> Iterator[tuple[int, int, torch.Tensor]]:
        """z_i(seed) before sphere scaling, as (r0, r1, rows r0..r1) pieces in a reused buffer: the same
        numbers as `direction` without a tensor of p's size (`rows`: only the pieces holding these rows).
        Only for `plain_draw` methods; a grouped parameter comes whole, cut from its group's draw."""
        g = self.layout().group_of[i]
        if g is not None:
            z = self.group_draw(g, seed)[self.layout().offset[i]:self.layout().offset[i] + p.numel()]
            yield 0, pieces_.rows_of(p.shape)[0], z.view(p.shape)
            return
        base = self.piece_base(i, p, seed)
        only = None
        if rows is not None:
            only = torch.unique(rows.reshape(-1) // pieces_.rows_per_piece(p.shape, p.device)).tolist()
        yield from pieces_.pieces(p.shape, p.dtype, p.device, self._kind(), base, only)

    def draw(self, i: int, p: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Parameter i's direction for this query, before any sphere normalisation. Override me."""
        return self.noise(p, gen)

    def fused(self) -> fused_.FusedPass | None:
        """The one-kernel pass (optim/fused.py) when the in-place engine draws its own Rademacher z on a GPU
        with Triton: then z is the kernel's, everywhere (passes, update, `direction`). Gaussian z keeps
        torch's normal_: on an H100 the kernel's Box–Muller was slower than normal_ plus an add (3.81 F
        against 3.13 F a step on a 1.3B model), its sign bits faster (2.65 F against 3.62 F)."""
        if self._fused is None:
            ok = (self.hp.engine == "inplace" and self._kind() == "rademacher" and self.plain_draw()
                  and fused_.available(self.params))
            self._fused = fused_.FusedPass() if ok else False
        return self._fused or None

    def unscaled(self, i: int, p: torch.Tensor, seed: int) -> torch.Tensor:
        """z_i before sphere scaling, a fresh tensor: `draw`, or for the engine's own noise its layout's."""
        kernel = self.fused()
        if kernel is not None:
            z = torch.zeros_like(p)
            kernel([z], [i], self._kind(), seed, 1.0)
            return z
        if self.plain_draw() and self.layout().group_of[i] is not None:
            return next(self.pieces(i, p, seed))[2]
        return self.draw(i, p, self.generator(p, seed, i))

    def sphere_scale(self, seed: int) -> float:
        """√d / ‖z‖ over all parameters (1 unless direction is 'sphere'): one extra regeneration per query."""
        if self.hp.direction != "sphere":
            return 1.0
        if seed not in self._sphere:
            sq = sum(float(self.unscaled(i, p, seed).double().pow(2).sum()) for i, p in enumerate(self.params))
            self._sphere[seed] = math.sqrt(self.dim / sq) if sq > 0 else 0.0
        return self._sphere[seed]

    @torch.no_grad()
    def direction(self, i: int, p: torch.Tensor, seed: int) -> torch.Tensor:
        """z_i for the query `seed`, regenerated (a fresh tensor the caller may modify)."""
        z = self.unscaled(i, p, seed)
        scale = self.sphere_scale(seed)
        return z if scale == 1.0 else z.mul_(scale)

    def along(self, seed: int, scale: float) -> Shift:
        """The shift θ_i ↦ θ_i + scale·z_i(seed), for `evaluate`."""
        if self.plain_draw():
            return PieceShift(self, seed, scale)
        return lambda i, raw: self.direction(i, raw, seed).mul_(scale).add_(raw)

    # -- objective evaluations -------------------------------------------------------------
    @torch.inference_mode()
    def evaluate(self, loss_fn: LossFn, shift: Shift | None = None) -> float:
        """One forward pass at θ (shift None) or at shift(θ), θ untouched; in inference mode (no autograd
        bookkeeping at all: no version counters, no views tracked)."""
        if self._control is not None:  # inside `probe`: the views are in place, show them this shift
            self._control.shift = shift
            try:
                loss = float(loss_fn())
            finally:
                self._control.shift = None
        elif shift is None:
            loss = float(loss_fn())
        else:
            with swapped(self.params, Control(shift)):
                loss = float(loss_fn())
        self.forward_passes += 1
        return loss

    def begin_step(self) -> None:
        """Per-step preparation before any forward (schedules, masks, refreshed bases)."""

    def query(self, loss_fn: LossFn, seed: int, base: float | None) -> tuple[float, float]:
        """(projected gradient g ≈ ∇L·z, loss seen) for one direction."""
        eps = self.hp.eps
        plus = self.evaluate(loss_fn, self.along(seed, eps))
        if self.hp.one_sided:
            assert base is not None
            return (plus - base) / eps, base
        minus = self.evaluate(loss_fn, self.along(seed, -eps))
        return (plus - minus) / (2 * eps), (plus + minus) / 2

    @torch.no_grad()
    def query_inplace(self, loss_fn: LossFn, seed: int, base: float | None, last: bool) -> tuple[float, float]:
        """`query` by perturbing θ in place. The last query's restore waits for the update, and the update
        (plain SGD) waits for the next step's first perturbation: one pass over θ draws both directions,
        so a step reads and writes θ twice (ZO2's folding) and draws z three times (MeZO: four)."""
        eps = self.hp.eps
        self.settle(then=(seed, eps))  # the last step's update and this perturbation, in one pass
        plus = self.evaluate(loss_fn)
        if self.hp.one_sided:
            assert base is not None
            g, loss, restore = (plus - base) / eps, base, -eps
        else:
            self.add_z(seed, -2 * eps)
            minus = self.evaluate(loss_fn)
            g, loss, restore = (plus - minus) / (2 * eps), (plus + minus) / 2, eps
        if last and self._fuse:
            self._restore = (seed, restore)
        else:
            self.add_z(seed, restore)
        return g, loss

    def settle(self, then: tuple[int, float] | None = None) -> None:
        """Do the update the in-place engine left for the next step, so θ is the stepped θ: the runner calls
        this before every evaluation and at the end of training. `then` = (seed, α): also add α·z(seed),
        in the same pass as the update's last direction."""
        pending, self._pending = self._pending, None
        if pending is None:
            if then is not None:
                self.add_z(*then)
            return
        keep, terms = pending
        if keep != 1.0:
            torch._foreach_mul_(self.params, keep)
        for seed, alpha in terms[:-1]:
            self.add_z(seed, alpha)
        self.add_z(*terms[-1], then=then)

    def probe(self, loss_fn: LossFn) -> tuple[list[int], list[float], float]:
        """Draw the step's q seeds and measure each projected gradient. Returns (seeds, grads, loss)."""
        self.t += 1
        self._sphere.clear()
        waiting = {seed for seed, _ in self._pending[1]} if self._pending is not None else set()
        self._bases = {k: v for k, v in self._bases.items() if k[0] in waiting}  # the folded update's are reused
        seeds = [int(s) for s in self._rng.integers(0, 2**62, size=self.hp.q)]
        if self.hp.one_sided or self.needs_base or self.hp.engine != "inplace":
            self.settle()  # L(θ) or a virtual forward must see the stepped θ
        self.begin_step()
        grads, losses = [], []
        if self.hp.engine == "inplace":
            base = self.evaluate(loss_fn) if (self.hp.one_sided or self.needs_base) else None
            for seed in seeds:
                g, loss = self.query_inplace(loss_fn, seed, base, last=seed == seeds[-1])
                grads.append(g)
                losses.append(loss)
        else:
            with swapped(self.params, Control()) as self._control:  # one swap for all of the step's forwards
                try:
                    base = self.evaluate(loss_fn) if (self.hp.one_sided or self.needs_base) else None
                    for seed in seeds:
                        g, loss = self.query(loss_fn, seed, base)
                        grads.append(g)
                        losses.append(loss)
                finally:
                    self._control = None
        self.projected_grads, self.base_loss = grads, base
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

    def plain_sgd(self) -> bool:
        cls = type(self)
        uniform_decay = not self.hp.weight_decay or all(self.decays(i) for i in range(len(self.params)))
        return (self.plain_draw() and cls.estimate is ZOMethod.estimate and cls.apply is ZOMethod.apply
                and cls.update is ZOMethod.update and uniform_decay)

    @torch.no_grad()
    def update(self, seeds: list[int], grads: list[float], defer: bool = False) -> None:
        """θ ← the step's update; `defer` (in-place engine, plain SGD): keep it for the next step's first pass."""
        plain, hp, q = self.plain_sgd(), self.hp, len(seeds)
        if not plain:
            for i, p in enumerate(self.params):
                self.apply(i, p, self.estimate(i, p, seeds, grads))
            return
        # SGD θ ← (1 − η·wd)θ − η/q Σ_j g_j z_j, one pass per query (plus the in-place engine's restore)
        keep = 1 - hp.lr * hp.weight_decay
        restore, self._restore = self._restore, None
        terms = [(seed, (keep * restore[1] if restore is not None and restore[0] == seed else 0.0) - hp.lr * grad / q)
                 for seed, grad in zip(seeds, grads, strict=True)]
        if defer:
            self._pending = (keep, terms)
            return
        if hp.weight_decay:
            torch._foreach_mul_(self.params, keep)
        for seed, alpha in terms:
            self.add_z(seed, alpha)

    @torch.no_grad()
    def add_z(self, seed: int, alpha: float, then: tuple[int, float] | None = None) -> None:
        """θ ← θ + α·z(seed) (+ β·z(seed₂) in the same pass, `then` = (seed₂, β)) over every parameter: group by
        group and piece by piece for the engine's own directions (nothing of a parameter's size is made),
        else through `direction`."""
        terms = [(seed, alpha)] + ([then] if then is not None else [])
        if not self.plain_draw():
            for i, p in enumerate(self.params):
                for s, a in terms:
                    p.add_(self.direction(i, p, s), alpha=a)
            return
        terms = [(s, a * self.sphere_scale(s)) for s, a in terms]
        kernel = self.fused()
        if kernel is not None:
            try:
                (seed1, alpha1), (seed2, alpha2) = terms[0], terms[1] if len(terms) > 1 else (None, 0.0)
                kernel(self.params, list(range(len(self.params))), self._kind(), seed1, alpha1, seed2, alpha2)
                return
            except Exception as e:  # noqa: BLE001  a kernel that cannot compile here: the torch path, said once
                if kernel.ran:
                    raise  # z already came from the kernel: switching now would change it
                warnings.warn(f"fused ZO kernel unavailable ({type(e).__name__}: {e}); using torch ops", stacklevel=2)
                self._fused = False
        lay = self.layout()
        kind = self.counter_kind()
        if kind is not None:  # numbers made, scaled and added in compiled loops, a batch of tensors per call
            self._add_counter(kind, terms)
            return
        for g, members in enumerate(lay.members):  # small tensors: one draw per group, one _foreach add
            ps = [self.params[j] for j in members]
            for s, a in terms:
                torch._foreach_add_(ps, lay.split(self.group_draw(g, s), g, self.params), alpha=a)
        for i, p in enumerate(self.params):
            if lay.group_of[i] is not None:
                continue
            if not p.is_contiguous():
                for s, a in terms:
                    p.add_(self.unscaled(i, p, s), alpha=a)
                continue
            flat, width = p.view(-1), pieces_.rows_of(p.shape)[1]
            for parts in zip(*(self.pieces(i, p, s) for s, _ in terms), strict=True):  # a piece of each, in cache
                for (r0, r1, z), (_, a) in zip(parts, terms, strict=True):
                    flat[r0 * width:r1 * width].add_(z.reshape(-1), alpha=a)

    def _add_counter(self, kind: str, terms: list[tuple[int, float]]) -> None:
        """`add_z` with `rng: counter`: a grouped tensor takes its numbers straight from its group's z (from its
        offset on, keyed like the group's draw), no group drawn first. The in-place engine moves each group's
        members into one buffer at their offsets (`_packed`), so a group is one loop of a pass, not one per
        tensor; the virtual engine, which swaps parameters for views, adds them tensor by tensor."""
        lay = self.layout()
        where = [p.data_ptr() for p in self.params]
        if self._batched is None or where != self._where:  # made again if a parameter was given new memory
            flats, starts, self._owners, self._strided = [], [], [], []
            for i, p in enumerate(self.params):
                g = lay.group_of[i]
                if g is None and not p.is_contiguous():
                    self._strided.append(i)
                elif g is None or self.hp.engine != "inplace":
                    flats.append(p.view(-1))
                    starts.append(0 if g is None else lay.offset[i])
                    self._owners.append(i if g is None else lay.members[g][0])
                elif lay.position[i] == 0:  # a group, once
                    flats.append(self._packed(g))
                    starts.append(0)
                    self._owners.append(i)
            self._where = [p.data_ptr() for p in self.params]
            self._batched = counter.Batched(flats, kind, starts)
        for i in self._strided:  # a strided tensor: its z made whole, then added
            for s, a in terms:
                self.params[i].add_(self.unscaled(i, self.params[i], s), alpha=a)
        bases = [[self.piece_base(j, self.params[j], s) for j in self._owners] for s, _ in terms]
        second = (bases[1], terms[1][1]) if len(terms) > 1 else ()
        self._batched.add(bases[0], terms[0][1], *second)

    def _packed(self, g: int) -> torch.Tensor:
        """Group g's buffer: its members' numbers at their offsets in the group's draw, each member's data a view
        of it. Moved there (members copied in, one group's memory at a time) unless they already are, as
        another method on the same parameters leaves them. Why: a pass's cost on a model of small tensors is
        per loop, not per number (MiniLM's 106 tensors in 7 loops: a pass 0.0068 → 0.0041 s); the gaps the
        alignment leaves get numbers that nothing reads."""
        lay = self.layout()
        members = [(self.params[j], lay.offset[j]) for j in lay.members[g]]
        first = members[0][0]
        size = -(-lay.size[g] // 64) * 64  # whole rows of 64: the tail is more of the stream, read by nothing
        memory = first.untyped_storage()
        if (first.storage_offset() == 0 and memory.nbytes() == size * first.element_size()
                and all(p.untyped_storage().data_ptr() == memory.data_ptr() and p.storage_offset() == at
                        for p, at in members)):
            return torch.empty(0, dtype=first.dtype, device=first.device).set_(memory, 0, (size,))
        buffer = torch.zeros(size, dtype=first.dtype, device=first.device)
        for p, at in members:
            view = buffer[at:at + p.numel()].view(p.shape)
            view.copy_(p.detach())
            p.data = view
        return buffer

    # -- the step ---------------------------------------------------------------------------
    def step(self, loss_fn: LossFn) -> float:
        plain = self.plain_sgd()
        self._fuse = plain  # the in-place engine may leave its last restore to `update`
        try:
            seeds, grads, loss = self.probe(loss_fn)
        finally:
            self._fuse = False
        with phase("update"):
            if plain and self.hp.engine == "inplace":
                self.update(seeds, grads, defer=True)  # done by the next step's first pass, or by `settle`
            else:
                self.update(seeds, grads)
        return loss

    @torch.no_grad()
    def gradient_estimate(self, loss_fn: LossFn) -> list[torch.Tensor]:
        """The step's gradient estimate as dense tensors, without updating (diagnostics and tests only)."""
        self.settle()
        seeds, grads, _ = self.probe(loss_fn)  # outside `step`: every restore is done inside the probe
        return [self.estimate(i, p, seeds, grads) for i, p in enumerate(self.params)]
