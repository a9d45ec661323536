"""Show the forward pass θ + εz without writing θ + εz into the parameters.

MeZO perturbs in place: θ ← θ + εz, θ ← θ − 2εz, θ ← θ + εz. In floating point that does not give θ
back: on float32 weights of size ~0.02 with ε|z| ~ 1e-3, about half the entries come back one ulp
off, every step (in bf16 the drift is larger than a typical update). No in-place additive scheme
can fix this without storing something: rounding θ + εz onto a coarser float grid loses the low
bits of θ, so the map θ ↦ fl(θ + εz) is not invertible.

Here θ is never written during the forward passes. Each trainable parameter is swapped (with
`torch.utils.swap_tensors`, so every module that holds it sees the change) for a tensor subclass
sharing θ's storage, whose `__torch_function__` hands each op the value `shift(θ)` — e.g.
θ + εz(seed, i) regenerated on the spot — and frees it after the op. Peak extra memory is a few
pieces or groups (at most 2^18 numbers each on CPU, 2^24 on a GPU; MeZO materialises z per
parameter), nothing of the model's size is kept, and when the forward is done θ is bit-for-bit
what it was. The only write to θ is the method's own update. A shift may also offer `blocks` (rows of
θ + εz a block at a time, optim/directions.py's `PieceShift`): then big matrix products and embedding
lookups run block by block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch._C import DisableTorchFunctionSubclass
from torch.utils import swap_tensors
from torch.utils._pytree import tree_leaves, tree_map

Shift = Callable[[int, torch.Tensor], torch.Tensor]  # (parameter index, θ_i as a plain tensor) → value seen

# Metadata that needs no perturbed value (reading it must not regenerate z).
_PASSTHROUGH = {
    torch.Tensor.dim, torch.Tensor.size, torch.Tensor.numel, torch.Tensor.stride, torch.Tensor.is_contiguous,
    torch.Tensor.data_ptr, torch.Tensor.element_size, torch.Tensor.__len__,
    torch.Tensor.shape.__get__, torch.Tensor.dtype.__get__, torch.Tensor.device.__get__,  # type: ignore[attr-defined]
    torch.Tensor.ndim.__get__, torch.Tensor.requires_grad.__get__, torch.Tensor.is_cuda.__get__,  # type: ignore[attr-defined]
    torch.Tensor.layout.__get__,  # type: ignore[attr-defined]
}


class Control:
    """What the swapped-in views show right now: `shift` (None: θ itself). One object for all views, so
    moving from θ + εz to θ − εz (or to θ) is one assignment, not one per parameter."""

    def __init__(self, shift: Shift | None = None) -> None:
        self.shift = shift


class _Shifted(torch.Tensor):
    """θ's storage, seen by torch ops as `shift(θ)` (computed per op, never stored)."""

    _zb_index: int
    _zb_control: Control

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN206
        kwargs = kwargs or {}
        shift = None if func in _PASSTHROUGH else _first(args, kwargs)
        if shift is not None and func in _BLOCKWISE and len(args) >= 2 and type(args[1]) is _Shifted:
            blocks = getattr(shift, "blocks", None)
            w = args[1]
            with DisableTorchFunctionSubclass():
                if blocks is not None and w.dim() == 2 and w.numel() >= BLOCKWISE_MIN:
                    done = _BLOCKWISE[func](shift, *args, **kwargs)
                    if done is not None:
                        return done

        def value(t: object) -> object:
            if type(t) is not _Shifted:
                if isinstance(t, (list, tuple, dict)):
                    return tree_map(value, t)
                return t
            with DisableTorchFunctionSubclass():
                raw = t.as_subclass(torch.Tensor)
                return raw if shift is None else shift(t._zb_index, raw)

        args = tuple(value(a) for a in args)
        if kwargs:
            kwargs = {k: value(v) for k, v in kwargs.items()}
        with DisableTorchFunctionSubclass():
            return func(*args, **kwargs)


def _first(args: tuple, kwargs: dict) -> Shift | None:
    """The current shift of the first view among the op's arguments (all views share one Control)."""
    for t in (*args, *kwargs.values()):
        if type(t) is _Shifted:
            return t._zb_control.shift
    for t in tree_leaves((args, kwargs)):  # nested deeper than the usual op's arguments
        if type(t) is _Shifted:
            return t._zb_control.shift
    return None


BLOCKWISE_MIN = 1 << 21  # a weight this large is never materialised whole as θ + εz (8 MiB of float32)


def _raw(t: _Shifted) -> torch.Tensor:
    return t.as_subclass(torch.Tensor)


def _linear(shift: Shift, x: object, weight: _Shifted, bias: object = None) -> torch.Tensor | None:
    """x·(θ + εz)ᵀ (+ b) one block of output features at a time: a block of θ + εz, never all of it."""
    if not isinstance(x, torch.Tensor) or isinstance(x, _Shifted):
        return None
    raw = _raw(weight)
    out = x.new_empty((*x.shape[:-1], raw.shape[0]))
    blocks = shift.blocks(weight._zb_index, raw)  # type: ignore[attr-defined]
    if blocks is None:
        return None
    for r0, r1, block in blocks:
        out[..., r0:r1] = torch.nn.functional.linear(x, block)
    if bias is not None:
        out += shift(bias._zb_index, _raw(bias)) if type(bias) is _Shifted else bias
    return out


def _embedding(shift: Shift, ids: object, weight: _Shifted, padding_idx: int | None = None,
               max_norm: float | None = None, *rest: object, **options: object) -> torch.Tensor | None:
    """Rows of θ + εz for the looked-up ids: θ's rows, plus εz's rows block by block (z never whole)."""
    if max_norm is not None or not isinstance(ids, torch.Tensor) or isinstance(ids, _Shifted):
        return None
    raw = _raw(weight)
    flat_ids = ids.reshape(-1)
    blocks = shift.blocks(weight._zb_index, raw, flat_ids)  # type: ignore[attr-defined]
    if blocks is None:
        return None
    out = torch.nn.functional.embedding(ids, raw)
    flat_out = out.view(-1, raw.shape[1])
    for r0, r1, block in blocks:  # rows r0..r1 of θ + εz, only blocks with ids
        hit = ((flat_ids >= r0) & (flat_ids < r1)).nonzero().squeeze(-1)
        if hit.numel():
            flat_out[hit] = block[flat_ids[hit] - r0]
    return out


_BLOCKWISE = {torch.nn.functional.linear: _linear, torch.nn.functional.embedding: _embedding}


@contextmanager
def swapped(params: Sequence[torch.Tensor], control: Control) -> Iterator[Control]:
    """Within the block every op that reads params[i] sees control.shift(i, θ_i) (θ_i when shift is None);
    θ itself is untouched. Swapping costs a few µs per parameter: keep one block around several forwards."""
    views: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        for i, p in enumerate(params):
            view = p.detach().as_subclass(_Shifted)
            view._zb_index, view._zb_control = i, control
            swap_tensors(p, view)
            views.append((p, view))
        yield control
    finally:
        for p, view in reversed(views):
            swap_tensors(p, view)


@contextmanager
def shifted(params: Sequence[torch.Tensor], shift: Shift | None) -> Iterator[None]:
    """One forward's worth of `swapped`: every op that reads params[i] sees shift(i, θ_i)."""
    if shift is None:
        yield
        return
    with swapped(params, Control(shift)):
        yield
