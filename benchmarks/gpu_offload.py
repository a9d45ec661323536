"""One OPT-shaped model four ways on one GPU: resident, ZO2-style offload (two ways), and accelerate's device_map.

    python benchmarks/gpu_offload.py resident   --shape opt-30b --cap-gib 24 --json out.json
    python benchmarks/gpu_offload.py offload    --shape opt-30b --cap-gib 24 [--tier-dtype float8_e4m3fn] --json ..
    python benchmarks/gpu_offload.py hf-offload --shape opt-30b --cap-gib 24 [--tier-dtype float8_e4m3fn] --json ..
    python benchmarks/gpu_offload.py device-map --shape opt-30b --cap-gib 24 --json out.json

Random init in bf16, built block by block where it runs (no download). `resident` and `offload`: OPT's decoder
as blocks (embeddings, each `OPTDecoderLayer`, final norm + untied head), next-token cross-entropy on random
tokens. `resident`: zo-sgd (engine inplace) with everything on the GPU. `offload`: the blocks in pinned host
memory, each uploaded, updated, run at θ+εz and θ−εz and sent back (zobench/parallel/offload.py), the next
block's upload on a side stream while this one computes, the GPU capped at --cap-gib through torch's
per-process memory fraction. `hf-offload`: the runner's path (`settings.offload`, zobench/parallel/offload_hf.py)
on transformers' own OPTForCausalLM: embeddings, positions, final norm and the tied head resident on the GPU,
the decoder layers in pinned host memory. `--tier-dtype float8_e4m3fn`: the host copy in fp8 (ZO2's AMP
mode one step lower: half the bytes of bf16 cross, up-cast on upload). `device-map`: accelerate's
infer_auto_device_map/dispatch_model under the same cap (zobench/parallel/sharded.py's rule): where the map
offloads layers to the CPU, accelerate keeps those weights off the module (meta tensors), so no ZO engine can
perturb them and only forwards are timed (half a ZO step's work; "zo": false); where everything fits on the
GPUs (a higher cap, or several GPUs), zo-sgd steps run through the hooks ("zo": true). Memory from
zobench.measure (NVML for the run's device, torch's allocator, RSS) and NVML's used memory of every GPU above
its baseline, sampled every 20 ms (`nvml_per_device`); step time is the median after one warm-up step.
`--device cpu --shape tiny` runs the same code on a CPU (a check of the script, not a figure).
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import OPTConfig
from transformers.models.opt.modeling_opt import OPTDecoderLayer

from zobench import registry
from zobench.measure import PeakMemory
from zobench.parallel.offload import HostTier, OffloadZO
from zobench.parallel.offload_hf import OffloadedModel, OffloadMethod
from zobench.parallel.sharded import bytes_per_device

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


class NvmlPerDevice:
    """Peak used memory of every GPU NVML sees, above its level when sampling started (a sharded run's figure)."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval, self.peaks, self.names = interval, {}, {}
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception:  # no driver, no pynvml: nothing to sample
            self.nvml, self.handles = None, []

    def _used(self) -> list[int]:
        return [int(self.nvml.nvmlDeviceGetMemoryInfo(h).used) for h in self.handles]

    def __enter__(self) -> NvmlPerDevice:
        if self.handles:
            self.base = self._used()
            self.peaks = dict.fromkeys(range(len(self.handles)), 0)
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            for i, (used, base) in enumerate(zip(self._used(), self.base, strict=True)):
                self.peaks[i] = max(self.peaks[i], used - base)

    def __exit__(self, *exc: object) -> None:
        if self.handles:
            self._stop.set()
            self._thread.join()

    def record(self) -> dict[str, int] | None:
        return {f"gpu{i}": v for i, v in self.peaks.items()} if self.handles else None


def hf_opt(cfg: OPTConfig, device: torch.device, tier_dtype: torch.dtype | None) -> tuple[torch.nn.Module, HostTier]:
    """transformers' OPTForCausalLM with its resident parts made on `device` and its decoder layers made one at a
    time on `device` and copied into pinned host memory (in `tier_dtype` when given): never whole anywhere."""
    from transformers import OPTForCausalLM

    with torch.device("meta"):
        model = OPTForCausalLM(cfg).to(torch.bfloat16)
    for name, module in model.named_modules():
        if list(module.parameters(recurse=False)) and not name.startswith("model.decoder.layers"):
            module.to_empty(device=device, recurse=False)  # new parameter objects: read them after
            for pname, p in module.named_parameters(recurse=False):
                with torch.no_grad():
                    torch.nn.init.normal_(p, std=0.02) if p.dim() > 1 else p.fill_(1.0 if pname == "weight" else 0.0)
    model.tie_weights()  # the head is the embedding matrix again (OPT ties them)
    assert model.lm_head.weight is model.model.decoder.embed_tokens.weight

    def layers():
        for i in range(cfg.num_hidden_layers):
            torch.manual_seed(i + 1)
            with torch.device(device):
                yield OPTDecoderLayer(cfg, layer_idx=i).to(torch.bfloat16)

    return model.eval().requires_grad_(True), HostTier(layers(), dtype=tier_dtype)


def objective(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["resident", "offload", "hf-offload", "device-map"])
    ap.add_argument("--tier-dtype", choices=["bfloat16", "float8_e4m3fn"], default="bfloat16",
                    help="offload, hf-offload: the precision of the host copy")
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
    memory, per_device, times, losses = PeakMemory(device), NvmlPerDevice(), [], []
    tier_dtype = getattr(torch, args.tier_dtype)
    extra: dict = {}
    built = time.perf_counter()
    with memory, per_device:
        if args.mode == "resident":
            model = torch.nn.Sequential(*[make_block(cfg, b, device) for b in range(n_blocks)]).requires_grad_(True)
            cls = registry.methods.get("zo-sgd")
            method = cls(list(model.parameters()), cls.Params.model_validate({**hp, "engine": "inplace"}), 0)

            def step() -> float:
                with torch.no_grad():
                    return method.step(lambda: objective(model(ids), ids))
        elif args.mode == "offload":
            # each block made on the device (fast init), copied to pinned host memory, freed, before the next
            tier = HostTier((make_block(cfg, b, device) for b in range(n_blocks)), dtype=tier_dtype)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            blocks = [make_block(cfg, b, torch.device("meta")) for b in range(n_blocks)]
            off = OffloadZO(blocks, objective, tier, "zo-sgd", hp, 0, device=device)
            extra["tier_dtype"] = args.tier_dtype

            def step() -> float:
                return off.step(ids, ids)
        elif args.mode == "hf-offload":
            model, tier = hf_opt(cfg, device, tier_dtype)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            method = OffloadMethod(OffloadedModel(model, tier, None, device), "zo-sgd", hp, 0)
            extra["tier_dtype"] = args.tier_dtype

            def step() -> float:
                return method.step(lambda: objective(model(input_ids=ids, use_cache=False).logits, ids))
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
            # ZO where no weight is accelerate-offloaded (zobench/parallel/sharded.py refuses the rest)
            zo = all(p.device.type != "meta" for p in model.parameters()) and not (
                {placed(b) for b in range(n_blocks)} - {"cpu"} and "cpu" in {placed(b) for b in range(n_blocks)})
            extra.update(zo=zo, param_bytes_per_device=bytes_per_device(model))
            if zo:
                model.requires_grad_(True)
                cls = registry.methods.get("zo-sgd")
                method = cls(list(model.parameters()), cls.Params.model_validate({**hp, "engine": "inplace"}), 0)

            def step() -> float:
                with torch.no_grad():
                    if zo:
                        return method.step(lambda: objective(model(ids), ids))
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
        "memory": memory.record(), "nvml_per_device": per_device.record(), **extra,
        **({"device_map": {str(k): str(v) for k, v in device_map.items()}} if args.mode == "device-map" else {}),
    }
    text = json.dumps(result, indent=1, default=str)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
