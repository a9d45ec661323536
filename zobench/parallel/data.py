"""Data-parallel zeroth-order training over torch.distributed (gloo on CPU, NCCL on GPU).

A ZO step needs from its workers only scalars, never a gradient: two ways to use that.

- `mode="shard"`: every worker holds the whole model and the same method seed, so every worker draws the
  same step seeds; each evaluates θ ± εz on its shard of the batch and the shard losses are all-reduced,
  weighted by shard size, so every worker sees the full batch's mean loss, computes the same g and applies
  the same update. The trajectory is the one-process run's on the full batch, up to summation order.
- `mode="queries"`: the step's q queries are split across the workers; each evaluates its own queries on
  the whole batch and the (seed, g, loss) triples are all-gathered, so N workers make the q = N estimate of
  one process with the same seeds. This is the shape of the `mezo` package's `distributed_mezo_update`
  (PyPI mezo 0.0.1, mezo/distributed.py:32-66: a seed per rank from a shared base, one `all_gather` of the
  projected gradients, every rank applying the average of the N updates), with the seeds gathered too so a
  disagreement between workers' generators is caught instead of silently training different models.

`CommMeter` counts the bytes handed to collectives (per worker, the payload, not the wire's ring traffic),
so `comm_bytes_per_step` can be set against first-order DDP's gradient all-reduce, measured the same way
by `ddp_bytes_per_step` through a DDP communication hook.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.distributed as dist

from zobench.errors import UserError
from zobench.optim.base import LossFn
from zobench.optim.zo import ZOMethod
from zobench.workload import Workload

Mode = Literal["shard", "queries"]


class CommMeter:
    """Bytes this worker hands to collectives; `per_step` divides by the steps the caller counted."""

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        self.group = group
        self.bytes = 0
        self.calls = 0

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        self.bytes += t.numel() * t.element_size()
        self.calls += 1
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        return t

    def all_gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        self.bytes += t.numel() * t.element_size()
        self.calls += 1
        out = [torch.empty_like(t) for _ in range(dist.get_world_size(self.group))]
        dist.all_gather(out, t, group=self.group)
        return out


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous share of n items; shares differ by at most one (np.array_split)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


@dataclasses.dataclass
class Shard:
    """A worker's part of a batch, and how many examples the whole batch has (the mean's denominator)."""

    batch: Any
    size: int
    total: int


class DataParallelZO:
    """Data-parallel ZO for one process of a torch.distributed group (see the module docstring)."""

    def __init__(self, mode: Mode, group: dist.ProcessGroup | None = None) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise UserError("parallel: data needs torch.distributed initialised (launch with torchrun "
                            "--nproc-per-node N, or call torch.distributed.init_process_group first)")
        if mode not in ("shard", "queries"):
            raise UserError(f"parallel mode '{mode}' is unknown; use 'shard' or 'queries'")
        self.mode, self.group = mode, group
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        self.meter = CommMeter(group)
        self.step_bytes, self.steps = 0, 0  # bytes handed to collectives inside `method.step`, and its calls

    # -- mode "shard": a worker's part of every batch, losses reduced to the full batch's mean ---------
    def local(self, indices: list[int]) -> list[int]:
        """The example indices this worker evaluates ('queries': all of them)."""
        if self.mode == "queries":
            return list(indices)
        start, stop = shard_bounds(len(indices), self.rank, self.world)
        return list(indices[start:stop])

    def reduced(self, local_loss: LossFn, size: int, total: int) -> LossFn:
        """The full batch's mean loss from this worker's shard mean: Σ_r n_r·mean_r / n, in float64.
        A worker with an empty shard contributes 0 without running a forward."""
        if self.mode == "queries":
            return local_loss

        def loss() -> torch.Tensor:
            part = float(local_loss()) * size if size else 0.0
            buf = self.meter.all_reduce(torch.tensor([part], dtype=torch.float64))
            return buf[0] / total

        return loss

    def workload(self, workload: Workload) -> Workload:
        """The same workload whose batches are this worker's shards and whose loss is the full batch's mean.
        Exact where the loss is a mean over examples (zobench's tasks and problems); a loss averaged over
        tokens of different lengths would be weighted by examples instead. Evaluation is left whole (every
        worker scores dev/test the same; rank 0's record is kept)."""
        if self.mode == "queries":
            return workload

        def make_batch(indices: list[int]) -> Shard:
            if not indices:  # a deterministic objective (train_size 0): every worker evaluates all of it
                return Shard(workload.make_batch(indices), 0, 0)
            mine = self.local(indices)
            return Shard(workload.make_batch(mine) if mine else None, len(mine), len(indices))

        def loss(shard: Shard) -> torch.Tensor:
            if shard.total == 0:
                return workload.loss(shard.batch)
            return self.reduced(lambda: workload.loss(shard.batch), shard.size, shard.total)()

        return dataclasses.replace(workload, make_batch=make_batch, loss=loss)

    # -- mode "queries": the step's queries split across workers, (seed, g, loss) all-gathered ---------
    def attach(self, method: ZOMethod) -> ZOMethod:
        """Make `method` a worker of this group: in 'queries' mode its engine measures only this worker's
        queries and gathers the others' ('shard' mode changes only the loss); its steps' bytes are counted."""
        if not isinstance(method, ZOMethod):
            raise UserError(f"parallel: data runs zeroth-order methods; '{type(method).__name__}' is first-order "
                            "(its data-parallel baseline is torch DDP, `ddp_bytes_per_step`)")
        if self.mode == "queries":
            if method.own_queries:
                raise UserError(f"parallel mode 'queries': '{type(method).__name__}' makes its own queries; "
                                "use mode: shard")
            if method.hp.q % self.world:
                raise UserError(f"parallel mode 'queries' splits the step's q queries over {self.world} workers: "
                                f"q = {method.hp.q} is not a multiple; set the method's q to {self.world}")
            method.engine = _SplitQueries(method.engine, self)
        step = method.step

        def counted(loss_fn: LossFn) -> float:  # bytes of training steps only (not probes or evaluations)
            before = self.meter.bytes
            try:
                return step(loss_fn)
            finally:
                self.step_bytes += self.meter.bytes - before
                self.steps += 1

        method.step = counted
        return method

    def comm_bytes_per_step(self) -> float:
        """Bytes this worker handed to collectives per training step of the attached method."""
        return self.step_bytes / max(self.steps, 1)

    def gather_triples(self, seeds: list[int], grads: list[float],
                       losses: list[float]) -> list[tuple[int, float, float]]:
        """Every worker's (seed, g, loss), rank order; floats travel as their float64 bits in int64."""
        packed = [v for s, g, loss in zip(seeds, grads, losses, strict=True) for v in (s, _bits(g), _bits(loss))]
        parts = self.meter.all_gather(torch.tensor(packed, dtype=torch.int64))
        out = []
        for part in parts:
            vals = part.tolist()
            out.extend((vals[k], _float(vals[k + 1]), _float(vals[k + 2])) for k in range(0, len(vals), 3))
        return out


def _bits(x: float) -> int:
    return struct.unpack("<q", struct.pack("<d", x))[0]


def _float(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<q", bits))[0]


class _SplitQueries:
    """An engine that measures only this worker's share of the step's seeds (rank r: seeds r·k..(r+1)·k−1)
    and returns everyone's, gathered; all else is the wrapped engine's."""

    def __init__(self, engine: Any, dp: DataParallelZO) -> None:
        self._engine, self._dp = engine, dp

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def measure(self, method: Any, loss_fn: LossFn, seeds: list[int],
                with_base: bool) -> tuple[list[float], list[float], float | None]:
        k = len(seeds) // self._dp.world
        mine = seeds[self._dp.rank * k:(self._dp.rank + 1) * k]
        grads, losses, base = self._engine.measure(method, loss_fn, mine, with_base)
        triples = self._dp.gather_triples(mine, grads, losses)
        if [s for s, _, _ in triples] != seeds:
            raise RuntimeError("data-parallel workers drew different step seeds: every worker must build the "
                               "method with the same seed")
        return [g for _, g, _ in triples], [loss for _, _, loss in triples], base


def ddp_bytes_per_step(model: torch.nn.Module, loss: Callable[[torch.nn.Module], torch.Tensor],
                       steps: int = 1, lr: float = 1e-3) -> float:
    """Bytes one worker hands to gradient all-reduces per first-order step under torch's
    DistributedDataParallel (SGD), counted by a communication hook around DDP's default all-reduce."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from torch.nn.parallel import DistributedDataParallel

    ddp = DistributedDataParallel(model)
    sent = [0]

    def counting(state, bucket):  # no annotations: DDP checks them, and this module's are strings
        buf = bucket.buffer()
        sent[0] += buf.numel() * buf.element_size()
        return allreduce_hook(state, bucket)

    ddp.register_comm_hook(None, counting)
    opt = torch.optim.SGD(ddp.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss(ddp).backward()
        opt.step()
    return sent[0] / steps


def parameter_bytes(params: list[torch.Tensor]) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def ring_bytes(payload: float, world: int) -> float:
    """Bytes a worker sends in a ring all-reduce of `payload` bytes: 2(N−1)/N × payload (→ 2× for large N)."""
    return 2 * (world - 1) / world * payload




def join(workers: int, mode: Mode, workload: Workload, method: Any) -> tuple[Workload, Any, DataParallelZO]:
    """The runner's hook for a run with `parallel: {data: N}`: this process is one of the N workers."""
    if not dist.is_available() or not dist.is_initialized():
        raise UserError(f"parallel: {{data: {workers}}} runs as {workers} torch.distributed processes; launch the "
                        f"suite with `torchrun --nproc-per-node {workers} -m zobench.parallel.launch SUITE` "
                        "(or remove `parallel` to run in one process)")
    if dist.get_world_size() != workers:
        raise UserError(f"parallel: {{data: {workers}}} but {dist.get_world_size()} processes were launched; "
                        f"start torchrun with --nproc-per-node {workers}")
    dp = DataParallelZO(mode)
    return dp.workload(workload), dp.attach(method), dp
