"""Offload of Hugging Face decoders through the runner (zobench/parallel/offload_hf.py), low-bit tiers, and the
upload/compute order of the stream overlap.

A tiny Llama and a tiny OPT trained with `settings.offload` follow the resident run: same z (the same
Directions laid out over the same parameter list), same losses and dev/test metrics to float32 rounding.
The two runs' forwards differ in the order of float32 operations (the in-place engine's θ + εz − 2εz,
functional calls), so each loss may differ in its last bits; that difference enters g divided by 2ε and the
update multiplied by lr, which sets the tolerance below.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_LLAMA

from zobench import registry, runner
from zobench.cli import plan
from zobench.errors import UserError
from zobench.parallel.offload import OffloadZO, SafetensorsTier, Uploader
from zobench.parallel.offload_hf import OffloadedModel, OffloadMethod
from zobench.store import Store

TINY_OPT = {"model_type": "opt", "hidden_size": 16, "ffn_dim": 32, "word_embed_proj_dim": 16, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": 128}
STEPS, LR, EPS = 4, 1e-3, 1e-3
EPS32 = torch.finfo(torch.float32).eps


def _suite(config: dict, offload: dict | None, q: int) -> dict:
    return {"name": "offload", "defaults": {"steps": STEPS, "batch_size": 4, "eval_every": 2, "select": "last",
                                            "device": "cpu", **({"offload": offload} if offload else {})},
            "grid": {"models": [{"name": "tiny", "config": config}],
                     "tasks": [{"name": "synthetic-sentiment", "train_size": 16, "dev_size": 8, "test_size": 8}],
                     "methods": [{"name": "zo-sgd", "lr": LR, "eps": EPS, "engine": "inplace", "q": q}],
                     "seeds": [0]}}


def _run(write_suite, tmp_path: Path, config: dict, offload: dict | None, q: int = 1):
    _, specs = plan(write_suite(_suite(config, offload, q), f"{bool(offload)}.yaml"))
    store = Store(tmp_path / str(bool(offload)), specs[0].suite)
    record = runner.run(specs[0], store)
    assert record.status == "done", record.outcome.error
    return record, pd.read_parquet(store.run_dir(specs[0].run_id) / "curve.parquet")


def _loss_tolerance(losses: np.ndarray) -> float:
    """|Δloss| allowed after STEPS steps: each loss's last-bit differences (a few ulps) reach g as
    ulp/(2ε), θ as lr·g·|z| (|z| ≤ ~6 for Gaussian z over ~10⁵ numbers), and the loss again through a
    gradient of order one per unit of θ (|∇l·z| ≲ 10 here), summed over the steps."""
    ulp = 8 * EPS32 * float(np.nanmax(np.abs(losses)))
    return ulp + STEPS * LR * (ulp / (2 * EPS)) * 10


@pytest.mark.parametrize("config", [{**TINY_LLAMA, "num_hidden_layers": 2}, TINY_OPT], ids=["llama", "opt"])
def test_offloaded_run_follows_the_resident_run(write_suite, tmp_path, config):
    resident, rc = _run(write_suite, tmp_path, config, None, q=2)
    offload, oc = _run(write_suite, tmp_path, config, {"tier": "safetensors"}, q=2)
    losses = rc["train_loss"].to_numpy(dtype=float)
    tol = _loss_tolerance(losses)
    diff = np.nanmax(np.abs(losses - oc["train_loss"].to_numpy(dtype=float)))
    dev = np.nanmax(np.abs(rc["dev_loss"].to_numpy(dtype=float) - oc["dev_loss"].to_numpy(dtype=float)))
    print(f"{config['model_type']}: max |Δ train loss| {diff:.2e}, |Δ dev loss| {dev:.2e} (tolerance {tol:.1e})")
    assert diff <= tol and dev <= tol
    assert rc["dev_accuracy"].dropna().tolist() == oc["dev_accuracy"].dropna().tolist()
    assert resident.metrics.test["loss"] == pytest.approx(offload.metrics.test["loss"], abs=tol)
    assert resident.cost.trainable_params == offload.cost.trainable_params
    assert offload.cost.precision["offload_tier"] == "SafetensorsTier"
    # it trained: the losses moved by far more than the tolerance
    assert np.nanmax(np.abs(rc["dev_loss"].dropna().to_numpy() - rc["dev_loss"].dropna().iloc[0])) > 10 * tol


def _tiny_llama() -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.for_model(**{**TINY_LLAMA, "num_hidden_layers": 3, "vocab_size": 64})
    return AutoModelForCausalLM.from_config(cfg)


def _lm_loss(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids).logits[:, :-1]  # use_cache left at the config's True: offload must not share it
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def test_layer_parameters_are_those_of_the_resident_method():
    """θ of every layer and resident part after a few steps, against zo-sgd's in-place engine on the whole model."""
    base = _tiny_llama()
    ids = torch.randint(0, 64, (4, 10), generator=torch.Generator().manual_seed(1))
    hp = {"lr": LR, "eps": EPS, "q": 2}
    res = copy.deepcopy(base)
    cls = registry.methods.get("zo-sgd")
    method = cls(list(res.parameters()), cls.Params.model_validate({**hp, "engine": "inplace"}), 7)
    off = copy.deepcopy(base)
    offloaded = OffloadedModel(off, "host", None, torch.device("cpu"))
    om = OffloadMethod(offloaded, "zo-sgd", hp, 7)
    with torch.no_grad():
        for _ in range(STEPS):
            method.step(lambda: _lm_loss(res, ids))
            om.step(lambda: _lm_loss(off, ids))
        method.settle()
    ref = dict(res.named_parameters())
    got = {f"model.layers.{b}.{n}": t for b, tensors in offloaded.blocks_state() for n, t in tensors.items()}
    names = [n for n, _ in base.named_parameters()]
    got.update({names[i]: p for i, p in offloaded.resident})
    assert got.keys() == ref.keys()
    scale = max(float(v.abs().max()) for v in ref.values())
    loss = float(_lm_loss(res, ids))
    # rounding of θ (a few ulps per pass) plus the losses' last-bit differences through g (see _loss_tolerance)
    tol = STEPS * (8 * EPS32 * scale + LR * (8 * EPS32 * loss / (2 * EPS)) * 6)
    diff = max(float((got[k] - ref[k]).abs().max()) for k in ref)
    moved = max(float((ref[k] - b).abs().max()) for k, b in base.named_parameters())
    print(f"max |θ_offload − θ_resident| = {diff:.2e} (tolerance {tol:.1e}; θ moved {moved:.1e})")
    assert diff <= tol
    assert moved > 100 * tol


