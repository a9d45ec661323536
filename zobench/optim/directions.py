"""Where a step's directions z come from: one interface, one implementation per generator.

A ZO step never stores z: it is regenerated from (query seed, parameter index) whenever it is needed.
Three things are asked of a generator, and every engine needs only these:
- `add(seed, α)`: θ ← θ + α·z(seed) over every parameter (the in-place engine's passes, plain SGD's update);
- `shift(seed, scale)`: a view's value θ_i + scale·z_i (the virtual engine's forwards, optim/virtual.py);
- `dense(i, p, seed)`: z_i as a fresh tensor (updates that need more than g·z, diagnostics).

One class per generator, chosen once by `build` from the method's parameters (`rng`, and whether the
method draws its own z) and never switched afterwards by what the machine has installed:
`TorchPieces` (`rng: torch`, torch.Generator in pieces, optim/noise.py), `CounterHash` (`rng: counter`,
a hash of each number's position, optim/counter.py), `TritonPhilox` (`rng: triton`, philox inside one
GPU kernel, optim/fused.py; a machine that cannot run it is an error, not a silent switch), and
`OwnDraw` for methods whose z is their own (`ZOMethod.own_draw`: a mask, a low-rank product, a scale).
The three generators give different numbers of the same distribution; `rng` is a method parameter, so
it is in the resolved spec and the run id.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from functools import cached_property, partial
from typing import ClassVar

import torch
from torch._C import DisableTorchFunctionSubclass

from zobench.errors import UserError
from zobench.optim import counter
from zobench.optim import fused as fused_
from zobench.optim import noise as pieces_
from zobench.optim.virtual import Shift

Seeded = Callable[[torch.Tensor, int, int], torch.Generator]  # (p, query seed, index) → its generator
Draw = Callable[[int, torch.Tensor, torch.Generator], torch.Tensor]  # a method's own z_i from a generator
Terms = list[tuple[int, float]]  # (seed, α): add α·z(seed)


class Directions:
    """z for one method's parameters. `kind` is 'gaussian' or 'rademacher'; `sphere` rescales each query's
    z to norm √d (one extra regeneration per query)."""

    name: ClassVar[str]

    def __init__(self, params: list[torch.Tensor], kind: str, sphere: bool, seeded: Seeded) -> None:
        self.params, self.kind, self.sphere, self.seeded = params, kind, sphere, seeded
        self.dim = sum(p.numel() for p in params)
        self._sphere: dict[int, float] = {}
        self._bases: dict[tuple[int, int], int] = {}  # (query seed, parameter index) → its pieces' seed

    @property
    def piece_kind(self) -> str:
        """The kind optim/noise.py draws: with '+counter' when the numbers come from optim/counter.py."""
        return self.kind

    def new_step(self, keep: set[int]) -> None:
        """Forget last step's cached seeds and norms, except the seeds in `keep` (a folded update's)."""
        self._sphere.clear()
        self._bases = {k: v for k, v in self._bases.items() if k[0] in keep}

    def piece_base(self, i: int, p: torch.Tensor, seed: int) -> int:
        """The seed of z_i(seed)'s pieces, drawn from the method's generator; kept for the step (3 uses)."""
        base = self._bases.get((seed, i))
        if base is None:
            base = self._bases[(seed, i)] = pieces_.base_of(self.seeded(p, seed, i))
        return base

    def unscaled(self, i: int, p: torch.Tensor, seed: int) -> torch.Tensor:
        """z_i before sphere scaling, a fresh tensor."""
        return pieces_.fill(p.shape, p.dtype, p.device, self.piece_kind, self.piece_base(i, p, seed))

    def sphere_scale(self, seed: int) -> float:
        """√d / ‖z‖ over all parameters (1 unless the direction is 'sphere')."""
        if not self.sphere:
            return 1.0
        if seed not in self._sphere:
            sq = sum(float(self.unscaled(i, p, seed).double().pow(2).sum()) for i, p in enumerate(self.params))
            self._sphere[seed] = math.sqrt(self.dim / sq) if sq > 0 else 0.0
        return self._sphere[seed]

    @torch.no_grad()
    def dense(self, i: int, p: torch.Tensor, seed: int) -> torch.Tensor:
        """z_i for the query `seed`, materialised (a fresh tensor the caller may modify)."""
        z = self.unscaled(i, p, seed)
        scale = self.sphere_scale(seed)
        return z if scale == 1.0 else z.mul_(scale)

    def shift(self, seed: int, scale: float) -> Shift:
        """θ_i ↦ θ_i + scale·z_i(seed), z_i made whole."""
        return lambda i, raw: self.dense(i, raw, seed).mul_(scale).add_(raw)

    @torch.no_grad()
    def add(self, seed: int, alpha: float, then: tuple[int, float] | None = None) -> None:
        """θ ← θ + α·z(seed) (+ β·z(seed₂) in the same pass, `then` = (seed₂, β)) over every parameter."""
        for i, p in enumerate(self.params):
            for s, a in [(seed, alpha)] + ([then] if then is not None else []):
                p.add_(self.dense(i, p, s), alpha=a)


class OwnDraw(Directions):
    """The method's own z (`ZOMethod.draw`, which may read its state): made whole, parameter by parameter."""

    name = "own-draw"

    def __init__(self, params: list[torch.Tensor], kind: str, sphere: bool, seeded: Seeded, draw: Draw,
                 piece_kind: str) -> None:
        super().__init__(params, kind, sphere, seeded)
        self.draw, self._piece_kind = draw, piece_kind

    @property
    def piece_kind(self) -> str:
        return self._piece_kind

    def unscaled(self, i: int, p: torch.Tensor, seed: int) -> torch.Tensor:
        return self.draw(i, p, self.seeded(p, seed, i))


