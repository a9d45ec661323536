"""Peak RSS of ZO-SGD steps with the model resident against streamed block by block from a safetensors file
(zobench/parallel/offload.py). One mode per fresh process; prints one JSON line.

    python benchmarks/offload_rss.py prepare  --dir /tmp/off --blocks 8 --width 1024
    MALLOC_MMAP_THRESHOLD_=65536 python benchmarks/offload_rss.py resident --dir /tmp/off ...
    MALLOC_MMAP_THRESHOLD_=65536 python benchmarks/offload_rss.py offload  --dir /tmp/off ...

The baseline is the process after imports with the blocks built on the meta device (no numbers); the peak is
the kernel's VmHWM, reset to the baseline through /proc/self/clear_refs (as zobench/measure.py `_KernelHWM`).
`prepare` (implied when the file is missing) writes the random-init weights. A fixed mmap threshold keeps
glibc from growing its heap with each freed block (its dynamic threshold), so freed blocks go back at once.

The same on a real model through the runner's path (zobench/parallel/offload_hf.py), SmolLM2-135M from the
`smollm2` preset, next-token loss on random tokens:

    MALLOC_MMAP_THRESHOLD_=65536 python benchmarks/offload_rss.py smollm2-resident --dir /tmp/off
    MALLOC_MMAP_THRESHOLD_=65536 python benchmarks/offload_rss.py smollm2-offload  --dir /tmp/off [--amp bfloat16]

Here the model is loaded whole first (the GGUF is de-quantised in memory), so the setup peak is the model's
for both; the figure is the training peak, with the high-water mark reset when the first step starts.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from zobench import registry
from zobench.parallel.offload import OffloadZO, SafetensorsTier


def rss(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {field} in /proc/self/status")


def blocks(n: int, width: int, device: str) -> list[torch.nn.Module]:
    torch.manual_seed(0)
    with torch.device(device):
        return [torch.nn.Sequential(torch.nn.LayerNorm(width), torch.nn.Linear(width, width), torch.nn.GELU(),
                                    torch.nn.Linear(width, width)) for _ in range(n)]


def objective(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (out - target).pow(2).mean()


def resident_steps(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, hp: dict,
                   steps: int) -> tuple[list[float], list[float]]:
    cls = registry.methods.get("zo-sgd")
    method = cls(list(model.parameters()), cls.Params.model_validate({**hp, "engine": "inplace"}), 0)
    times, losses = [], []
    for _ in range(steps):
        start = time.perf_counter()
        with torch.no_grad():
            losses.append(method.step(lambda: objective(model(x), target)))
        times.append(time.perf_counter() - start)
    method.settle()
    return times, losses


def offload_steps(meta: list[torch.nn.Module], path: Path, x: torch.Tensor, target: torch.Tensor, hp: dict,
                  steps: int) -> tuple[list[float], list[float]]:
    off = OffloadZO(meta, objective, SafetensorsTier(path), "zo-sgd", hp, 0)
    times, losses = [], []
    for _ in range(steps):
        start = time.perf_counter()
        losses.append(off.step(x, target))
        times.append(time.perf_counter() - start)
    off.settle()
    return times, losses


def warm_up(folder: Path) -> None:
    """Both modes once on a tiny model, so the libraries they load lazily are in the baseline, not the peak."""
    small = blocks(1, 8, "cpu")
    SafetensorsTier.create(folder / "warm-up.safetensors", small)
    x = torch.zeros(2, 8)
    resident_steps(torch.nn.Sequential(*small), x, x, {"lr": 1e-3}, 1)
    offload_steps(blocks(1, 8, "meta"), folder / "warm-up.safetensors", x, x, {"lr": 1e-3}, 1)


def smollm2(mode: str, batch: int, seq: int, steps: int, amp: str | None) -> dict:
    """Training-phase peak RSS and step time of SmolLM2-135M, resident or offloaded to a safetensors tier."""
    import torch.nn.functional as F

    from zobench.parallel.offload_hf import OffloadedModel, OffloadMethod

    baseline = rss("VmRSS")
    model = registry.models.get("smollm2").load({}, torch.device("cpu"), 0).model.eval().requires_grad_(True)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))

    def loss() -> torch.Tensor:
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
        return F.cross_entropy(logits.reshape(-1, vocab), ids[:, 1:].reshape(-1))

    hp = {"lr": 1e-6, "eps": 1e-3}
    cls = registry.methods.get("zo-sgd")
    loaded = rss("VmHWM")
    if mode == "smollm2-resident":
        method = cls(list(model.parameters()), cls.Params.model_validate({**hp, "engine": "inplace"}), 0)
    else:
        method = OffloadMethod(OffloadedModel(model, "safetensors", amp, torch.device("cpu")), "zo-sgd", hp, 0)
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    start_rss = rss("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    times, losses = [], []
    for _ in range(steps):
        start = time.perf_counter()
        with torch.no_grad():
            losses.append(method.step(loss))
        times.append(time.perf_counter() - start)
    peak = rss("VmHWM")
    layers = sum(p.numel() for p in model.parameters()) if mode == "smollm2-resident" else None
    return {"mode": mode, "amp": amp, "batch": batch, "seq": seq, "baseline_rss": baseline, "setup_peak_rss": loaded,
            "train_start_rss": start_rss, "train_peak_rss": peak, "train_peak_above_baseline": peak - baseline,
            "resident_params": layers if layers is not None else sum(p.numel() for p in model.parameters()),
            "median_step_s": statistics.median(times), "step_s": times, "losses": losses,
            **({"precision": method.precision()} if mode == "smollm2-offload" else {})}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["prepare", "resident", "offload", "smollm2-resident", "smollm2-offload"])
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--amp", default=None, help="smollm2-offload: the tier's precision (bfloat16, float16)")
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    if args.mode.startswith("smollm2"):
        torch.set_num_threads(1)
        print(json.dumps(smollm2(args.mode, args.batch, args.seq, args.steps, args.amp)))
        return
    path = args.dir / f"model-{args.blocks}x{args.width}.safetensors"
    if args.mode == "prepare":
        args.dir.mkdir(parents=True, exist_ok=True)
        SafetensorsTier.create(path, blocks(args.blocks, args.width, "cpu"))
        return
    if not path.exists():
        subprocess.run([sys.executable, __file__, "prepare", "--dir", str(args.dir), "--blocks", str(args.blocks),
                        "--width", str(args.width)], check=True)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, args.width, generator=g)
    target = torch.randn(args.batch, args.width, generator=g)
    meta = blocks(args.blocks, args.width, "meta")
    block_bytes = sum(p.numel() * p.element_size() for p in meta[0].parameters())
    hp = {"lr": 1e-3, "eps": 1e-3}
    warm_up(args.dir)
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    baseline = rss("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    if args.mode == "resident":
        tier = SafetensorsTier(path)
        model = torch.nn.Sequential(*meta).to_empty(device="cpu")
        for b in range(args.blocks):
            model[b].load_state_dict(tier.load(b))
        times, losses = resident_steps(model, x, target, hp, args.steps)
    else:
        times, losses = offload_steps(meta, path, x, target, hp, args.steps)
    peak = rss("VmHWM")
    print(json.dumps({
        "mode": args.mode, "blocks": args.blocks, "width": args.width, "batch": args.batch,
        "baseline_rss": baseline, "peak_rss": peak, "peak_above_baseline": peak - baseline,
        "block_bytes": block_bytes, "model_bytes": block_bytes * args.blocks,
        "activation_bytes": 4 * args.batch * args.width * 4,  # ± streams, a block's input and output, float32
        "median_step_s": statistics.median(times), "losses": losses}))


if __name__ == "__main__":
    main()
