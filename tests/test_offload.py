"""The offload scheduler (zobench/parallel/offload.py) against the resident model, and its memory.

Equivalence: zo-sgd over blocks streamed from a safetensors file follows the resident in-place run's
trajectory (same seeds, same per-element operations), to float32 rounding. Memory: a fresh process's peak
RSS above its baseline is about one block plus activations offloaded, the whole model resident
(benchmarks/offload_rss.py, which prints the figures).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from zobench import registry
from zobench.errors import UserError
from zobench.parallel.offload import HostTier, OffloadZO, SafetensorsTier

ROOT = Path(__file__).resolve().parents[1]
STEPS = 5


def _blocks(width: int = 24, depth: int = 4) -> list[torch.nn.Module]:
    torch.manual_seed(0)
    first = torch.nn.Sequential(torch.nn.Linear(10, width), torch.nn.Tanh())
    middle = [torch.nn.Sequential(torch.nn.LayerNorm(width), torch.nn.Linear(width, width), torch.nn.GELU())
              for _ in range(depth)]
    return [first, *middle, torch.nn.Linear(width, 3)]


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 10, generator=g), torch.randint(0, 3, (16,), generator=g)


def _objective(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y)


def _resident(blocks: list[torch.nn.Module], hp: dict) -> tuple[dict[str, torch.Tensor], list[float]]:
    model = torch.nn.Sequential(*copy.deepcopy(blocks))
    cls = registry.methods.get("zo-sgd")
    method = cls(list(model.parameters()), cls.Params.model_validate({**hp, "engine": "inplace"}), 11)
    x, y = _data()
    losses = []
    with torch.no_grad():
        for _ in range(STEPS):
            losses.append(method.step(lambda: _objective(model(x), y)))
        method.settle()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, losses


def _offloaded(blocks: list[torch.nn.Module], hp: dict, path: Path) -> tuple[OffloadZO, list[float]]:
    tier = SafetensorsTier.create(path, blocks)
    off = OffloadZO(copy.deepcopy(blocks), _objective, tier, "zo-sgd", hp, 11)
    x, y = _data()
    return off, [off.step(x, y) for _ in range(STEPS)]


@pytest.mark.parametrize("hp", [{"lr": 0.05, "eps": 1e-3}, {"lr": 0.05, "eps": 1e-3, "q": 2},
                                {"lr": 0.05, "eps": 1e-3, "direction": "rademacher"}])
def test_offloaded_trajectory_is_the_resident_one(tmp_path: Path, hp: dict) -> None:
    blocks = _blocks()
    ref, ref_losses = _resident(blocks, hp)
    off, losses = _offloaded(blocks, hp, tmp_path / "w.safetensors")
    crossings = off.tier.loads, off.tier.stores
    state = off.state()
    assert state.keys() == ref.keys()
    # rounding only: a few float32 ulps of θ per pass, each step a handful of passes
    eps32 = torch.finfo(torch.float32).eps
    scale = max(float(v.abs().max()) for v in ref.values())
    tol = 4 * STEPS * (2 * hp.get("q", 1) + 2) * eps32 * scale
    diff = max(float((state[k] - ref[k]).abs().max()) for k in ref)
    print(f"offload {hp}: max |θ_offload − θ_resident| = {diff:.3e} (tolerance {tol:.1e})")
    assert diff <= tol
    assert losses == pytest.approx(ref_losses, rel=64 * eps32)
    moved = max(float((state[k] - b).abs().max()) for k, b in
                torch.nn.Sequential(*blocks).state_dict().items())
    assert moved > 100 * tol  # it trained: the comparison is not of two untouched models
    n = len(blocks)
    assert crossings == (STEPS * n, STEPS * n)  # each block crosses once each way per step, the update included


def test_weight_decay_folds_into_the_load_too(tmp_path: Path) -> None:
    """With every tensor a matrix, MeZO's decay applies to all and folds: θ ← (1 − η·wd)θ − η·g·z at the load."""
    torch.manual_seed(0)
    blocks = [torch.nn.Sequential(torch.nn.Linear(10, 16, bias=False), torch.nn.Tanh()),
              torch.nn.Linear(16, 3, bias=False)]
    hp = {"lr": 0.05, "eps": 1e-3, "weight_decay": 0.5}
    ref, _ = _resident(blocks, hp)
    off, _ = _offloaded(blocks, hp, tmp_path / "w.safetensors")
    state = off.state()
    tol = 4 * STEPS * 4 * torch.finfo(torch.float32).eps * max(float(v.abs().max()) for v in ref.values())
    assert max(float((state[k] - ref[k]).abs().max()) for k in ref) <= tol


def test_host_tier_follows_the_same_trajectory() -> None:
    """ZO2's own tier (host memory, the GPU's working copy): on a CPU the same schedule, the same θ."""
    blocks, hp = _blocks(), {"lr": 0.05, "eps": 1e-3}
    ref, _ = _resident(blocks, hp)
    off = OffloadZO(copy.deepcopy(blocks), _objective, HostTier(blocks), "zo-sgd", hp, 11)
    x, y = _data()
    for _ in range(STEPS):
        off.step(x, y)
    state = off.state()
    tol = 4 * STEPS * 4 * torch.finfo(torch.float32).eps * max(float(v.abs().max()) for v in ref.values())
    assert max(float((state[k] - ref[k]).abs().max()) for k in ref) <= tol


def test_offload_refuses_a_method_whose_update_does_not_fold(tmp_path: Path) -> None:
    blocks = _blocks()
    tier = SafetensorsTier.create(tmp_path / "w.safetensors", blocks)
    with pytest.raises(UserError, match="offload"):
        OffloadZO(blocks, _objective, tier, "zo-sgd-sign", {"lr": 0.01}, 0)
    with pytest.raises(UserError, match="offload"):
        OffloadZO(blocks, _objective, tier, "zo-sgd", {"lr": 0.01, "weight_decay": 0.1}, 0)  # not on 1-D tensors


def test_bf16_tier_round_trips(tmp_path: Path) -> None:
    blocks = [torch.nn.Linear(4, 4).to(torch.bfloat16)]
    tier = SafetensorsTier.create(tmp_path / "w.safetensors", blocks)
    got = tier.load(0)
    assert got["weight"].dtype == torch.bfloat16 and torch.equal(got["weight"], blocks[0].weight.detach())
    got["weight"].add_(1)
    tier.store(0, got)
    assert torch.equal(SafetensorsTier(tmp_path / "w.safetensors").load(0)["weight"], blocks[0].weight.detach() + 1)


def _rss(mode: str, tmp: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "offload_rss.py"), mode, "--dir", str(tmp),
                          "--blocks", "8", "--width", "1024", "--steps", "2"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS from the kernel's VmHWM")
def test_offload_peak_rss_is_about_one_block(tmp_path: Path) -> None:
    resident, offload = _rss("resident", tmp_path), _rss("offload", tmp_path)
    block, model = offload["block_bytes"], offload["model_bytes"]
    print(f"peak RSS above baseline: resident {resident['peak_above_baseline'] / 2**20:.1f} MiB, offload "
          f"{offload['peak_above_baseline'] / 2**20:.1f} MiB (block {block / 2**20:.1f} MiB, model "
          f"{model / 2**20:.1f} MiB)")
    assert resident["peak_above_baseline"] >= model  # the resident run holds every block
    # the working copy, the mapped pages while it is copied, one z and the activations (small here)
    assert offload["peak_above_baseline"] <= 3 * block + offload["activation_bytes"] + 4 * 2**20