class TorchPieces(Directions):
    """`rng: torch`: big tensors drawn in cache-sized pieces, small ones in groups sharing one draw
    (optim/noise.py), so nothing of a parameter's size is made by a pass or a forward."""

    name = "torch"

    @cached_property
    def layout(self) -> pieces_.Layout:
        """Pieces and groups; made when the first direction is drawn."""
        return pieces_.Layout(self.params, counter=self.piece_kind.endswith(pieces_.COUNTER))

    @property
    def counter_kind(self) -> str | None:
        """'gaussian' or 'rademacher' when the numbers come from optim/counter.py, else None."""
        return None

    def group_draw(self, g: int, seed: int) -> torch.Tensor:
        """Group g's z for the query `seed`: one draw for all its (small) parameters, flat and fresh."""
        lay = self.layout
        first = self.params[lay.members[g][0]]
        out = torch.empty(lay.size[g], dtype=first.dtype, device=first.device)
        return pieces_.piece_(out, self.piece_kind, self.piece_base(lay.members[g][0], first, seed), 0)

    def pieces(self, i: int, p: torch.Tensor, seed: int,
               rows: torch.Tensor | None = None) -> Iterator[tuple[int, int, torch.Tensor]]:
        """z_i(seed) before sphere scaling, as (r0, r1, rows r0..r1) pieces in a reused buffer (`rows`: only
        the pieces holding these rows); a grouped parameter comes whole, cut from its group's draw."""
        g = self.layout.group_of[i]
        if g is not None:
            z = self.group_draw(g, seed)[self.layout.offset[i]:self.layout.offset[i] + p.numel()]
            yield 0, pieces_.rows_of(p.shape)[0], z.view(p.shape)
            return
        only = None
        if rows is not None:
            only = torch.unique(rows.reshape(-1) // pieces_.rows_per_piece(p.shape, p.device)).tolist()
        yield from pieces_.pieces(p.shape, p.dtype, p.device, self.piece_kind, self.piece_base(i, p, seed), only)

    def unscaled(self, i: int, p: torch.Tensor, seed: int) -> torch.Tensor:
        if self.layout.group_of[i] is not None:
            return next(self.pieces(i, p, seed))[2]
        return super().unscaled(i, p, seed)

    def shift(self, seed: int, scale: float) -> Shift:
        return PieceShift(self, seed, scale)

    @torch.no_grad()
    def add(self, seed: int, alpha: float, then: tuple[int, float] | None = None) -> None:
        """Group by group (one draw, one _foreach add) and piece by piece: nothing of a parameter's size. The
        groups and pieces are independent jobs, spread over torch's CPU threads (optim/noise.py `run`)."""
        terms = [(s, a * self.sphere_scale(s)) for s, a in [(seed, alpha)] + ([then] if then is not None else [])]
        lay = self.layout
        for i, p in enumerate(self.params):  # the pieces' seeds, from the method's one generator, before any job
            for s, _ in terms:
                self.piece_base(i, p, s)
        jobs: list[Callable[[], None]] = [partial(self._add_group, g, terms) for g in range(len(lay.members))]
        for i, p in enumerate(self.params):
            if lay.group_of[i] is not None:
                continue
            if not p.is_contiguous():
                jobs.append(partial(self._add_whole, i, terms))
                continue
            rows, width = pieces_.rows_of(p.shape)
            step = pieces_.rows_per_piece(p.shape, p.device)
            jobs += [partial(self._add_piece, i, k, k * step, min(rows, (k + 1) * step), width, terms)
                     for k in range(-(-rows // step))]
        pieces_.run(jobs, self.params[0].device if self.params else torch.device("cpu"))

    def _add_group(self, g: int, terms: Terms) -> None:
        ps = [self.params[j] for j in self.layout.members[g]]
        for s, a in terms:
            torch._foreach_add_(ps, self.layout.split(self.group_draw(g, s), g, self.params), alpha=a)

    def _add_whole(self, i: int, terms: Terms) -> None:
        for s, a in terms:
            self.params[i].add_(self.unscaled(i, self.params[i], s), alpha=a)

    def _add_piece(self, i: int, k: int, r0: int, r1: int, width: int, terms: Terms) -> None:
        """Rows r0..r1 of parameter i: piece k of each term's z, drawn into this thread's buffer and added."""
        p = self.params[i]
        target = p.view(-1)[r0 * width:r1 * width]
        z = pieces_.buffer(target.numel(), p.dtype, p.device)
        for s, a in terms:
            target.add_(pieces_.piece_(z, self.piece_kind, self.piece_base(i, p, s), k, r0 * width), alpha=a)


class CounterHash(TorchPieces):
    """`rng: counter`: number e of a tensor's z is a hash of (its seed, e), made, scaled and added in compiled
    loops (optim/counter.py). `pack` (the in-place engine): each group's members are moved into one buffer at
    their offsets in the group's draw, so a group is one loop of a pass, not one per tensor."""

    name = "counter"

    def __init__(self, params: list[torch.Tensor], kind: str, sphere: bool, seeded: Seeded, pack: bool) -> None:
        super().__init__(params, kind, sphere, seeded)
        self.pack = pack
        self._batched: counter.Batched | None = None  # the passes' calls, worked out once
        self._owners: list[int] = []  # for each tensor it adds: whose seed keys its numbers (its group's first)
        self._where: list[int] = []  # the parameters' memory when `_batched` was made (it holds that memory)
        self._strided: list[int] = []  # parameters `_batched` leaves out (not contiguous)

    @property
    def piece_kind(self) -> str:
        return self.kind + pieces_.COUNTER

    @property
    def counter_kind(self) -> str | None:
        return self.kind

    @torch.no_grad()
    def add(self, seed: int, alpha: float, then: tuple[int, float] | None = None) -> None:
        """A grouped tensor takes its numbers straight from its group's z (from its offset on), no group drawn."""
        terms = [(s, a * self.sphere_scale(s)) for s, a in [(seed, alpha)] + ([then] if then is not None else [])]
        lay = self.layout
        if self._batched is None or [p.data_ptr() for p in self.params] != self._where:  # new memory: made again
            flats, starts, self._owners, self._strided = [], [], [], []
            for i, p in enumerate(self.params):
                g = lay.group_of[i]
                if g is None and not p.is_contiguous():
                    self._strided.append(i)
                elif g is None or not self.pack:
                    flats.append(p.view(-1))
                    starts.append(0 if g is None else lay.offset[i])
                    self._owners.append(i if g is None else lay.members[g][0])
                elif lay.position[i] == 0:  # a group, once
                    flats.append(self._packed(g))
                    starts.append(0)
                    self._owners.append(i)
            self._where = [p.data_ptr() for p in self.params]
            self._batched = counter.Batched(flats, self.kind, starts)
        for i in self._strided:  # a strided tensor: its z made whole, then added
            for s, a in terms:
                self.params[i].add_(self.unscaled(i, self.params[i], s), alpha=a)
        bases = [[self.piece_base(j, self.params[j], s) for j in self._owners] for s, _ in terms]
        second = (bases[1], terms[1][1]) if len(terms) > 1 else ()
        self._batched.add(bases[0], terms[0][1], *second)

    def _packed(self, g: int) -> torch.Tensor:
        """Group g's buffer: its members' numbers at their offsets in the group's draw, each member's data a view
        of it (moved there unless they already are, as another method on the same parameters leaves them).
        Why: on a model of small tensors a pass costs per loop, not per number; the gaps the alignment leaves
        get numbers that nothing reads."""
        lay = self.layout
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


class TritonPhilox(Directions):
    """`rng: triton`: z made inside one GPU kernel per pass from philox (optim/fused.py), never in memory."""

    name = "triton"

    def __init__(self, params: list[torch.Tensor], kind: str, sphere: bool, seeded: Seeded) -> None:
        super().__init__(params, kind, sphere, seeded)
        if not fused_.available(params):
            raise UserError("method field 'rng': 'triton' needs every parameter on one CUDA device and Triton "
                            "installed; use rng: torch (or counter) on this machine")
        self.kernel = fused_.FusedPass()

    def unscaled(self, i: int, p: torch.Tensor, seed: int) -> torch.Tensor:
        z = torch.zeros_like(p)
        self.kernel([z], [i], self.kind, seed, 1.0)
        return z

    @torch.no_grad()
    def add(self, seed: int, alpha: float, then: tuple[int, float] | None = None) -> None:
        seed2, alpha2 = then if then is not None else (None, 0.0)
        self.kernel(self.params, list(range(len(self.params))), self.kind, seed, alpha * self.sphere_scale(seed),
                    seed2, alpha2 * (self.sphere_scale(seed2) if seed2 is not None else 1.0))


def build(params: list[torch.Tensor], direction: str, rng: str, seeded: Seeded, draw: Draw | None,
          pack: bool) -> Directions:
    """The generator a method asked for. `draw`: the method's own z (then `rng` only picks its noise's numbers)."""
    kind = "rademacher" if direction == "rademacher" else "gaussian"
    sphere = direction == "sphere"
    if draw is not None:
        return OwnDraw(params, kind, sphere, seeded, draw, kind + (pieces_.COUNTER if rng == "counter" else ""))
    if rng == "counter":
        return CounterHash(params, kind, sphere, seeded, pack)
    if rng == "triton":
        return TritonPhilox(params, kind, sphere, seeded)
    return TorchPieces(params, kind, sphere, seeded)


class PieceShift:
    """θ_i ↦ θ_i + scale·z_i(seed) made piece by piece (no z of θ's size); `blocks` gives it row block by
    row block, so the virtual engine can run a big matrix product or embedding lookup without θ + εz whole."""

    KEEP = 3  # groups' θ + εz kept at once: a layer reads its norms, attention and MLP out of order

    def __init__(self, directions: TorchPieces, seed: int, scale: float) -> None:
        self.directions, self.seed = directions, seed
        self.alpha = scale * directions.sphere_scale(seed)  # before any piece: the sphere pass reseeds
        self.kept: dict[int, dict[int, torch.Tensor]] = {}  # first member → {member: its θ + εz}, oldest first

    def members(self, i: int) -> dict[int, torch.Tensor]:
        """θ + αz for grouped parameter i and members of its group read with it: one copy of θ and one add for
        all (a fresh buffer each time, so a view an op kept of an earlier one stays valid). `rng: torch`: the
        whole group, from one draw. `rng: counter`: i and the members after it within a piece's worth of
        numbers, made in one compiled loop from the group's numbers at their offsets."""
        dirs = self.directions
        lay, params = dirs.layout, dirs.params
        g, kind = lay.group_of[i], dirs.counter_kind
        take = lay.members[g] if kind is None else lay.members[g][lay.position[i]:]
        lo, first = lay.offset[take[0]], _plain(params[take[0]])
        end = [lay.offset[j] + params[j].numel() - lo for j in take]
        if kind is not None:
            take = take[:max(1, sum(e <= pieces_.chunk(first.device) for e in end))]  # offsets grow: a prefix fits
        flat = first.new_zeros(end[len(take) - 1])  # gaps where a counter layout aligns members: read by nothing
        views = {j: flat[lay.offset[j] - lo:end[n]].view(params[j].shape) for n, j in enumerate(take)}
        for j, view in views.items():
            view.copy_(_plain(params[j]))
        if kind is None:
            flat.add_(dirs.group_draw(g, self.seed), alpha=self.alpha)
        else:
            counter.add_(flat, kind, lo, dirs.piece_base(lay.members[g][0], first, self.seed), self.alpha)
        return views

    def __call__(self, i: int, raw: torch.Tensor) -> torch.Tensor:
        dirs = self.directions
        if dirs.layout.group_of[i] is not None:  # θ + εz of its group's members at once, kept while others are read
            key = next((k for k, views in self.kept.items() if i in views), None)
            views = self.kept.pop(key) if key is not None else self.members(i)  # a hit moves to the end
            self.kept[next(iter(views))] = views
            if len(self.kept) > self.KEEP:
                del self.kept[next(iter(self.kept))]
            return views[i]
        out = torch.empty(raw.shape, dtype=raw.dtype, device=raw.device)
        src = raw.contiguous().view(-1)
        if dirs.counter_kind is not None:  # θ read once, θ + εz written once, in one compiled loop
            counter.shift_(out.view(-1), src, dirs.counter_kind, 0, dirs.piece_base(i, raw, self.seed), self.alpha)
            return out
        dst, (rows, width) = out.view(-1), pieces_.rows_of(raw.shape)
        step, base = pieces_.rows_per_piece(raw.shape, raw.device), dirs.piece_base(i, raw, self.seed)

        def piece(k: int) -> None:  # one of the pieces, on torch's CPU threads like a pass's (noise.run)
            lo, hi = k * step * width, min(rows, (k + 1) * step) * width
            z = pieces_.piece_(pieces_.buffer(hi - lo, raw.dtype, raw.device), dirs.piece_kind, base, k, lo)
            torch.add(src[lo:hi], z, alpha=self.alpha, out=dst[lo:hi])
        pieces_.run([partial(piece, k) for k in range(-(-rows // step))], raw.device)
        return out

    def blocks(self, i: int, raw: torch.Tensor,
               rows: torch.Tensor | None = None) -> Iterator[tuple[int, int, torch.Tensor]] | None:
        """(r0, r1, rows r0..r1 of θ_i + scale·z_i) for a matrix θ_i, only blocks holding `rows` if given;
        the block is reused, use it at once. None for a grouped parameter: it comes whole."""
        if self.directions.layout.group_of[i] is not None:
            return None
        return ((r0, r1, torch.add(raw[r0:r1], z, alpha=self.alpha, out=z))
                for r0, r1, z in self.directions.pieces(i, raw, self.seed, rows))


def _plain(t: torch.Tensor) -> torch.Tensor:
    """θ's own numbers, also while θ is swapped for its view."""
    with DisableTorchFunctionSubclass():
        return t.as_subclass(torch.Tensor) if type(t) is not torch.Tensor else t
