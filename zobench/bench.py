"""`zobench bench`: what one ZO step costs against a forward pass, MeZO's reference step and Adam.

One process times every mode on the same model and batch (interleaved repeats, medians): a forward
pass F of our loss (inference mode, logits only where the loss needs them; and F again through the model
blocks compiled by torch.compile, `forward-compiled`), our zo-sgd step (both engines, virtual and
in-place, each with Gaussian and Rademacher directions, from torch's generator and from `rng: counter`),
a faithful MeZO-reference step (Algorithm 1 as MeZO's trainer runs it: four Gaussian regenerations from the
global RNG, losses from full logits at every position) and an fo-adam step. Peak memory is measured
in a fresh process per mode, since a process's peak only grows. `compile=True` runs every mode through
the model's blocks compiled by torch.compile (the `compile: true` run setting), F included; the virtual
engine's modes are left out (its per-op view of θ ± εz is not compiled).
"""

from __future__ import annotations

import gc
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from zobench.errors import UserError
from zobench.measure import PeakMemory, sync
from zobench.models.base import blocks, compile_blocks
from zobench.tasks.scoring import Choice, choice_loss, encode

TINY_OPT = {"model_type": "opt", "hidden_size": 128, "ffn_dim": 512, "word_embed_proj_dim": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 512}
OPT_13B = {"model_type": "opt", "hidden_size": 2048, "ffn_dim": 8192, "word_embed_proj_dim": 2048,
           "num_hidden_layers": 24, "num_attention_heads": 32, "max_position_embeddings": 2048,
           "vocab_size": 50272}
MODELS = ("tiny-opt", "minilm", "smollm2", "opt-1.3b")
# engine (virtual, inplace) × directions (Gaussian, Rademacher) × rng (torch's generator; `-counter`: rng: counter)
OURS = ("zo-sgd", "zo-sgd-rademacher", "zo-sgd-counter", "zo-sgd-rademacher-counter", "zo-sgd-inplace",
        "zo-sgd-inplace-rademacher", "zo-sgd-inplace-counter", "zo-sgd-inplace-rademacher-counter")
SAME_LOSS = "@full"  # a mode's suffix: the step on `forward-full`, MeZO's loss, so only the engine differs from MeZO's
SAME = tuple(m + SAME_LOSS for m in OURS)
TIME_MODES = ("forward", "forward-no-grad", "forward-full", "forward-compiled", *OURS, *SAME, "mezo-reference",
              "fo-adam")
MEMORY_MODES = ("inference", *OURS, "mezo-reference", "fo-adam")
WORDS = ("the film was good bad great dull and the plot was quite a story with music warm cold "
         "ending cast very sweet boring").split()
ZO_LR, ZO_EPS, ADAM_LR = 1e-6, 1e-3, 1e-5


