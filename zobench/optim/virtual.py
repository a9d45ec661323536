"""Show the forward pass θ + εz without writing θ + εz into the parameters.

MeZO perturbs in place: θ ← θ + εz, θ ← θ − 2εz, θ ← θ + εz. In floating point that does not give θ
back: on float32 weights of size ~0.02 with ε|z| ~ 1e-3, about half the entries come back one ulp
off, every step (in bf16 the drift is larger than a typical update). No in-place additive scheme
can fix this without storing something: rounding θ + εz onto a coarser float grid loses the low
bits of θ, so the map θ ↦ fl(θ + εz) is not invertible.

Here θ is never written during the forward passes. Each trainable parameter is swapped (with
`torch.utils.swap_tensors`, so every module that holds it sees the change) for a tensor subclass
sharing θ's storage, whose `__torch_function__` hands each op the value `shift(θ)` — e.g.
θ + εz(seed, i) regenerated on the spot — and frees it after the op. Peak extra memory is one
parameter's worth at a time (as in MeZO, which also materialises z per parameter), nothing of the
model's size is kept, and when the forward is done θ is bit-for-bit what it was. The only write
to θ is the method's own update.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch._C import DisableTorchFunctionSubclass
from torch.utils import swap_tensors
from torch.utils._pytree import tree_map

Shift = Callable[[int, torch.Tensor], torch.Tensor]  # (parameter index, θ_i as a plain tensor) → value seen

# Metadata that needs no perturbed value (reading it must not regenerate z).
_PASSTHROUGH = {
    torch.Tensor.dim, torch.Tensor.size, torch.Tensor.numel, torch.Tensor.stride, torch.Tensor.is_contiguous,
    torch.Tensor.data_ptr, torch.Tensor.element_size, torch.Tensor.__len__,
    torch.Tensor.shape.__get__, torch.Tensor.dtype.__get__, torch.Tensor.device.__get__,  # type: ignore[attr-defined]
    torch.Tensor.ndim.__get__, torch.Tensor.requires_grad.__get__, torch.Tensor.is_cuda.__get__,  # type: ignore[attr-defined]
    torch.Tensor.layout.__get__,  # type: ignore[attr-defined]
}


class _Shifted(torch.Tensor):
    """θ's storage, seen by torch ops as `shift(θ)` (computed per op, never stored)."""

    _zb_shift: Callable[[torch.Tensor], torch.Tensor]
    _zb_blocks: Callable[..., Iterator[tuple[int, int, torch.Tensor]]] | None  # (raw, rows=None)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN206
        kwargs = kwargs or {}
        if func in _BLOCKWISE and len(args) >= 2 and isinstance(args[1], _Shifted):
            with DisableTorchFunctionSubclass():
                w = args[1]
                if w._zb_blocks is not None and w.dim() == 2 and w.numel() >= BLOCKWISE_MIN:
                    done = _BLOCKWISE[func](*args, **kwargs)
                    if done is not None:
                        return done
        shifted = func not in _PASSTHROUGH

        def value(t: object) -> object:
            if not isinstance(t, _Shifted):
                return t
            with DisableTorchFunctionSubclass():
                raw = t.as_subclass(torch.Tensor)
            return t._zb_shift(raw) if shifted else raw

        args, kwargs = tree_map(value, (args, kwargs))
        with DisableTorchFunctionSubclass():
            return func(*args, **kwargs)


BLOCKWISE_MIN = 1 << 21  # a weight this large is never materialised whole as θ + εz (8 MiB of float32)


def _raw(t: _Shifted) -> torch.Tensor:
    return t.as_subclass(torch.Tensor)


def _linear(x: object, weight: _Shifted, bias: object = None) -> torch.Tensor | None:
    """x·(θ + εz)ᵀ (+ b) one block of output features at a time: a block of θ + εz, never all of it."""
    if not isinstance(x, torch.Tensor) or isinstance(x, _Shifted):
        return None
    raw = _raw(weight)
    out = x.new_empty((*x.shape[:-1], raw.shape[0]))
    for r0, r1, block in weight._zb_blocks(raw):
        out[..., r0:r1] = torch.nn.functional.linear(x, block)
    if bias is not None:
        out += bias._zb_shift(_raw(bias)) if isinstance(bias, _Shifted) else bias
    return out


def _embedding(ids: object, weight: _Shifted, padding_idx: int | None = None, max_norm: float | None = None,
               *rest: object, **options: object) -> torch.Tensor | None:
    """Rows of θ + εz for the looked-up ids: θ's rows, plus εz's rows block by block (z never whole)."""
    if max_norm is not None or not isinstance(ids, torch.Tensor) or isinstance(ids, _Shifted):
        return None
    raw = _raw(weight)
    out = torch.nn.functional.embedding(ids, raw)
    flat_ids, flat_out = ids.reshape(-1), out.view(-1, raw.shape[1])
    for r0, r1, block in weight._zb_blocks(raw, flat_ids):  # rows r0..r1 of θ + εz, only blocks with ids
        hit = ((flat_ids >= r0) & (flat_ids < r1)).nonzero().squeeze(-1)
        if hit.numel():
            flat_out[hit] = block[flat_ids[hit] - r0]
    return out


_BLOCKWISE = {torch.nn.functional.linear: _linear, torch.nn.functional.embedding: _embedding}


@contextmanager
def shifted(params: Sequence[torch.Tensor], shift: Shift | None) -> Iterator[None]:
    """Within the block every op that reads params[i] sees shift(i, θ_i); θ itself is untouched."""
    if shift is None:
        yield
        return
    views: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        for i, p in enumerate(params):
            view = p.detach().as_subclass(_Shifted)
            view._zb_shift = (lambda raw, i=i: shift(i, raw))
            blocks = getattr(shift, "blocks", None)
            view._zb_blocks = None if blocks is None else (lambda raw, rows=None, i=i, b=blocks: b(i, raw, rows))
            swap_tensors(p, view)
            views.append((p, view))
        yield
    finally:
        for p, view in reversed(views):
            swap_tensors(p, view)
