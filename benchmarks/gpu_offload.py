"""One OPT-shaped model three ways on one GPU: resident, ZO2-style offload, and accelerate's device_map.

    python benchmarks/gpu_offload.py resident   --shape opt-30b --cap-gib 24 --json out.json
    python benchmarks/gpu_offload.py offload    --shape opt-30b --cap-gib 24 --json out.json
    python benchmarks/gpu_offload.py device-map --shape opt-30b --cap-gib 24 --json out.json

Random init in bf16, built block by block where it runs (no download). The model is OPT's decoder as
blocks (embeddings, each `OPTDecoderLayer`, final norm + untied head), the loss next-token cross-entropy on
random tokens. `resident`: zo-sgd (engine inplace) with everything on the GPU. `offload`: the blocks in
pinned host memory, each uploaded, updated, run at θ+εz and θ−εz and sent back (zobench/parallel/offload.py),
the GPU capped at --cap-gib through torch's per-process memory fraction. `device-map`: accelerate's
infer_auto_device_map/dispatch_model under the same cap (layers beyond it offloaded to the CPU), forward
passes only: accelerate keeps offloaded weights off the module (meta tensors), so no ZO engine can perturb
them in place; its forward time is the reference for what its offload costs. Memory from zobench.measure
(NVML per process and device, torch's allocator, RSS); step time is the median after one warm-up step.
`--device cpu --shape tiny` runs the same code on a CPU (a check of the script, not a figure).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import OPTConfig
from transformers.models.opt.modeling_opt import OPTDecoderLayer

from zobench import registry
from zobench.measure import PeakMemory
from zobench.parallel.offload import HostTier, OffloadZO

SHAPES = {  # facebook/opt-30b and opt-1.3b configs; tiny: for checking the script
    "opt-30b": {"hidden_size": 7168, "ffn_dim": 28672, "num_hidden_layers": 48, "num_attention_heads": 56},
    "opt-1.3b": {"hidden_size": 2048, "ffn_dim": 8192, "num_hidden_layers": 24, "num_attention_heads": 32},
    "tiny": {"hidden_size": 64, "ffn_dim": 256, "num_hidden_layers": 3, "num_attention_heads": 4},
}


class Embed(torch.nn.Module):
    def __init__(self, cfg: OPTConfig) -> None:
        super().__init__()
        self.tokens = torch.nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.positions = torch.nn.Embedding(cfg.max_position_embeddings + 2, cfg.hidden_size)  # OPT's offset 2

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(2, ids.shape[1] + 2, device=ids.device)
        return self.tokens(ids) + self.positions(pos)


class Layer(torch.nn.Module):
    def __init__(self, cfg: OPTConfig, i: int) -> None:
        super().__init__()
        self.layer = OPTDecoderLayer(cfg, layer_idx=i)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = self.layer(h)  # no mask: sdpa's causal attention
        return out[0] if isinstance(out, tuple) else out


class Head(torch.nn.Module):
    def __init__(self, cfg: OPTConfig) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(cfg.hidden_size)
        self.lm_head = torch.nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(h))


def config(shape: str) -> OPTConfig:
    cfg = OPTConfig(**SHAPES[shape], vocab_size=50272, max_position_embeddings=2048, word_embed_proj_dim=None,
                    do_layer_norm_before=True, enable_bias=True, dropout=0.0, attention_dropout=0.0)
    cfg.word_embed_proj_dim = cfg.hidden_size
    cfg._attn_implementation = "sdpa"
    return cfg


def make_block(cfg: OPTConfig, b: int, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(b)
    with torch.device(device):
        n = cfg.num_hidden_layers
        block = Embed(cfg) if b == 0 else Head(cfg) if b == n + 1 else Layer(cfg, b - 1)
    return block.to(torch.bfloat16).eval().requires_grad_(False)


def objective(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["resident", "offload", "device-map"])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="opt-30b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--cap-gib", type=float, default=24.0, help="GPU memory cap for offload and device-map")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    device = torch.device(args.device)
    cfg = config(args.shape)
    n_blocks = cfg.num_hidden_layers + 2
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    ids = ids.to(device)
    hp = {"lr": 1e-7, "eps": 1e-3}
    if device.type == "cuda" and args.mode != "resident":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gib * 2**30 / total), device)
    memory, times, losses = PeakMemory(device), [], []
    built = time.perf_counter()
    with memory:
        if args.mode == "resident":
            model = torch.nn.Sequential(*[make_block(cfg, b, device) for b in range(n_blocks)]).requires_grad_(True)
            cls = registry.methods.get("zo-sgd")
            method = cls(list(model.parameters()), cls.Params.model_validate({**hp, "engine": "inplace"}), 0)

            def step() -> float:
                with torch.no_grad():
                    return method.step(lambda: objective(model(ids), ids))
        elif args.mode == "offload":
            # each block made on the device (fast init), copied to pinned host memory, freed, before the next
            tier = HostTier(make_block(cfg, b, device) for b in range(n_blocks))
            if device.type == "cuda":
                torch.cuda.empty_cache()
            blocks = [make_block(cfg, b, torch.device("meta")) for b in range(n_blocks)]
            off = OffloadZO(blocks, objective, tier, "zo-sgd", hp, 0, device=device)

            def step() -> float:
                return off.step(ids, ids)
        else:
            from accelerate import dispatch_model, infer_auto_device_map

            with torch.device("meta"):
                model = torch.nn.Sequential(*[make_block(cfg, b, torch.device("meta")) for b in range(n_blocks)])
            gpu = {device.index or 0: f"{args.cap_gib}GiB"} if device.type == "cuda" else {}
            device_map = infer_auto_device_map(model, max_memory={**gpu, "cpu": "120GiB"},
                                               no_split_module_classes=["Layer", "Embed", "Head"])

            def placed(b: int) -> str:
                where = device_map.get(str(b), device_map.get(""))
                return "cpu" if where in (None, "cpu", "disk") else str(where)

            # made on the device (fast init) and moved to the CPU where the map puts them
            model = torch.nn.Sequential(*[make_block(cfg, b, device).to("cpu" if placed(b) == "cpu" else device)
                                          for b in range(n_blocks)])
            if device.type == "cuda":
                model = dispatch_model(model, device_map={k: (v if v != "disk" else "cpu")
                                                          for k, v in device_map.items()})

            def step() -> float:
                with torch.no_grad():
                    return float(objective(model(ids), ids))  # one forward: half a ZO step's work
        built = time.perf_counter() - built
        for _ in range(args.steps + 1):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            losses.append(step())
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
    params = sum(p.numel() for b in range(n_blocks) for p in make_block(cfg, b, torch.device("meta")).parameters())
    result = {
        "mode": args.mode, "shape": args.shape, "params": params, "param_gib_bf16": params * 2 / 2**30,
        "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cap_gib": args.cap_gib if args.mode != "resident" else None, "batch": args.batch, "seq": args.seq,
        "median_step_s": statistics.median(times[1:]), "step_s": times, "setup_s": built, "losses": losses,
        "memory": memory.record(),
        **({"device_map": {str(k): str(v) for k, v in device_map.items()}} if args.mode == "device-map" else {}),
    }
    text = json.dumps(result, indent=1, default=str)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