def test_offload_setting_is_refused_with_best_dev_and_for_first_order(write_suite, tmp_path):
    bad = _suite(TINY_LLAMA, {"tier": "host"}, 1)
    bad["defaults"]["select"] = "best-dev"
    with pytest.raises(UserError, match=r"bad.yaml:\d+: .*offload.*set select: last"):
        plan(write_suite(bad, "bad.yaml"))
    both = _suite(TINY_LLAMA, {"tier": "host"}, 1)
    both["defaults"]["shard"] = {"device_map": "auto"}
    with pytest.raises(UserError, match="choose one"):
        plan(write_suite(both, "both.yaml"))
    with pytest.raises(UserError, match="not a zeroth-order method"):
        OffloadMethod(OffloadedModel(_tiny_llama(), "host", None, torch.device("cpu")), "fo-sgd", {"lr": 0.1}, 0)


# --- low-bit tier (ZO2's AMP mode) ------------------------------------------------------------------------

def _blocks() -> list[torch.nn.Module]:
    torch.manual_seed(0)
    return [torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.Tanh()),
            *[torch.nn.Sequential(torch.nn.LayerNorm(32), torch.nn.Linear(32, 32), torch.nn.GELU()) for _ in range(3)],
            torch.nn.Linear(32, 3)]


def _train(tier: SafetensorsTier, steps: int = 5) -> tuple[OffloadZO, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 10, generator=g), torch.randint(0, 3, (16,), generator=g)
    off = OffloadZO(_blocks(), F.cross_entropy, tier, "zo-sgd", {"lr": 0.05, "eps": 1e-2}, 11)
    for _ in range(steps):
        off.step(x, y)
    moved = off.uploader.bytes_moved
    return off, {k: v.float() for k, v in off.state().items()} | {"_bytes": torch.tensor(moved)}


def test_bf16_tier_halves_the_bytes_and_stays_within_bf16_rounding(tmp_path):
    _, full = _train(SafetensorsTier.create(tmp_path / "f.safetensors", _blocks()))
    off, low = _train(SafetensorsTier.create(tmp_path / "h.safetensors", _blocks(), dtype=torch.bfloat16))
    assert off.uploader.tier_dtype == torch.bfloat16
    assert int(low.pop("_bytes")) * 2 == int(full.pop("_bytes"))  # every crossing at half the width
    scale = max(float(v.abs().max()) for v in full.values())
    eps16 = torch.finfo(torch.bfloat16).eps
    diff = max(float((low[k] - full[k]).abs().max()) for k in full)
    # one bf16 rounding per step's offload (relative eps/2), carried over 5 steps, plus the final rounding
    tol = (5 + 1) * eps16 * scale
    print(f"bf16 tier: max |θ_bf16 − θ_fp32| = {diff:.2e} (tolerance {tol:.1e}, bf16 eps {eps16:.1e})")
    assert 0 < diff <= tol