@dataclass
class Subject:
    """A model, one batch, and the two losses: ours (only the logits needed) and MeZO's (full logits)."""

    name: str
    model: torch.nn.Module
    loss: Callable[[], torch.Tensor]
    full_loss: Callable[[], torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- models and batches
def cache_dir() -> Path:
    root = os.environ.get("ZOBENCH_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "zobench")
    return Path(root).expanduser()


@contextmanager
def quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # "Loading weights" bars would interleave with the table
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_smollm2(device: torch.device) -> tuple[torch.nn.Module, Any]:
    """The `smollm2` model (GGUF de-quantised and rebuilt trainable by zobench.models), cached here as
    safetensors: parsing the GGUF takes ~30 s, and a bench loads the model once per memory probe."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from zobench import registry

    cached = cache_dir() / "smollm2-135m-instruct"
    if not (cached / "config.json").is_file():
        bundle = registry.models.get("smollm2").load({}, torch.device("cpu"), 0)
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cached.parent, prefix=".smollm2-"))
        bundle.model.save_pretrained(tmp)
        bundle.tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(cached)
        except OSError:  # another process wrote it first
            shutil.rmtree(tmp, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(cached)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return AutoModelForCausalLM.from_pretrained(cached).to(device), tok


def _causal_subject(name: str, model: torch.nn.Module, tok: Any, batch: int, seq: int,
                    device: torch.device) -> Subject:
    """`batch` sequences of exactly `seq` tokens: batch/2 examples × two options (' bad', ' good')."""
    rng = random.Random(0)
    n = max(1, batch // 2)
    choices = [Choice(" ".join(rng.choices(WORDS, k=seq)) + " It was", [" bad", " good"], i % 2)
               for i in range(n)]
    b = encode(choices, tok, seq, device)  # a byte tokenizer warns that the prompt is long: encode cuts it
    ids, attn, opt = b["input_ids"], b["attention_mask"], b["option_mask"]

    def full_loss() -> torch.Tensor:  # MeZO large_models/utils.py forward_wrap_with_option_len
        logits = model(input_ids=ids, attention_mask=attn).logits
        shift_logits = logits[..., :-1, :].contiguous()
        labels = ids[..., 1:].clone()
        mask = opt[..., 1:]
        labels[~mask] = 0
        logp = F.log_softmax(shift_logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        scores = (logp * mask).sum(-1) / mask.sum(-1)
        return F.cross_entropy(scores.view(-1, 2), b["labels"])

    return Subject(name, model, lambda: choice_loss(model, b), full_loss,
                   {"shape": list(ids.shape), "examples": n, "loss": "option log-likelihood (2 options)"})


def _minilm_subject(batch: int, seq: int, device: torch.device) -> Subject:
    """all-MiniLM-L6-v2's encoder with a fresh masked-LM head (its checkpoint has none; the decoder is
    tied to the word embeddings), classifying by the label words' scores at the [MASK] position."""
    from zobench import registry

    bundle = registry.models.get("minilm").load({}, device, 0)
    model, tok = bundle.model, bundle.tokenizer
    rng = random.Random(0)
    texts = [" ".join(rng.choices(WORDS, k=4 * seq)) for _ in range(batch)]
    suffix = f" it was {tok.mask_token} ."
    enc = tok([t[: 8 * seq] for t in texts], truncation=True, max_length=seq - 6, add_special_tokens=False)
    rows = [[tok.cls_token_id, *r, *tok(suffix, add_special_tokens=False)["input_ids"], tok.sep_token_id]
            for r in enc["input_ids"]]
    ids = torch.tensor(rows, device=device)
    attn = torch.ones_like(ids)
    mask_pos = (ids == tok.mask_token_id).nonzero()[:, 1]
    label_ids = torch.tensor([tok.convert_tokens_to_ids(w) for w in ("terrible", "great")], device=device)
    labels = torch.arange(batch, device=device) % 2
    rows_idx = torch.arange(batch, device=device)

    def loss() -> torch.Tensor:  # the encoder, then the head at one position for two tokens
        hidden = model.bert(input_ids=ids, attention_mask=attn).last_hidden_state[rows_idx, mask_pos]
        head = model.cls.predictions
        h = head.transform(hidden)
        label_rows = F.embedding(label_ids, head.decoder.weight)  # a lookup: ZO draws only these rows of z
        logits = F.linear(h, label_rows, head.decoder.bias[label_ids])
        return F.cross_entropy(logits, labels)

    def full_loss() -> torch.Tensor:  # HF's path: the vocabulary at every position, then pick
        logits = model(input_ids=ids, attention_mask=attn).logits
        return F.cross_entropy(logits[rows_idx, mask_pos][:, label_ids], labels)

    return Subject("minilm", model, loss, full_loss,
                   {"shape": list(ids.shape), "examples": batch, "loss": "[MASK] label words (2 classes)"})


def build_subject(name: str, batch: int, seq: int, device: torch.device, dtype: torch.dtype,
                  compile: bool = False) -> Subject:
    """A benchmark subject by name (see MODELS); random parts are seeded, so runs repeat. `compile`: its
    blocks go through torch.compile as a run with `compile: true` does (compiled at each mode's first call)."""
    torch.manual_seed(0)
    with quiet_transformers():
        subject = _build(name, batch, seq, device, dtype)
    if compile:
        compile_blocks(subject.model)
    return subject


def compiled_modes(modes: tuple[str, ...]) -> tuple[str, ...]:
    """The modes a compiled model can run: the virtual engine's per-op view is not compiled (and F is
    already the compiled forward)."""
    return tuple(m for m in modes if (m.removesuffix(SAME_LOSS) not in OURS or "inplace" in m)
                 and m != "forward-compiled")


def _build(name: str, batch: int, seq: int, device: torch.device, dtype: torch.dtype) -> Subject:
    from zobench.models.hf import TinyModel

    if name == "minilm":
        subject = _minilm_subject(batch, seq, device)
    elif name == "smollm2":
        model, tok = load_smollm2(device)
        subject = _causal_subject(name, model, tok, batch, seq, device)
    elif name in ("tiny-opt", "opt-1.3b"):
        with device:  # made where it runs: initialising 1.3B weights on a CPU takes minutes
            bundle = TinyModel.load({"config": TINY_OPT if name == "tiny-opt" else OPT_13B}, device, 0)
        subject = _causal_subject(name, bundle.model, bundle.tokenizer, batch, seq, device)
    else:
        raise UserError(f"unknown bench model '{name}'; allowed: {', '.join(MODELS)}")
    subject.model.to(device=device, dtype=dtype).eval()  # eval: both ZO forwards see one network
    subject.model.requires_grad_(False)
    with torch.no_grad():  # own every weight: a file-mapped weight counts in RSS only where read or written
        for t in [*subject.model.parameters(), *subject.model.buffers()]:
            t.data = t.data.clone()
    subject.info["params"] = sum(p.numel() for p in subject.model.parameters())
    return subject


# --------------------------------------------------------------------------- steps
class MeZOReference:
    """MeZO Algorithm 1 exactly as its trainer runs it (Malladi et al. 2023, large_models/trainer.py:
    zo_perturb_parameters, zo_step, zo_update): the global RNG reseeded per pass, z = torch.normal over
    each parameter's full shape, out-of-place `param.data = param.data + scale * z * eps`, four
    regenerations per step (+ε, −2ε, +ε, update), no decay on biases and layer norms."""

    def __init__(self, model: torch.nn.Module, lr: float, eps: float, weight_decay: float = 0.0,
                 seed: int = 0) -> None:
        self.named = [(n, p) for n, p in model.named_parameters()]
        self.lr, self.eps, self.weight_decay = lr, eps, weight_decay
        self.rng = np.random.RandomState(seed)
        self.forward_passes = 0

    def _z(self, p: torch.Tensor) -> torch.Tensor:
        return torch.normal(mean=0, std=1, size=p.data.size(), device=p.data.device, dtype=p.data.dtype)

    def perturb(self, seed: int, scaling_factor: float) -> None:
        torch.manual_seed(seed)
        for _, p in self.named:
            p.data = p.data + scaling_factor * self._z(p) * self.eps

    def step(self, loss_fn: Callable[[], torch.Tensor]) -> float:
        seed = int(self.rng.randint(1000000000))
        self.perturb(seed, 1)
        with torch.inference_mode():  # MeZO's zo_forward
            loss1 = loss_fn()
        self.perturb(seed, -2)
        with torch.inference_mode():
            loss2 = loss_fn()
        projected_grad = float((loss1 - loss2) / (2 * self.eps))
        self.perturb(seed, 1)
        torch.manual_seed(seed)
        for name, p in self.named:
            z = self._z(p)
            if "bias" not in name and "layer_norm" not in name and "layernorm" not in name:
                p.data = p.data - self.lr * (projected_grad * z + self.weight_decay * p.data)
            else:
                p.data = p.data - self.lr * (projected_grad * z)
        self.forward_passes += 2
        return float(loss1)


def make_mode(mode: str, subject: Subject, seed: int = 0) -> Callable[[], Any]:
    """A zero-argument callable doing one unit of `mode` (a forward pass or a training step)."""
    from zobench import registry

    model, params = subject.model, list(subject.model.parameters())
    if mode in ("forward", "inference"):
        return torch.inference_mode()(lambda: float(subject.loss()))
    if mode == "forward-full":
        return torch.inference_mode()(lambda: float(subject.full_loss()))
    if mode == "forward-compiled":  # F through the compiled blocks, for this process's eager F beside it
        compiled = [(block, torch.compile(block.forward)) for block in blocks(model)]

        @torch.inference_mode()
        def compiled_forward() -> float:
            for block, forward in compiled:  # for this call only: every other mode keeps the eager blocks
                block.forward = forward
            try:
                return float(subject.loss())
            finally:
                for block, _ in compiled:
                    del block.forward
        return compiled_forward
    if mode == "forward-no-grad":
        return torch.no_grad()(lambda: float(subject.loss()))
    loss = subject.loss
    if mode.endswith(SAME_LOSS):
        mode, loss = mode.removesuffix(SAME_LOSS), subject.full_loss
    if mode in OURS or mode.removesuffix("-triton") in OURS:  # `-triton`: rng: triton (a GPU with Triton)
        cls = registry.methods.get("zo-sgd")
        hp = {"lr": ZO_LR, "eps": ZO_EPS, "direction": "rademacher" if "rademacher" in mode else "gaussian",
              "engine": "inplace" if "inplace" in mode else "virtual",
              "rng": mode.rsplit("-", 1)[1] if mode.endswith(("counter", "triton")) else "torch"}
        for p in params:
            p.requires_grad_(True)  # the method keeps what requires grad; the runner then freezes the module
        method = cls(params, cls.Params.model_validate(hp), seed)
        model.requires_grad_(False)
        return lambda: method.step(loss)
    if mode == "mezo-reference":
        ref = MeZOReference(model, ZO_LR, ZO_EPS, seed=seed)
        return lambda: ref.step(subject.full_loss)
    if mode == "fo-adam":
        cls = registry.methods.get("fo-adam")
        model.requires_grad_(True)
        method = cls(params, cls.Params.model_validate({"lr": ADAM_LR}), seed)
        model.requires_grad_(False)

        def fo_step() -> float:
            model.requires_grad_(True)
            try:
                return method.step(subject.loss)
            finally:
                model.requires_grad_(False)
                for p in params:
                    p.grad = None
        return fo_step
    raise UserError(f"unknown bench mode '{mode}'; allowed: {', '.join(TIME_MODES + MEMORY_MODES)}")


# --------------------------------------------------------------------------- measuring
# calls before a mode is measured: an in-place ZO step is in its steady state from its second call (the first
# has no folded update yet, so the pass drawing two directions, with its own compiled kernels, first runs then)
WARM_UP = 2


def time_modes(subject: Subject, modes: tuple[str, ...], repeats: int, device: torch.device) -> dict[str, Any]:
    """Median seconds per call of each mode; WARM_UP calls each, then `repeats` interleaved rounds."""
    calls = {m: make_mode(m, subject) for m in modes}
    times: dict[str, list[float]] = {m: [] for m in modes}
    for m in modes:
        for _ in range(WARM_UP):
            calls[m]()
    for _ in range(repeats):
        for m in modes:
            sync(device)
            start = time.perf_counter()
            calls[m]()
            sync(device)
            times[m].append(time.perf_counter() - start)
    return {m: {"median_s": statistics.median(t), "min_s": min(t), "runs": len(t)} for m, t in times.items()}


def memory_child(cfg: dict[str, Any]) -> dict[str, Any]:
    """Inside a fresh process: build the subject, run one call of the mode, then the peak memory of `steps`
    more calls (absolute: weights, libraries and whatever the mode keeps between calls are all in it)."""
    from zobench import registry

    torch.set_num_threads(cfg["threads"])
    device = torch.device(cfg["device"])
    subject = build_subject(cfg["model"], cfg["batch"], cfg["seq"], device, getattr(torch, cfg["dtype"]),
                            cfg.get("compile", False))
    registry.load_builtins()  # what a mode imports is not its memory
    call = make_mode(cfg["mode"], subject)
    for _ in range(WARM_UP):  # steady state: one-time set-up (lazy imports, thread pools, compiling) is left out,
        call()  # kept state (Adam's) is in
    with PeakMemory(device) as mem:
        mem.switch("run")
        for _ in range(cfg["steps"]):
            call()
        sync(device)
    return {"peak": mem.by_window().get("run", {}), "baseline": mem.baseline, "sources": mem.sources()}


def measure_memory(cfg: dict[str, Any], modes: tuple[str, ...], steps: int = 2) -> dict[str, Any]:
    """One fresh interpreter per mode (`python -m zobench.bench`), each reporting its peaks as JSON."""
    out = {}
    for mode in modes:
        job = json.dumps({**cfg, "mode": mode, "steps": steps})
        proc = subprocess.run([sys.executable, "-m", "zobench.bench", job], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"memory probe '{mode}' failed:\n{proc.stderr[-2000:]}")
        out[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def bench(model: str = "tiny-opt", batch: int = 16, seq: int = 64, repeats: int = 5, threads: int | None = None,
          device: str = "cpu", dtype: str = "float32", memory: bool = True,
          modes: tuple[str, ...] = TIME_MODES, memory_modes: tuple[str, ...] = MEMORY_MODES,
          compile: bool = False) -> dict[str, Any]:
    """Time every mode in this process and (optionally) measure memory per mode in fresh ones."""
    if threads is not None:
        torch.set_num_threads(threads)
    if not hasattr(torch, dtype) or not isinstance(getattr(torch, dtype), torch.dtype):
        raise UserError(f"unknown dtype '{dtype}'; use float32, bfloat16 or float16")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' was asked for but no GPU is visible; use --device cpu")
    gc.collect()
    start = time.perf_counter()
    subject = build_subject(model, batch, seq, dev, getattr(torch, dtype), compile)
    load_s = time.perf_counter() - start
    if compile:
        modes, memory_modes = compiled_modes(modes), compiled_modes(memory_modes)
    result: dict[str, Any] = {
        "model": model, "device": str(dev), "dtype": dtype, "compile": compile, "threads": torch.get_num_threads(),
        "repeats": repeats, "load_s": load_s, **subject.info, "time": time_modes(subject, modes, repeats, dev),
    }
    del subject
    gc.collect()
    if memory:
        cfg = {"model": model, "batch": batch, "seq": seq, "device": device, "dtype": dtype,
               "threads": torch.get_num_threads(), "compile": compile}
        result["memory"] = measure_memory(cfg, memory_modes)
    result["ratios"] = ratios(result)
    return result


def ratios(result: dict[str, Any]) -> dict[str, float]:
    """step/F for every step, MeZO-reference/ours, and each mode's peak memory over inference's. Same loss: our
    steps on MeZO's loss over `forward-full` (F-full) and MeZO's step over them, so only the engines differ."""
    t = {m: v["median_s"] for m, v in result["time"].items()}
    out: dict[str, float] = {}
    f, f_full = t.get("forward"), t.get("forward-full")
    for m, s in t.items():
        if f and m != "forward":
            out[f"{m} / F"] = s / f
    for m in (*SAME, "mezo-reference"):
        if f_full and m in t:
            out[f"{m} / F-full"] = t[m] / f_full
    for ours in (*OURS, *SAME):
        if ours in t and "mezo-reference" in t:
            out[f"mezo-reference / {ours}"] = t["mezo-reference"] / t[ours]
    mem = result.get("memory", {})
    for source in ("rss", "nvml", "torch_allocator"):
        base = mem.get("inference", {}).get("peak", {}).get(source)
        for m, v in mem.items():
            if base and m != "inference" and v["peak"].get(source):
                out[f"{m} {source} / inference"] = v["peak"][source] / base
    return out


def format_table(result: dict[str, Any]) -> str:
    """The human-readable report: one row per mode (benchmarks/targets.py reads the ratios against targets)."""
    mb, compiled = 2**20, ", compiled" if result.get("compile") else ""
    lines = [f"model {result['model']}: {result['params'] / 1e6:.1f}M params, batch {result['shape']} "
             f"({result['loss']}), {result['device']} {result['dtype']}{compiled}, "
             f"{result['threads']} threads, "
             f"median of {result['repeats']}"]
    f = result["time"].get("forward", {}).get("median_s")
    mem = result.get("memory", {})
    base = mem.get("inference", {}).get("peak", {})
    lines.append(f"{'mode':34s} {'median s':>10s} {'/ F':>7s} {'peak RSS MB':>12s} {'/ inf':>7s}"
                 + (f" {'NVML MB':>9s} {'alloc MB':>9s}" if "nvml" in base else ""))
    for m in dict.fromkeys(list(result["time"]) + list(mem)):
        s = result["time"].get(m if m != "inference" else "forward", {}).get("median_s")
        peak = mem.get(m, {}).get("peak", {})
        row = f"{m:34s} {_num(s, '10.4f')} {_num(s / f if s and f else None, '7.2f')} "
        row += f"{_num(peak.get('rss', 0) / mb or None, '12.0f')} "
        row += _num(peak['rss'] / base['rss'] if peak.get("rss") and base.get("rss") else None, "7.3f")
        if "nvml" in base:
            row += f" {_num(peak.get('nvml', 0) / mb or None, '9.0f')}"
            row += f" {_num(peak.get('torch_allocator', 0) / mb or None, '9.0f')}"
        lines.append(row)
    return "\n".join(lines + same_loss_lines(result))


def same_loss_lines(result: dict[str, Any]) -> list[str]:
    """Each of our modes beside the MeZO reference on the same (full-vocabulary) loss: step ÷ F-full and MeZO's
    step ÷ ours, next to our own loss's ratios; and which mode zo-sgd's defaults run."""
    r = result["ratios"]
    if not any(f"{m} / F-full" in r for m in SAME):
        return []
    from zobench import registry
    from zobench.optim.zo import ZOParams
    default = ZOParams.model_validate(registry.methods.get("zo-sgd").resolved(ZOParams().model_dump()))
    lines = ["", f"same loss (every step on forward-full, F-full = "
                 f"{result['time']['forward-full']['median_s']:.4f} s; MeZO reference "
                 f"{_num(r.get('mezo-reference / F-full'), '4.2f').strip()} F-full); zo-sgd's defaults: "
                 f"engine {default.engine}, direction {default.direction}, rng {default.rng}",
             f"{'mode':34s} {'/ F-full':>9s} {'MeZO ÷':>7s}   {'own loss: / F':>13s} {'MeZO ÷':>7s}"]
    for m in OURS:
        same = m + SAME_LOSS
        mezo = r.get(f"mezo-reference / {same}")
        lines.append(f"{m:34s} {_num(r.get(f'{same} / F-full'), '9.2f')} {_num(mezo, '7.2f')}"
                     f"   {_num(r.get(f'{m} / F'), '13.2f')} {_num(r.get(f'mezo-reference / {m}'), '7.2f')}")
    return lines


def _num(x: float | None, fmt: str) -> str:
    width = int(fmt.split(".")[0])
    return f"{x:{fmt}}" if x is not None and math.isfinite(x) else f"{'-':>{width}s}"


if __name__ == "__main__":  # a memory probe: python -m zobench.bench '<json job>'
    print(json.dumps(memory_child(json.loads(sys.argv[1]))))
