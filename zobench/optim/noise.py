"""Directions drawn piece by piece: Gaussian in cache-sized pieces, Rademacher from random bits.

A parameter's z is cut into row-aligned pieces of about `CHUNK` numbers; piece k is drawn from a
generator seeded by (base, k), where the base comes from the caller's generator (itself seeded by
step seed and parameter index). So any piece can be made alone and always comes out the same: the
whole tensor (`fill`), the stream of pieces (`pieces`) and a few pieces (an embedding lookup needs
only the rows it reads) agree bit for bit. Why pieces: the temporary is a fraction of the largest
tensor, a piece is still in cache when it is added to θ, a big matrix product can be done block by
block without materialising θ + εz, and rows nobody reads are never drawn.

Rademacher ±1 comes from random 64-bit words: each byte indexes a 256 × 8 table of signs, so one
generator call yields 64 directions and the table lookup is the only pass over the output. On CPU
this is ~3× faster than torch.randn, which runs Box–Muller on every number.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import torch

from zobench.optim import counter

COUNTER = "+counter"  # a kind's suffix: its numbers come from optim/counter.py, not a torch.Generator
CHUNK = 1 << 18  # numbers per piece on CPU: 1 MiB of float32, stays in cache while it is added to θ
CUDA_CHUNK = 1 << 24  # on a GPU a piece costs kernel launches, not cache: 32 MiB of bf16, still a fraction
# `rng: counter` groups hold up to this many numbers (or a piece's, if more): no group is drawn into a buffer by
# the in-place engine (its members share one, optim/zo.py), so a group costs one loop of a pass whatever its
# size, and fewer, bigger groups are fewer loops; the virtual engine makes θ + εz a piece's worth of members at a time
COUNTER_GROUP = 1 << 21
_MIX = 0xD1B54A32D192ED03  # odd constant: spreads (base, piece) pairs over the seed space
_TABLES: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}
_LOCAL = threading.local()  # each thread's generators (reseeded before every piece: no state survives) and buffer
_POOL: tuple[int, ThreadPoolExecutor] | None = None  # (threads, the pool of that size)


def rows_of(shape: torch.Size) -> tuple[int, int]:
    """(rows, numbers per row): the first dimension is the row, a vector is rows of one number."""
    if len(shape) < 2:
        return math.prod(shape), 1
    return shape[0], math.prod(shape[1:])


def chunk(device: torch.device) -> int:
    """Numbers per piece on this device (the pieces, hence z, depend on it: same device, same numbers)."""
    return CUDA_CHUNK if device.type == "cuda" else CHUNK


def rows_per_piece(shape: torch.Size, device: torch.device = torch.device("cpu")) -> int:
    return max(1, chunk(device) // max(rows_of(shape)[1], 1))


def base_of(gen: torch.Generator) -> int:
    """The seed of a tensor's pieces, drawn from the caller's generator (two calls, two directions)."""
    return int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device).item())


def _signs(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    key = (dtype, device)
    if key not in _TABLES:
        bits = torch.arange(256).unsqueeze(-1).bitwise_right_shift(torch.arange(8)).bitwise_and(1)
        _TABLES[key] = (bits * 2 - 1).to(device=device, dtype=dtype)
    return _TABLES[key]


def rademacher_(out: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Fill a contiguous tensor with independent ±1 from random bits (64 per generator draw)."""
    n = out.numel()
    if out.device.type != "cpu":  # a GPU makes random bits and writes them at memory speed: no table needed
        return out.random_(0, 2, generator=gen).mul_(2).sub_(1)
    words = torch.randint(-(2**63), 2**63 - 1, ((n + 63) // 64,), generator=gen, device=out.device,
                          dtype=torch.int64)
    index = words.view(torch.uint8)[: (n + 7) // 8].int()
    table = _signs(out.dtype, out.device)
    if n % 8 == 0:
        torch.index_select(table, 0, index, out=out.view(-1, 8))
    else:
        out.view(-1).copy_(table.index_select(0, index).view(-1)[:n])
    return out


def piece_(out: torch.Tensor, kind: str, base: int, k: int, start: int = 0) -> torch.Tensor:
    """Piece k of the tensor seeded by `base`: 'rademacher' ±1, else standard Gaussian. A kind ending in
    '+counter' is made by optim/counter.py's hash of each number's position (`start`: the piece's first)."""
    if kind.endswith(COUNTER):
        return counter.fill_(out, kind.removesuffix(COUNTER), base, start)
    gens = _LOCAL.__dict__.setdefault("generators", {})
    gen = gens.get(out.device)
    if gen is None:
        gen = gens[out.device] = torch.Generator(device=out.device)
    gen.manual_seed((base + (k + 1) * _MIX) % (2**63))
    if kind == "rademacher":
        return rademacher_(out, gen)
    return out.normal_(generator=gen)


def pieces(shape: torch.Size, dtype: torch.dtype, device: torch.device, kind: str, base: int,
           only: Iterable[int] | None = None) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(r0, r1, z's rows r0..r1) piece by piece (`only`: these piece indices), a vector's as a flat
    slice. One buffer is reused: use each piece before asking for the next."""
    rows, width = rows_of(shape)
    step = rows_per_piece(shape, device)
    count = -(-rows // step)
    buffer = torch.empty(min(rows, step) * width, dtype=dtype, device=device)
    for k in range(count) if only is None else sorted(set(only)):
        r0, r1 = k * step, min(rows, (k + 1) * step)
        z = piece_(buffer[:(r1 - r0) * width], kind, base, k, r0 * width)
        yield r0, r1, z.view(r1 - r0, *shape[1:]) if len(shape) >= 2 else z


def buffer(numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """This thread's scratch tensor of at least `numel` numbers (one per thread, dtype and device)."""
    key = (dtype, device)
    kept = _LOCAL.__dict__.setdefault("buffers", {})
    if key not in kept or kept[key].numel() < numel:
        with torch.inference_mode(False):  # a normal tensor: written in place both inside and outside inference mode
            kept[key] = torch.empty(numel, dtype=dtype, device=device)
    return kept[key][:numel]


def run(jobs: list[Callable[[], None]], device: torch.device) -> None:
    """Do independent jobs (pieces of a pass: disjoint parts of θ, each with its own seeds) on torch's CPU threads.
    Why: torch's CPU generator is sequential (one core draws ~300 M Gaussians/s whatever the thread count), so a
    pass of a ZO step is bound by one core while the forwards use all of them. Every piece is seeded by its own
    (base, index), so which thread draws it does not change a number. On a GPU the jobs just queue kernels."""
    global _POOL
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads < 2 or len(jobs) < 2:
        for job in jobs:
            job()
        return
    if _POOL is None or _POOL[0] != threads:
        _POOL = threads, ThreadPoolExecutor(max_workers=threads, thread_name_prefix="zobench-draw")
    modes = torch.is_inference_mode_enabled(), torch.is_grad_enabled()  # thread-local: the caller's, for its jobs
    for future in [_POOL[1].submit(_in_modes, job, *modes) for job in jobs]:
        future.result()


def _in_modes(job: Callable[[], None], inference: bool, grad: bool) -> None:
    with torch.inference_mode(inference), torch.set_grad_enabled(grad):
        job()


def fill(shape: torch.Size, dtype: torch.dtype, device: torch.device, kind: str, base: int) -> torch.Tensor:
    """The whole z: the same pieces as `pieces`, drawn straight into place."""
    out = torch.empty(shape, dtype=dtype, device=device)
    flat, (rows, width), step = out.view(-1), rows_of(shape), rows_per_piece(shape, device)
    for k, r0 in enumerate(range(0, rows, step)):
        piece_(flat[r0 * width:min(rows, r0 + step) * width], kind, base, k, r0 * width)
    return out


class Layout:
    """Which draws make z: a tensor larger than a piece is cut into pieces (above); smaller ones are packed,
    in order, into groups of at most one piece's worth that share one draw. Why: a draw, an add and a
    Python call per small tensor (norms, biases, a GPU model's every layer) cost more than the numbers
    in them; a group is one draw and one add however many tensors it holds. A group's draw is seeded like
    its first tensor's piece 0, so a tensor alone in its group gets exactly its own piece. `counter` (the
    layout of `rng: counter`): every member starts at a multiple of 64 in the draw (on a whole hash word, so
    it can be made alone, in rows of 64, without its group), and groups hold up to COUNTER_GROUP numbers."""

    def __init__(self, params: list[torch.Tensor], counter: bool = False) -> None:
        align = 64 if counter else 1
        self.group_of: list[int | None] = []  # parameter → its group (None: drawn in its own pieces)
        self.offset: list[int] = []  # parameter → where its numbers start in its group's draw
        self.position: list[int] = []  # parameter → its place among its group's members
        self.members: list[list[int]] = []  # group → its parameters, in order
        self.size: list[int] = []  # group → numbers in its draw
        for i, p in enumerate(params):
            limit = max(chunk(p.device), COUNTER_GROUP) if counter else chunk(p.device)
            if p.numel() > limit or not p.is_contiguous():
                self.group_of.append(None)
                self.offset.append(0)
                self.position.append(0)
                continue
            last = self.members[-1][-1] if self.members else None  # groups hold neighbours only
            at = -(-self.size[-1] // align) * align if self.members else 0
            fits = (last == i - 1 and params[last].dtype == p.dtype and params[last].device == p.device
                    and at + p.numel() <= limit)
            if not fits:
                self.members.append([])
                self.size.append(0)
                at = 0
            self.group_of.append(len(self.members) - 1)
            self.offset.append(at)
            self.position.append(len(self.members[-1]))
            self.members[-1].append(i)
            self.size[-1] = at + p.numel()

    def split(self, flat: torch.Tensor, g: int, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """The group's flat numbers cut into its parameters' shapes (views)."""
        return [flat[self.offset[j]:self.offset[j] + params[j].numel()].view(params[j].shape) for j in self.members[g]]
