"""Counter-based directions (`rng: counter`): number e of a tensor's z is a hash of (the tensor's seed, e).

Why: torch's CPU generator is a sequential Mersenne twister, one core whatever the thread count, and a
step draws z three times. A hash of the element's position has no state: torch.compile turns it
(splitmix64's finaliser, then Box–Muller on 24 + 24 of its bits) into one loop on every core, and any
element can be made alone (no pieces needed for
correctness, only for memory). Rademacher signs come 64 to a hash: number e is −1 where bit e mod 64 of
the hash of block e div 64 is set; the block's words are made first (1/32 of the numbers' bytes), then
one loop reads them, so a pass over θ costs little more than the add itself. The in-place engine's passes
go eight tensors to a compiled call (`Batched`): a model's hundreds of tensors would otherwise pay a
call's fixed cost each. The numbers are float32
whatever θ's dtype (a float64 θ gets float32 directions; a bf16 θ gets the float32 step, rounded).
Without a compiler the same torch ops run eagerly: the same numbers (Gaussian to an ulp of log and
cos), slower.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Callable

import torch
from torch.fx.experimental import _config as fx_config

_GOLDEN = -0x61C8864680B583EB  # 0x9E3779B97F4A7C15 as a signed 64-bit number: spreads counters apart
_M1 = -0x40A7B892E31B1A47  # 0xBF58476D1CE4E5B9 (splitmix64's finaliser constants)
_M2 = -0x6B2FB644ECCEEE15  # 0x94D049BB133111EB
_BITS24 = (1 << 24) - 1


def _mix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 (wrapping multiplies; masks make the right shifts logical)."""
    x = x ^ ((x >> 30) & ((1 << 34) - 1))
    x = x * _M1
    x = x ^ ((x >> 27) & ((1 << 37) - 1))
    x = x * _M2
    return x ^ ((x >> 31) & ((1 << 33) - 1))


def _gaussian(out: torch.Tensor, key: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """Gaussian numbers (float32, flat) of the z keyed `key` at out's positions from `start`: Box–Muller on
    24 + 24 bits of each position's hash."""
    position = torch.arange(out.numel(), device=out.device, dtype=torch.int64) + start
    x = _mix(position * _GOLDEN + key)
    u1 = ((x >> 40) & _BITS24).to(torch.float32).add(0.5) * (1.0 / (1 << 24))  # in (0, 1): log is finite
    u2 = (x & _BITS24).to(torch.float32) * (1.0 / (1 << 24))
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2 * math.pi) * u2)


def _bits(words: torch.Tensor) -> torch.Tensor:
    """The bits [m, 64] (int32 0/1) of m hash words, bit j of word i at [i, j]. The words are split into int32
    halves (low first), so the shifts stay 32-bit; by conversion, not by viewing the bytes as int32 (a view
    is an op of its own between compiled loops)."""
    shifts = torch.arange(32, dtype=torch.int32, device=words.device)
    halves = torch.stack((words.to(torch.int32), (words >> 32).to(torch.int32)), dim=-1)
    return ((halves.view(-1, 2, 1) >> shifts) & 1).view(-1, 64)


def _signs(words: torch.Tensor) -> torch.Tensor:
    """Rademacher numbers [m, 64] (float32 ±1) from m hash words: number j of block i is −1 where bit j of
    word i is set."""
    return torch.where(_bits(words) == 1, -1.0, 1.0)


