"""First-order baselines on half-precision weights: mixed precision through torch.amp, as MeZO's FT ran."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY_LLAMA

from zobench import registry
from zobench.optim.first_order import FOAdam

CPU = torch.device("cpu")


def tiny_llama(dtype: str) -> torch.nn.Module:
    bundle = registry.models.get("tiny").load({"config": TINY_LLAMA, "dtype": dtype}, CPU, seed=0)
    return bundle.model


def lm_loss(model: torch.nn.Module, seed: int = 0):
    tokens = torch.randint(3, 200, (4, 16), generator=torch.Generator().manual_seed(seed))
    return lambda: model(input_ids=tokens, labels=tokens).loss


def adam(model: torch.nn.Module, **hp) -> FOAdam:
    method = FOAdam([p for p in model.parameters()], FOAdam.Params(lr=1e-3, **hp), seed=0)
    method.match_model(model)
    return method


def all_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_plain_adam_on_float16_weights_goes_non_finite_and_mixed_precision_trains():
    """The old FT row on float16 weights: Adam's eps (1e-8) is 0 in float16, so 0/0 where a second moment
    underflows. `auto` keeps float32 master weights, autocasts to float16 and scales the loss."""
    plain_model = tiny_llama("float16")
    plain = adam(plain_model, mixed_precision="no")
    plain.step(lm_loss(plain_model))
    assert not all_finite(plain_model)  # the old behaviour, still reachable with mixed_precision: "no"

    model = tiny_llama("float16")
    method = adam(model)
    assert method.autocast_dtype == torch.float16 and method.scaler.is_enabled()
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = [method.step(lm_loss(model, seed=0)) for _ in range(5)]
    assert all_finite(model) and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]  # the same batch five times: Adam at 1e-3 lowers its loss
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())
    assert method.precision() == {"mixed_precision": "auto", "model_dtype": "float16", "parameters": "float32",
                                  "autocast": "float16", "loss_scale": 65536.0, "skipped_steps": 0}


def test_bf16_autocast_on_cpu_runs_the_forward_in_bfloat16_over_float32_weights():
    model = tiny_llama("float32")
    method = adam(model, mixed_precision="bf16")
    seen: list[torch.dtype] = []
    linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    loss = method.step(lm_loss(model))
    assert seen == [torch.bfloat16]  # autocast ran the matmul in bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())
    assert not method.scaler.is_enabled()  # bfloat16 has float32's exponent range: no loss scaling
    assert torch.isfinite(torch.tensor(loss)) and all_finite(model)
    with method.autocast():  # what the runner evaluates under
        assert linear(torch.ones(1, linear.in_features)).dtype == torch.bfloat16


def test_fp32_weights_keep_full_precision_under_auto():
    model = tiny_llama("float32")
    method = adam(model)
    assert method.autocast_dtype is None and method.precision()["autocast"] is None
    with method.autocast():
        assert not torch.is_autocast_enabled("cpu")


def test_a_float16_overflow_skips_the_step_and_halves_the_loss_scale():
    """GradScaler's dynamic loss scaling: inf gradients leave the weights alone and shrink the scale."""
    layer = torch.nn.Linear(4, 1).half()
    method = FOAdam(list(layer.parameters()), FOAdam.Params(lr=1e-2), seed=0)
    before = [p.detach().clone() for p in layer.parameters()]
    x = torch.ones(2, 4)
    method.step(lambda: layer(x).float().sum() * 1e30)  # scaled by 65536: the gradients overflow
    assert [torch.equal(b, p) for b, p in zip(before, layer.parameters(), strict=True)] == [True, True]
    assert method.precision()["skipped_steps"] == 1 and method.precision()["loss_scale"] == 32768.0
    method.step(lambda: layer(x).float().sum() * 1e-3)
    assert method.precision()["skipped_steps"] == 1
    assert not torch.equal(before[0], layer.weight)


def test_lora_on_a_float16_base_autocasts_as_the_model():
    """peft keeps adapters in float32 on a float16 base; `auto` follows the model's dtype all the same."""
    model = registry.schemes.get("lora").apply(tiny_llama("float16"), {"r": 2}) or None
    assert model is not None
    trainable = [p for p in model.parameters() if p.requires_grad]
    method = FOAdam(trainable, FOAdam.Params(lr=1e-3), seed=0)
    method.match_model(model)
    assert method.autocast_dtype == torch.float16
    assert torch.isfinite(torch.tensor(method.step(lm_loss(model)))) and all_finite(model)


def test_the_run_records_its_precision_and_keeps_fp32_run_ids(write_suite, tmp_path):
    """A float16 FT run trains end to end and says how; float32 suites keep the ids of their FO runs."""
    from zobench.config import load_suite
    from zobench.grid import expand
    from zobench.runner import run
    from zobench.store import Store

    path = write_suite({"name": "p", "defaults": {"steps": 3, "batch_size": 4, "eval_every": 3, "device": "cpu"},
                        "grid": {"models": [{"name": "tiny", "dtype": "float16", "config": TINY_LLAMA}],
                                 "tasks": [{"name": "synthetic-sentiment", "train_size": 16, "dev_size": 8,
                                            "test_size": 8}],
                                 "methods": [{"name": "fo-adam", "lr": 0.001}]}})
    suite, lines = load_suite(path)
    (spec,) = expand(suite, path, lines)
    assert spec.hashed()["method"]["params"]["mixed_precision"] == "auto"  # float16 weights: part of the id
    record = run(spec, Store(tmp_path / "results", "p"))
    assert record.status == "done", record.outcome.error
    assert record.cost.precision["autocast"] == "float16" and record.cost.precision["parameters"] == "float32"

    reference = json.loads((REPO / "baselines" / "reference" / "regression-cpu.json").read_text())["runs"]
    regression = REPO / "suites" / "regression-cpu.yaml"
    suite, lines = load_suite(regression)
    fo = [s for s in expand(suite, regression, lines) if s.method.name.startswith("fo-")]
    assert fo and all("mixed_precision" not in s.hashed()["method"]["params"] for s in fo)
    known = {k: v["spec_hash"] for k, v in reference.items()}
    for s in fo:
        key = s.run_id.rsplit("_", 1)[0]
        if key not in known:
            pytest.skip(f"{key} is not in the committed reference (the lead regenerates it)")
        assert s.spec_hash == known[key], key


def test_mixed_precision_is_checked_at_planning(write_suite):
    from zobench.config import load_suite
    from zobench.errors import UserError
    from zobench.grid import expand

    path = write_suite({"name": "p", "grid": {"models": [{"name": "tiny", "config": TINY_LLAMA}],
                                              "tasks": ["synthetic-sentiment"],
                                              "methods": [{"name": "fo-adam", "mixed_precision": "fp8"}]}})
    suite, lines = load_suite(path)
    with pytest.raises(UserError, match="mixed_precision"):
        expand(suite, Path(path), lines)
