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

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN206
        kwargs = kwargs or {}
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
            swap_tensors(p, view)
            views.append((p, view))
        yield
    finally:
        for p, view in reversed(views):
            swap_tensors(p, view)