# what a job does with its numbers z (and z₂): the same for both kinds, made inside each compiled loop
def _fill(out: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return out.copy_(z.view(out.shape))


def _step_into(theta: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """θ ← θ + step (float32), added at θ's precision or float32's, whichever is wider, and rounded once into
    θ: what a compiled loop does whether or not it is told to round the step first, so eager ops (no
    compiler) give the same bf16 θ."""
    wide = torch.promote_types(theta.dtype, torch.float32)
    return theta.copy_(theta.to(wide) + step.view(theta.shape))


def _add(theta: torch.Tensor, z: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """θ += α·z: the numbers are made, scaled and added in one loop, nothing of θ's size is kept."""
    return _step_into(theta, alpha * z)


def _add2(theta: torch.Tensor, z: torch.Tensor, alpha: torch.Tensor, z2: torch.Tensor,
          beta: torch.Tensor) -> torch.Tensor:
    """θ += α·z + β·z₂ in one loop."""
    return _step_into(theta, alpha * z + beta * z2)


def _shift(out: torch.Tensor, theta: torch.Tensor, z: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """out = θ + α·z in one loop (the virtual engine's θ + εz: θ read once, nothing else written)."""
    return out.copy_((theta.to(torch.float32) + alpha * z).view(out.shape))


# one function (one code object, so its own compiled graphs and recompile budget) per job. Gaussian jobs hash
# every position; Rademacher jobs read hash words made by `_words` (64 signs each) over blocks of 64 numbers
def _fill_gaussian(out: torch.Tensor, key: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    return _fill(out, _gaussian(out, key, start))


def _add_gaussian(theta: torch.Tensor, start: torch.Tensor, key: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    return _add(theta, _gaussian(theta, key, start), alpha)


def _add2_gaussian(theta: torch.Tensor, start: torch.Tensor, key: torch.Tensor, alpha: torch.Tensor,
                   key2: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    return _add2(theta, _gaussian(theta, key, start), alpha, _gaussian(theta, key2, start), beta)


def _shift_gaussian(out: torch.Tensor, theta: torch.Tensor, start: torch.Tensor, key: torch.Tensor,
                    alpha: torch.Tensor) -> torch.Tensor:
    return _shift(out, theta, _gaussian(out, key, start), alpha)


def _words(out: torch.Tensor, key: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """out (int64) = the hash words of blocks first, first + 1, … (64 Rademacher numbers each)."""
    block = torch.arange(out.numel(), device=out.device, dtype=torch.int64) + first
    return out.copy_(_mix(block * _GOLDEN + key))


def _fill_rademacher(out: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    return _fill(out, _signs(words))


def _add_rademacher(theta: torch.Tensor, words: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    return _add(theta, _signs(words), alpha)


def _add2_rademacher(theta: torch.Tensor, words: torch.Tensor, alpha: torch.Tensor, words2: torch.Tensor,
                     beta: torch.Tensor) -> torch.Tensor:
    return _add2(theta, _signs(words), alpha, _signs(words2), beta)


def _shift_rademacher(out: torch.Tensor, theta: torch.Tensor, words: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    return _shift(out, theta, _signs(words), alpha)


# many tensors per compiled call (`Batched`): each tensor seen as rows of 64 numbers; keys[i] = (tensor i's first
# block, Rademacher, or first number, Gaussian; its key; the second direction's key)
def _scaled_rows(kind: str, t: torch.Tensor, first: torch.Tensor, key: torch.Tensor,
                 alpha: torch.Tensor) -> torch.Tensor:
    """α·z for t's rows of 64; a Rademacher number picks +α or −α (the same float as α·(±1), one op less)."""
    if kind == "gaussian":
        return alpha * _gaussian(t, key, first).view(t.shape)
    block = torch.arange(t.shape[0], device=t.device, dtype=torch.int64) + first
    return torch.where(_bits(_mix(block * _GOLDEN + key)) == 1, -alpha, alpha)


def _add_many(kind: str, thetas: list[torch.Tensor], keys: torch.Tensor, alpha: torch.Tensor,
              beta: torch.Tensor | None) -> list[torch.Tensor]:
    for i, t in enumerate(thetas):
        z = _scaled_rows(kind, t, keys[i, 0], keys[i, 1], alpha)
        if beta is not None:
            z = z + _scaled_rows(kind, t, keys[i, 0], keys[i, 2], beta)
        _step_into(t, z)
    return thetas


def _many_add_rademacher(thetas: list[torch.Tensor], keys: torch.Tensor, alpha: torch.Tensor) -> list[torch.Tensor]:
    return _add_many("rademacher", thetas, keys, alpha, None)


def _many_add2_rademacher(thetas: list[torch.Tensor], keys: torch.Tensor, alpha: torch.Tensor,
                          beta: torch.Tensor) -> list[torch.Tensor]:
    return _add_many("rademacher", thetas, keys, alpha, beta)


def _many_add_gaussian(thetas: list[torch.Tensor], keys: torch.Tensor, alpha: torch.Tensor) -> list[torch.Tensor]:
    return _add_many("gaussian", thetas, keys, alpha, None)


def _many_add2_gaussian(thetas: list[torch.Tensor], keys: torch.Tensor, alpha: torch.Tensor,
                        beta: torch.Tensor) -> list[torch.Tensor]:
    return _add_many("gaussian", thetas, keys, alpha, beta)


_EAGER: dict[str, Callable[..., torch.Tensor]] = {
    "many-add-rademacher": _many_add_rademacher, "many-add2-rademacher": _many_add2_rademacher,
    "many-add-gaussian": _many_add_gaussian, "many-add2-gaussian": _many_add2_gaussian,
    "fill-gaussian": _fill_gaussian, "add-gaussian": _add_gaussian, "add2-gaussian": _add2_gaussian,
    "shift-gaussian": _shift_gaussian, "words": _words, "fill-rademacher": _fill_rademacher,
    "add-rademacher": _add_rademacher, "add2-rademacher": _add2_rademacher, "shift-rademacher": _shift_rademacher}
_COMPILED: dict[tuple[str, str], Callable[..., torch.Tensor]] = {}
_EAGER_ONLY: set[str] = set()  # device types where compiling failed once
_BATCH = 8  # tensors per call of a `many-` job: one graph serves every batch (a short one is padded)


@functools.lru_cache(maxsize=1 << 14)  # a pass asks for every tensor's key, twice a step for the same seeds
def key_of(base: int) -> int:
    """A tensor's hash key from its seed: `_mix` in Python integers, so nearby seeds give unrelated streams."""
    x, mask = base % 2**64, 2**64 - 1
    x ^= x >> 30
    x = (x * (_M1 % 2**64)) & mask
    x ^= x >> 27
    x = (x * (_M2 % 2**64)) & mask
    x ^= x >> 31
    return x - 2**64 if x >= 2**63 else x


def fill_(out: torch.Tensor, kind: str, base: int, start: int = 0) -> torch.Tensor:
    """out (contiguous) = numbers start, start+1, … of the z seeded by `base`: 'rademacher' or 'gaussian'."""
    if kind == "rademacher":
        return _by_blocks("fill", [out.view(-1)], start, [base], [])
    return _run("fill-gaussian", out, _scalar(key_of(base), out), _scalar(start, out))


def add_(theta: torch.Tensor, kind: str, start: int, base: int, alpha: float,
         base2: int | None = None, beta: float = 0.0) -> torch.Tensor:
    """θ (contiguous) += α·z (+ β·z₂), z's numbers from `start` on (a tensor packed in a group starts at its
    offset in the group's draw), in one pass over θ: the in-place engine's perturbations and updates."""
    if kind == "rademacher":
        bases, scales = ([base], [alpha]) if base2 is None else ([base, base2], [alpha, beta])
        _by_blocks("add" if base2 is None else "add2", [theta.view(-1)], start, bases, scales)
        return theta
    args = [theta, _scalar(start, theta), _scalar(key_of(base), theta), _scalar(alpha, theta, torch.float32)]
    if base2 is None:
        return _run("add-gaussian", *args)
    return _run("add2-gaussian", *args, _scalar(key_of(base2), theta), _scalar(beta, theta, torch.float32))


def shift_(out: torch.Tensor, theta: torch.Tensor, kind: str, start: int, base: int, alpha: float) -> torch.Tensor:
    """out = θ + α·z (both contiguous, θ's numbers from `start` of the z seeded by `base`), in one pass."""
    if kind == "rademacher":
        return _by_blocks("shift", [out.view(-1), theta.view(-1)], start, [base], [alpha])
    return _run("shift-gaussian", out, theta, _scalar(start, out), _scalar(key_of(base), out),
                _scalar(alpha, out, torch.float32))


class Batched:
    """θ_i += α·z_i (+ β·z₂_i) for many contiguous tensors θ_i, z_i's numbers from starts[i] of the z seeded
    bases[i] (bases2[i]): the numbers `add_` makes tensor by tensor, made _BATCH tensors to a compiled call.
    Why: a compiled call has a fixed cost before it does anything, and a model has a hundred tensors or more
    (benchmarks/README.md has the figures). Which tensor goes in which call is worked out
    once (a method keeps this for its run). A tensor that does not fill whole rows of 64 (its size, or a
    Rademacher start, not a multiple of 64; or a single row) goes alone through `add_`."""

    def __init__(self, thetas: list[torch.Tensor], kind: str, starts: list[int]) -> None:
        # the tensors' memory, not the tensors: a view would keep a parameter's use count up, and the virtual
        # engine swaps parameters for views only when nothing else holds them
        self.kind, self.starts = kind, starts
        self.alone: dict[int, torch.Tensor] = {}  # tensor index → its numbers, flat (added through `add_`)
        by_type: dict[tuple[torch.dtype, torch.device], list[int]] = {}
        for i, t in reversed(list(enumerate(thetas))):
            if t.numel() % 64 == 0 and t.numel() >= 128 and (kind == "gaussian" or starts[i] % 64 == 0):
                by_type.setdefault((t.dtype, t.device), []).append(i)
            else:
                self.alone[i] = _rows(t, 1).view(-1)
        self.batches: list[tuple[list[int], list[torch.Tensor]]] = []  # (members, their rows and the padding)
        for (dtype, device), members in by_type.items():
            for lo in range(0, len(members), _BATCH):
                part = members[lo:lo + _BATCH]
                pads = [torch.zeros(2, 64, dtype=dtype, device=device) for _ in range(_BATCH - len(part))]
                self.batches.append((part, [_rows(thetas[i], 64) for i in part] + pads))

    def add(self, bases: list[int], alpha: float, bases2: list[int] | None = None, beta: float = 0.0) -> None:
        for i, flat in self.alone.items():
            second = None if bases2 is None else bases2[i]
            add_(flat, self.kind, self.starts[i], bases[i], alpha, second, beta)
        job = f"many-{'add' if bases2 is None else 'add2'}-{self.kind}"
        first = [s // 64 for s in self.starts] if self.kind == "rademacher" else self.starts
        keys2 = [0] * len(bases) if bases2 is None else [key_of(b) for b in bases2]
        with _unducked():
            for part, rows in self.batches:
                keys = [[first[i], key_of(bases[i]), keys2[i]] for i in part] + [[0, 0, 0]] * (_BATCH - len(part))
                scales = [alpha] if bases2 is None else [alpha, beta]
                _run(job, rows, torch.tensor(keys, dtype=torch.int64, device=rows[0].device),
                     *(_scalar(a, rows[0], torch.float32) for a in scales))


def _rows(t: torch.Tensor, width: int) -> torch.Tensor:
    """t's numbers (t contiguous) as rows of `width`, a tensor of its own on t's memory: a view would make a
    compiled call guard on the shape of the view's base (a new graph per base shape)."""
    return torch.empty(0, dtype=t.dtype, device=t.device).set_(
        t.untyped_storage(), t.storage_offset(), (t.numel() // width, width), (width, 1))


def _by_blocks(job: str, flats: list[torch.Tensor], start: int, bases: list[int], scales: list[float]) -> torch.Tensor:
    """A Rademacher job on numbers start … start + n of `flats` (the tensors it writes and reads): the whole
    blocks of 64 in one compiled loop over their words; a part block at either end (a stretch that does not
    start or end on a block) by the same job, eagerly, on a copy padded to its whole block. Returns flats[0]."""
    n, device = flats[0].numel(), flats[0].device
    head = min(n, -start % 64)
    body = (n - head) // 64 * 64

    def args(first: int, count: int) -> list[torch.Tensor]:  # each direction's words, then its scale
        words = [_words_of(base, first, count, device) for base in bases]
        return words if job == "fill" else [
            x for w, a in zip(words, scales, strict=True) for x in (w, _scalar(a, flats[0], torch.float32))]

    for lo, hi in ((0, head), (head + body, n)):  # each end lies within one block
        if hi > lo:
            block, offset = divmod(start + lo, 64)
            pads = [f.new_zeros(64) for f in flats]
            for pad, f in zip(pads, flats, strict=True):
                pad[offset:offset + hi - lo] = f[lo:hi]
            _EAGER[f"{job}-rademacher"](*(pad.view(1, 64) for pad in pads), *args(block, 1))
            flats[0][lo:hi] = pads[0][offset:offset + hi - lo]
    if body:
        blocks = [f[head:head + body].view(-1, 64) for f in flats]
        _run(f"{job}-rademacher", *blocks, *args((start + head) // 64, body // 64))
    return flats[0]


def _words_of(base: int, first: int, count: int, device: torch.device) -> torch.Tensor:
    out = torch.empty(count, dtype=torch.int64, device=device)
    return _run("words", out, _scalar(key_of(base), out), _scalar(first, out))


def _scalar(x: float, like: torch.Tensor, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """A number as a 0-d tensor: a new key, start or scale changes no compiled graph (a Python number would)."""
    return torch.tensor(x, dtype=dtype, device=like.device)


def _unducked() -> contextlib.AbstractContextManager:
    """Every size its own symbol while tracing: two tensors of a call whose sizes happen to be equal (duck
    sizing) would otherwise get a guard that they stay equal, and a new graph when they are not."""
    return contextlib.nullcontext() if not fx_config.use_duck_shape else fx_config.patch(use_duck_shape=False)


def _run(job: str, *args: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """The compiled job (one graph for every size), else the same torch ops eagerly, said once."""
    device = (args[0][0] if isinstance(args[0], list) else args[0]).device.type
    if device in _EAGER_ONLY:
        return _EAGER[job](*args)
    fn = _COMPILED.get((job, device))
    if fn is None:
        # a `many-` graph's loops are sized by whichever tensors it was traced with: told to leave the thread
        # count to run time, a loop traced small still runs on every core when a big tensor comes
        options = {"cpp.dynamic_threads": True} if job.startswith("many") else None
        fn = _COMPILED[(job, device)] = torch.compile(_EAGER[job], dynamic=True, options=options)
    try:
        with _unducked():
            return fn(*args)
    except Exception as e:  # noqa: BLE001  no compiler here: eager ops give the same numbers, slower
        warnings.warn(f"rng: counter could not compile ({type(e).__name__}: {e}); drawing eagerly "
                      "(same numbers, slower)", stacklevel=3)
        _EAGER_ONLY.add(device)
        return _EAGER[job](*args)
