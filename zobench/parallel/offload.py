"""ZO2-style offload: parameters live in a slower tier and cross into working memory one block at a time.

ZO2 (Wang et al. 2025, arXiv 2503.12668; liangyuwang/zo2) trains OPT-175B on one 18 GB GPU: each
transformer block is uploaded, and in one visit (zo2/optimizer/mezo_sgd/zo2.py:115-143,
`module_dual_forward`) the previous step's update is applied to it, then θ+εz runs the block on the "+"
activations and θ−εz on the "−" activations, and the block is sent back
(zo2/model/nanogpt/mezo_sgd/zo2.py:68-95: upload block i while block i−1 computes, offload block i−2):
so a block crosses the bus once each way per step and the update costs no pass of its own.

Here the same schedule runs over any tier with `load`/`store`; `SafetensorsTier` is the CPU-only one:
the weights sit in a safetensors file, memory-mapped tensor by tensor when a block is loaded or stored, so
the process holds about one block (its working copy, and the mapped pages while it is copied) plus the
activations. The directions, seeds and update are the method's own (optim/directions.py, `ZOMethod`'s
seed stream), and every element sees the same operations in the same order as under the in-place engine
(optim/engines.py `InplaceEngine`: pending update, then +εz; −2εz; the last restore folded into the next
update), so the trajectory is the resident model's.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch.func import functional_call

from zobench import registry
from zobench.errors import UserError
from zobench.optim.zo import ZOMethod

# bf16 and fp8 travel as their bits (numpy has neither type)
_NUMPY = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F8_E4M3": np.uint8}
_TORCH = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "F8_E4M3": torch.float8_e4m3fn}
_BITS = {torch.bfloat16: torch.uint16, torch.float8_e4m3fn: torch.uint8}


def nbytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class SafetensorsTier:
    """Blocks of named tensors in one safetensors file, read and written in place through memory maps."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))  # the format: u64 header length, JSON header, raw data
            header = json.loads(f.read(n))
        self.start = 8 + n
        meta = header.pop("__metadata__", {})
        self.names: list[list[str]] = json.loads(meta["blocks"])  # block → its parameters' names, in order
        self.entries = {k: (v["dtype"], tuple(v["shape"]), v["data_offsets"][0]) for k, v in header.items()}
        self.loads = self.stores = 0  # block visits, for the once-per-step check
        kinds = {v[0] for v in self.entries.values()}
        self.dtype = _TORCH[kinds.pop()] if len(kinds) == 1 else None  # what crosses: the stored precision

    @classmethod
    def create(cls, path: str | Path, blocks: Sequence[torch.nn.Module],
               dtype: torch.dtype | None = None) -> SafetensorsTier:
        """Write the blocks' parameters (key 'block.name'), in `dtype` when given (ZO2's AMP: the slow tier
        keeps a low-precision copy), and return the tier over them."""
        names = [[n for n, _ in b.named_parameters()] for b in blocks]
        tensors = {f"{i}.{n}": p.detach().to(dtype or p.dtype).contiguous()
                   for i, b in enumerate(blocks) for n, p in b.named_parameters()}
        save_file(tensors, str(path), metadata={"blocks": json.dumps(names)})
        return cls(path)

    def _map(self, key: str, mode: str) -> np.memmap:
        dtype, shape, offset = self.entries[key]
        return np.memmap(self.path, dtype=_NUMPY[dtype], mode=mode, offset=self.start + offset, shape=shape)

    def load(self, b: int) -> dict[str, torch.Tensor]:
        """Block b's tensors copied into working memory (the upload)."""
        self.loads += 1
        out = {}
        for name in self.names[b]:
            key = f"{b}.{name}"
            mapped = self._map(key, "r")
            out[name] = torch.from_numpy(np.array(mapped)).view(_TORCH[self.entries[key][0]])
            del mapped  # unmapped now: its pages leave this process
        return out

    def store(self, b: int, tensors: dict[str, torch.Tensor]) -> None:
        """Write block b back in place (the offload)."""
        self.stores += 1
        for name, t in tensors.items():
            key = f"{b}.{name}"
            mapped = self._map(key, "r+")
            src = t.detach().contiguous()
            mapped[...] = (src.view(_BITS[src.dtype]) if src.dtype in _BITS else src).numpy()
            mapped.flush()
            del mapped


class HostTier:
    """Blocks of named tensors in host memory (pinned where a GPU is, so uploads can be asynchronous): ZO2's
    own setting, parameters in CPU memory and computed on the GPU. `load` hands out the host tensors; the
    scheduler copies them to its device and `store` copies the result back in place."""

    def __init__(self, blocks: Iterable[torch.nn.Module], dtype: torch.dtype | None = None) -> None:
        """`blocks` is read once, in order (a generator may build each block only when it is copied); kept in
        `dtype` when given (ZO2's AMP mode)."""
        pin = torch.cuda.is_available()
        self.dtype = dtype
        self.names: list[list[str]] = []
        self.data: list[dict[str, torch.Tensor]] = []
        for b in blocks:
            self.names.append([n for n, _ in b.named_parameters()])
            host = {}
            for n, p in b.named_parameters():
                t = torch.empty(p.shape, dtype=dtype or p.dtype, pin_memory=pin)
                t.copy_(p.detach())
                host[n] = t
            self.data.append(host)
        self.loads = self.stores = 0

    def load(self, b: int) -> dict[str, torch.Tensor]:
        self.loads += 1
        return dict(self.data[b])

    def store(self, b: int, tensors: dict[str, torch.Tensor]) -> None:
        self.stores += 1
        for n, t in tensors.items():
            if t.data_ptr() != self.data[b][n].data_ptr():
                self.data[b][n].copy_(t)


