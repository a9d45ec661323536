"""θ ← θ + α·z in one GPU kernel over every parameter, z made inside the kernel (Triton, philox).

The in-place engine's passes are the whole cost of a ZO step beyond its two forwards. With torch ops a
pass draws z into memory and adds it (≈ 8 bytes moved per bf16 number, two launches per group of
tensors); here one launch covers all parameters, each number is read and written once and z never
exists in memory. z for (query seed, parameter index, element) comes from Triton's philox, so it is
the same in every pass of a step and on every run on the same device (it is not torch's normal_
stream: the CPU and the torch-op path draw other numbers). Used only when a run asks for
`rng: triton` (optim/directions.py, `TritonPhilox`), for the engine's own directions.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

BLOCK = 4096  # numbers per program: a tensor's blocks never straddle another tensor
_HIGH = 1 << 62  # every seed has this bit: Triton then always compiles the seed as a 64-bit integer


def available(params: list[torch.Tensor]) -> bool:
    """All parameters on one CUDA device, contiguous, and Triton importable."""
    if not params or any(p.device.type != "cuda" or not p.is_contiguous() or p.data_ptr() % 16 for p in params):
        return False  # the kernel assumes 16-byte aligned tensors (vector loads)
    if len({p.device for p in params}) != 1:
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _kernel() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def _z4(seed, t, counters, RADEMACHER: tl.constexpr):  # noqa: N803
        """Four directions per philox call (one call per counter): Box–Muller pairs, or one sign bit each."""
        key = seed ^ (t.to(tl.int64) * 0x2545F4914F6CDD1D)  # odd constant: parameter index → its own key
        if RADEMACHER:
            a, b, c, d = tl.randint4x(key, counters)
            return ((a & 1).to(tl.float32) * 2.0 - 1.0, (b & 1).to(tl.float32) * 2.0 - 1.0,
                    (c & 1).to(tl.float32) * 2.0 - 1.0, (d & 1).to(tl.float32) * 2.0 - 1.0)
        return tl.randn4x(key, counters)

    @triton.jit
    def _add(ptr, offs, size, d, e, TWO: tl.constexpr, DTYPE: tl.constexpr):  # noqa: N803
        """θ[offs] += d (then += e when TWO), in float32, stored back in θ's dtype."""
        mask = offs < size
        x = tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)
        x += d
        if TWO:
            x += e
        tl.store(ptr + offs, x.to(DTYPE), mask=mask)

    @triton.jit
    def add_z(ptrs, sizes, indices, block_tensor, block_start, seed, alpha, seed2, alpha2,
              TWO: tl.constexpr, RADEMACHER: tl.constexpr, DTYPE: tl.constexpr, BLOCK: tl.constexpr):  # noqa: N803
        pid = tl.program_id(0)
        t = tl.load(block_tensor + pid)
        start = tl.load(block_start + pid)
        size = tl.load(sizes + t)
        index = tl.load(indices + t)
        ptr = tl.multiple_of(tl.load(ptrs + t).to(tl.pointer_type(DTYPE)), 16)  # checked in `_table`: 16-byte
        quarter: tl.constexpr = BLOCK // 4
        lane = tl.max_contiguous(tl.multiple_of(tl.arange(0, quarter), quarter), quarter)
        counters = start // 4 + lane  # element start + k·quarter + lane takes the k-th number of this counter
        z0, z1, z2, z3 = _z4(seed, index, counters, RADEMACHER)
        y0, y1, y2, y3 = z0, z1, z2, z3  # read only when TWO
        if TWO:
            y0, y1, y2, y3 = _z4(seed2, index, counters, RADEMACHER)
        offs = start + lane  # the k-th number of each counter goes to offs + k·quarter
        _add(ptr, offs, size, alpha * z0, alpha2 * y0, TWO, DTYPE)
        _add(ptr, offs + quarter, size, alpha * z1, alpha2 * y1, TWO, DTYPE)
        _add(ptr, offs + 2 * quarter, size, alpha * z2, alpha2 * y2, TWO, DTYPE)
        _add(ptr, offs + 3 * quarter, size, alpha * z3, alpha2 * y3, TWO, DTYPE)

    return add_z


def _tl_dtype(dtype: torch.dtype) -> Any:
    import triton.language as tl

    return {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}[dtype]


class FusedPass:
    """One launch per dtype: the block table (which tensor, where in it) is made once per set of tensors."""

    def __init__(self) -> None:
        self._tables: dict[tuple, tuple[torch.Tensor, ...]] = {}
        self.ran = False  # a launch went through: z has come from the kernel since

    def _table(self, tensors: list[torch.Tensor], indices: list[int]) -> tuple[torch.Tensor, ...]:
        key = tuple((t.data_ptr(), t.numel()) for t in tensors) + tuple(indices)
        table = self._tables.get(key)
        if table is None:
            device = tensors[0].device
            sizes = torch.tensor([t.numel() for t in tensors], dtype=torch.int64)
            blocks = (sizes + BLOCK - 1) // BLOCK
            block_tensor = torch.repeat_interleave(torch.arange(len(tensors), dtype=torch.int32), blocks)
            first = torch.cumsum(blocks, 0) - blocks
            block_start = ((torch.arange(int(blocks.sum())) - first.repeat_interleave(blocks)) * BLOCK).to(torch.int32)
            table = tuple(x.to(device) for x in (
                torch.tensor([t.data_ptr() for t in tensors], dtype=torch.int64), sizes.to(torch.int32),
                torch.tensor(indices, dtype=torch.int32), block_tensor, block_start))
            if len(self._tables) > 8:
                self._tables.clear()
            self._tables[key] = table
        return table

    def __call__(self, tensors: list[torch.Tensor], indices: list[int], kind: str,
                 seed: int, alpha: float, seed2: int | None = None, alpha2: float = 0.0) -> None:
        """tensors[k] += alpha·z(seed, indices[k]) (+ alpha2·z(seed2, indices[k])), in place."""
        by_dtype: dict[torch.dtype, list[int]] = {}
        for k, t in enumerate(tensors):
            if t.numel():
                by_dtype.setdefault(t.dtype, []).append(k)
        kernel = _kernel()
        for dtype, ks in by_dtype.items():
            table = self._table([tensors[k] for k in ks], [indices[k] for k in ks])
            ptrs, sizes, idx, block_tensor, block_start = table
            kernel[(block_tensor.numel(),)](
                ptrs, sizes, idx, block_tensor, block_start, (seed % _HIGH) | _HIGH, float(alpha),
                ((seed2 or 0) % _HIGH) | _HIGH, float(alpha2), TWO=seed2 is not None,
                RADEMACHER=kind == "rademacher", DTYPE=_tl_dtype(dtype), BLOCK=BLOCK)
        self.ran = True
