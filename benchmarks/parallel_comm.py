"""Data-parallel ZO on a real model shape: 2 gloo processes against 1, and bytes per step against FO-DDP.

    python benchmarks/parallel_comm.py [--steps 5] [--batch 8] [--seq 32]

The tiny OPT of `zobench bench` (benchmarks/targets.py; random init, float32), a causal-LM loss on random
tokens (every sequence the same length, so the token mean is the mean of the examples' means and shards
weight exactly). ZO-SGD, engine inplace, shard mode (zobench/parallel/data.py) against one process on the
full batch; the FO baseline is torch DDP with SGD on the same model and batch, its bytes counted by a
communication hook. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from zobench import registry
from zobench.bench import TINY_OPT
from zobench.parallel.data import DataParallelZO, ddp_bytes_per_step, parameter_bytes, ring_bytes
from zobench.workload import Workload

LossOf = Callable[[torch.nn.Module, list[int]], torch.Tensor]


def build(batch: int, seq: int) -> tuple[torch.nn.Module, Workload, LossOf]:
    from zobench.models.hf import TinyModel

    torch.manual_seed(0)
    model = TinyModel.load({"config": TINY_OPT}, torch.device("cpu"), 0).model.eval().requires_grad_(True)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(1))

    def loss_of(module: torch.nn.Module, idx: list[int]) -> torch.Tensor:
        logits = module(input_ids=ids[idx]).logits[:, :-1]
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[idx][:, 1:].reshape(-1))

    wl = Workload(module=model, train_size=batch, loss=lambda idx: loss_of(model, idx),
                  make_batch=lambda idx: list(idx), evaluate=lambda split: {}, metric="loss")
    return model, wl, loss_of


def train(args: argparse.Namespace, dp: DataParallelZO | None) -> tuple[list[torch.Tensor], list[float]]:
    model, wl, _ = build(args.batch, args.seq)
    cls = registry.methods.get("zo-sgd")
    method = cls(list(model.parameters()), cls.Params.model_validate({"lr": 1e-3, "eps": 1e-3, "engine": "inplace"}),
                 0)
    if dp is not None:
        wl, method = dp.workload(wl), dp.attach(method)
    traj, losses = [], []
    for _ in range(args.steps):
        batch = wl.make_batch(list(range(args.batch)))
        with torch.no_grad():
            losses.append(method.step(lambda b=batch: wl.loss(b)))
        method.settle()
        traj.append(torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()]))
    return traj, losses


def worker(rank: int, world: int, init: str, out: str, args: argparse.Namespace) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        dp = DataParallelZO("shard")
        traj, losses = train(args, dp)
        model, _, loss_of = build(args.batch, args.seq)
        mine = dp.local(list(range(args.batch)))
        ddp = ddp_bytes_per_step(model, lambda m: loss_of(m, mine), steps=1)
        torch.save({"traj": traj, "losses": losses, "zo": dp.comm_bytes_per_step(), "ddp": ddp,
                    "param_bytes": parameter_bytes(list(model.parameters()))}, os.path.join(out, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(1)
    ref, ref_losses = train(args, None)
    world = 2
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(worker, args=(world, "file://" + os.path.join(tmp, "rdv"), tmp, args), nprocs=world, join=True)
        res = [torch.load(os.path.join(tmp, f"{r}.pt")) for r in range(world)]
    diffs = [max(float((a - b).abs().max()) for a, b in zip(r["traj"], ref, strict=True)) for r in res]
    start = torch.cat([p.detach().reshape(-1) for p in build(args.batch, args.seq)[0].parameters()])
    print(json.dumps({
        "model": "tiny-opt (zobench bench)", "params": int(ref[0].numel()), "world": world, "steps": args.steps,
        "batch": args.batch, "seq": args.seq,
        "max_abs_diff_theta_2proc_vs_1proc": max(diffs),
        "max_abs_diff_loss": max(abs(a - b) for r in res for a, b in zip(r["losses"], ref_losses, strict=True)),
        "max_abs_theta_moved": float((ref[-1] - start).abs().max()), "max_abs_theta": float(start.abs().max()),
        "zo_dp_bytes_per_step": res[0]["zo"], "fo_ddp_bytes_per_step": res[0]["ddp"],
        "param_bytes": res[0]["param_bytes"],
        "ring_wire_bytes_per_step": {"zo_dp": ring_bytes(res[0]["zo"], world),
                                     "fo_ddp": ring_bytes(res[0]["ddp"], world)},
    }))


if __name__ == "__main__":
    main()