def test_fp8_tier_round_trips(tmp_path):
    blocks = [torch.nn.Linear(4, 4)]
    tier = SafetensorsTier.create(tmp_path / "w.safetensors", blocks, dtype=torch.float8_e4m3fn)
    got = tier.load(0)
    assert got["weight"].dtype == torch.float8_e4m3fn
    assert torch.equal(got["weight"].float(), blocks[0].weight.detach().to(torch.float8_e4m3fn).float())


# --- stream overlap: the order of uploads, waits and compute, with a fake stream ---------------------------

class FakeStreams:
    """Records what a CUDA side stream would be asked to do."""

    def __init__(self, log: list[str]) -> None:
        self.log, self.on_side, self.n = log, False, 0

    def side(self):
        streams = self

        class _Side:
            def __enter__(self) -> None:
                streams.on_side = True

            def __exit__(self, *exc: object) -> None:
                streams.on_side = False

        return _Side()

    def record(self) -> str:
        self.n += 1
        self.log.append(f"record e{self.n}")
        return f"e{self.n}"

    def wait(self, event: str, tensors) -> None:
        self.log.append(f"wait {event}")


class LoggingTier:
    def __init__(self, tier: SafetensorsTier, log: list[str], streams: FakeStreams) -> None:
        self.tier, self.log, self.streams, self.dtype = tier, log, streams, tier.dtype

    def load(self, b: int) -> dict[str, torch.Tensor]:
        self.log.append(f"upload {b}" + (" (side)" if self.streams.on_side else ""))
        return self.tier.load(b)

    def store(self, b: int, tensors: dict[str, torch.Tensor]) -> None:
        self.log.append(f"offload {b}")
        self.tier.store(b, tensors)


def test_next_upload_is_issued_on_the_side_stream_before_this_block_computes(tmp_path):
    log: list[str] = []
    streams = FakeStreams(log)
    blocks = _blocks()
    tier = LoggingTier(SafetensorsTier.create(tmp_path / "w.safetensors", blocks), log, streams)
    off = OffloadZO(blocks, F.cross_entropy, tier, "zo-sgd", {"lr": 0.05, "eps": 1e-2}, 11, streams=streams)
    for b, block in enumerate(off.blocks):
        block.register_forward_pre_hook(lambda *_, b=b: log.append(f"compute {b}"))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 10, generator=g), torch.randint(0, 3, (16,), generator=g)
    with torch.no_grad():
        off.step(x, y)
    n = len(off.blocks)
    expected = ["upload 0", "upload 1 (side)", "record e1", "compute 0", "compute 0", "offload 0"]
    for b in range(1, n):
        expected += [f"wait e{b}"]
        if b + 1 < n:
            expected += [f"upload {b + 1} (side)", f"record e{b + 1}"]
        expected += [f"compute {b}", f"compute {b}", f"offload {b}"]
    assert log == expected
    # the same schedule without a side stream (the CPU): the same θ
    plain = OffloadZO(_blocks(), F.cross_entropy, SafetensorsTier.create(tmp_path / "p.safetensors", _blocks()),
                      "zo-sgd", {"lr": 0.05, "eps": 1e-2}, 11)
    with torch.no_grad():
        plain.step(x, y)
    a, b_ = off.state(), plain.state()
    assert all(torch.equal(a[k], b_[k]) for k in a)


def test_uploader_without_streams_runs_in_order(tmp_path):
    tier = SafetensorsTier.create(tmp_path / "w.safetensors", _blocks())
    up = Uploader(tier, torch.device("cpu"), torch.float32)
    assert up.streams is None
    up.get(0, prefetch=1)
    assert tier.loads == 1  # nothing fetched ahead on the CPU


def test_bf16_host_tier_through_the_runner(write_suite, tmp_path):
    """`offload: {tier: host, amp: bfloat16}`: half the bytes cross, the losses stay within bf16's ε of float32's."""
    config = {**TINY_LLAMA, "num_hidden_layers": 2}
    full, fc = _run(write_suite, tmp_path / "full", config, {"tier": "safetensors"}, q=2)
    low, lc = _run(write_suite, tmp_path / "low", config, {"tier": "host", "amp": "bfloat16"}, q=2)
    assert low.cost.precision["tier_dtype"] == "bfloat16" and low.cost.precision["offload_tier"] == "HostTier"
    assert 2 * low.cost.precision["bytes_moved"] == full.cost.precision["bytes_moved"]
    assert 2 * low.cost.precision["bytes_per_step"] == full.cost.precision["bytes_per_step"]
    losses = fc["train_loss"].to_numpy(dtype=float)
    diff = np.nanmax(np.abs(losses - lc["train_loss"].to_numpy(dtype=float)))
    print(f"bf16 host tier: max |Δ train loss| {diff:.2e} against float32")
    assert 0 < diff <= torch.finfo(torch.bfloat16).eps * np.nanmax(np.abs(losses))