class ParamSpec:
    """What a direction generator reads of a parameter (shape, dtype, device), without its numbers: the
    method's directions are laid out over the whole model while only one block is in memory."""

    requires_grad = True

    def __init__(self, t: torch.Tensor, device: torch.device) -> None:
        self.shape, self.dtype, self.device = t.shape, t.dtype, device

    def numel(self) -> int:
        return self.shape.numel()

    def dim(self) -> int:
        return len(self.shape)

    def is_contiguous(self) -> bool:
        return True


class CudaStreams:
    """A side stream for uploads and events to order them (ZO2 zo2/optimizer/mezo_sgd/zo2.py:57-59 makes upload,
    offload and compute streams; 188-210 `task_upload` runs the copy on the upload stream and 253 makes compute
    wait for it). Here compute stays on the current stream and only uploads move to the side one."""

    def __init__(self, device: torch.device) -> None:
        self.stream = torch.cuda.Stream(device=device)

    def side(self) -> Any:
        return torch.cuda.stream(self.stream)

    def record(self) -> Any:
        return self.stream.record_event()

    def wait(self, event: Any, tensors: Iterable[torch.Tensor]) -> None:
        current = torch.cuda.current_stream(self.stream.device)
        current.wait_event(event)
        for t in tensors:  # made on the side stream, used and freed on this one
            t.record_stream(current)


class Uploader:
    """Blocks between the tier and the working device: up-cast to the working precision after the upload and
    down-cast before the offload (ZO2's AMP: zo2/optimizer/mezo_sgd/zo2.py:480-481 decompresses after
    `upload_impl`, 512-513 compresses before `offload_impl`; the update is applied at working precision and
    rounded once, when the block goes back). With `streams` (CUDA, or a test's fake), block b+1's upload is
    issued on the side stream before block b computes, and block b+1's compute waits on its event; without,
    the same calls run in order. `bytes_moved` counts what crossed at the tier's precision."""

    def __init__(self, tier: Any, device: torch.device, work_dtype: torch.dtype, streams: Any = None) -> None:
        self.tier, self.device, self.work_dtype = tier, device, work_dtype
        self.streams = streams if streams is not None else (CudaStreams(device) if device.type == "cuda" else None)
        self.tier_dtype = getattr(tier, "dtype", None) or work_dtype
        self._ahead: dict[int, tuple[dict[str, torch.Tensor], Any]] = {}
        self.bytes_moved = 0

    def _fetch(self, b: int) -> dict[str, torch.Tensor]:
        host = self.tier.load(b)
        self.bytes_moved += nbytes(host.values())
        return {n: t.to(self.device, non_blocking=True).to(self.work_dtype) for n, t in host.items()}

    def get(self, b: int, prefetch: int | None = None) -> dict[str, torch.Tensor]:
        """Block b at working precision on the device; with `prefetch`, that block's upload starts on the side."""
        if b in self._ahead:
            tensors, event = self._ahead.pop(b)
            self.streams.wait(event, tensors.values())
        else:
            self._ahead.clear()  # a schedule that changed order (an interrupted forward): nothing stale is used
            tensors = self._fetch(b)
        if prefetch is not None and self.streams is not None:
            with self.streams.side():
                ahead = self._fetch(prefetch)
                self._ahead[prefetch] = (ahead, self.streams.record())
        return tensors

    def put(self, b: int, tensors: dict[str, torch.Tensor]) -> None:
        """Block b back to the tier, rounded to its precision on the device (so half the bytes cross)."""
        low = {n: t.to(self.tier_dtype).to("cpu") for n, t in tensors.items()}
        self.bytes_moved += nbytes(low.values())
        self.tier.store(b, low)


class OffloadZO:
    """ZO-SGD over `blocks` (applied in order; the first takes the inputs) whose parameters live in `tier`;
    `objective(output, batch)` is the loss. The block modules hold no numbers of their own (meta tensors):
    each visit runs them with the tier's tensors (torch.func.functional_call) on `device`, where z is made too.
    On CUDA the next block's upload overlaps this block's compute (`Uploader`, `CudaStreams`); elsewhere the
    same calls run in order."""

    def __init__(self, blocks: Sequence[torch.nn.Module], objective: Callable[[torch.Tensor, Any], torch.Tensor],
                 tier: SafetensorsTier | HostTier, method: str, params: dict[str, Any], seed: int,
                 device: torch.device | str = "cpu", streams: Any = None) -> None:
        self.device = torch.device(device)
        work = next(p for b in blocks for p in b.parameters()).dtype
        self.blocks = [b.to("meta") for b in blocks]
        self.objective, self.tier = objective, tier
        specs = [[ParamSpec(p, self.device) for _, p in b.named_parameters()] for b in self.blocks]
        self.index: list[list[int]] = []  # block → its parameters' places in the model's parameter list
        for s in specs:
            first = sum(len(x) for x in self.index)
            self.index.append(list(range(first, first + len(s))))
        cls = registry.methods.get(method)
        if not issubclass(cls, ZOMethod):
            raise UserError(f"offload: '{method}' is not a zeroth-order method; offload runs ZO-SGD's schedule")
        hp = cls.Params.model_validate({**params, "engine": "virtual"})
        self.method: ZOMethod = cls([p for s in specs for p in s], hp, seed)  # type: ignore[arg-type]
        m = self.method
        if not m.folds or m.hp.one_sided or m.needs_base or m.own_queries or m.reads_theta:
            raise UserError(f"offload: '{method}' has an update or queries of its own; the offload schedule folds "
                            "plain SGD on Σ g·z into the next load (use zo-sgd, two-sided, without per-tensor decay)")
        self._pending: tuple[float, list[tuple[int, float]]] | None = None  # (decay factor, (seed, α) terms)
        self.uploader = Uploader(tier, self.device, work, streams)

    @torch.no_grad()
    def _add(self, ps: list[torch.Tensor], idx: list[int], seed: int, alpha: float) -> None:
        dirs = self.method.directions
        a = alpha * dirs.sphere_scale(seed)
        for i, p in zip(idx, ps, strict=True):
            p.add_(dirs.unscaled(i, p, seed), alpha=a)

    def _fold(self, ps: list[torch.Tensor], idx: list[int]) -> None:
        fold_update(self._pending, ps, idx, self._add)

    @torch.inference_mode()
    def step(self, inputs: torch.Tensor, batch: Any) -> float:
        """One ZO-SGD step; returns the mean of the step's two-point losses (as `ZOMethod.step`)."""
        m, eps = self.method, self.method.hp.eps
        m.t += 1
        m.directions.new_step(keep={s for s, _ in self._pending[1]} if self._pending else set())
        seeds = [int(s) for s in m._rng.integers(0, 2**62, size=m.hp.q)]  # the method's stream: zo.py `probe`
        plus, minus = [inputs] * len(seeds), [inputs] * len(seeds)
        for b, block in enumerate(self.blocks):
            tensors = self.uploader.get(b, prefetch=b + 1 if b + 1 < len(self.blocks) else None)
            ps, idx = list(tensors.values()), self.index[b]
            self._fold(ps, idx)
            for j, seed in enumerate(seeds):
                self._add(ps, idx, seed, eps)
                plus[j] = functional_call(block, tensors, (plus[j],))
                self._add(ps, idx, seed, -2 * eps)
                minus[j] = functional_call(block, tensors, (minus[j],))
                if j < len(seeds) - 1:  # the last restore waits for the update (engines.py `InplaceEngine`)
                    self._add(ps, idx, seed, eps)
            self.uploader.put(b, tensors)
            del tensors, ps
        lp = [float(self.objective(h, batch)) for h in plus]
        lm = [float(self.objective(h, batch)) for h in minus]
        grads = [(a - b) / (2 * eps) for a, b in zip(lp, lm, strict=True)]
        m.forward_passes += 2 * len(seeds)
        q, lr = len(seeds), m.hp.lr
        keep = 1 - lr * m.hp.weight_decay
        self._pending = (keep, [(s, (keep * eps if j == q - 1 else 0.0) - lr * g / q)
                                for j, (s, g) in enumerate(zip(seeds, grads, strict=True))])
        return float(np.mean([(a + b) / 2 for a, b in zip(lp, lm, strict=True)]))

    @torch.no_grad()
    def settle(self) -> None:
        """Apply the held update (one pass over the tier), so the tier holds the trained θ."""
        if self._pending is None:
            return
        for b in range(len(self.blocks)):
            tensors = self.uploader.get(b)
            self._fold(list(tensors.values()), self.index[b])
            self.uploader.put(b, tensors)
        self._pending = None

    def state(self) -> dict[str, torch.Tensor]:
        """The whole model's θ, keyed like `nn.Sequential(*blocks)` (tests and checkpoints; settles first)."""
        self.settle()
        return {f"{b}.{n}": t for b in range(len(self.blocks)) for n, t in self.tier.load(b).items()}


@torch.no_grad()
def fold_update(pending: tuple[float, list[tuple[int, float]]] | None, ps: list[torch.Tensor], idx: list[int],
                add: Callable[[list[torch.Tensor], list[int], int, float], None]) -> None:
    """The previous step's update (decay factor, (seed, α) terms) on a block as it arrives (ZO2's `zo_update`
    inside the dual forward)."""
    if pending is None:
        return
    keep, terms = pending
    if keep != 1.0:
        torch._foreach_mul_(ps, keep)
    for seed, alpha in terms:
        add(ps, idx, seed, alpha)
