"""QZO (arXiv 2505.13430) and the Q4_1 layer it trains: the update rule by hand, codes frozen, scales-only state.

Every model here is a tiny synthetic stack of `Q4Linear` layers whose codes, scales and minimums the test
makes itself; nothing loads SmolLM2.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_golden import Recorder, close, injected, z_of

from zobench import registry
from zobench.errors import UserError
from zobench.models.quantized import Q4Linear, quantized_layers, weight_bytes

DT = torch.float64


def pack(q: torch.Tensor) -> torch.Tensor:
    """(out, blocks, 32) codes 0..15 → (out, blocks, 16) bytes: values 0-15 in the low nibbles, 16-31 in the high."""
    return (q[..., :16] | (q[..., 16:] << 4)).to(torch.uint8)


Batch = tuple[torch.nn.Module, list[torch.Tensor], torch.Tensor, torch.Tensor]


def tiny(seed: int = 0, dtype: torch.dtype = DT) -> Batch:
    """A 64 → 32 → 4 network of two Q4 layers, its codes (0..15, unpacked) and a fixed batch (x, y)."""
    gen = torch.Generator().manual_seed(seed)
    layers, codes = [], []
    for out, inp in ((32, 64), (4, 32)):
        q = torch.randint(0, 16, (out, inp // 32, 32), generator=gen, dtype=torch.uint8)
        d = (torch.rand(out, inp // 32, generator=gen, dtype=dtype) + 0.5) / 15
        m = -7.5 * d + 0.01 * torch.randn(out, inp // 32, generator=gen, dtype=dtype)
        layers.append(Q4Linear(pack(q), d, m))
        codes.append(q)
    model = torch.nn.Sequential(layers[0], torch.nn.Tanh(), layers[1])
    x = torch.randn(16, 64, generator=gen, dtype=dtype)
    y = torch.randn(16, 4, generator=gen, dtype=dtype)
    return model, codes, x, y


def by_hand(codes: list[torch.Tensor], scales: list[torch.Tensor], minimums: list[torch.Tensor],
            x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The same network with W = d·q + m written out from the unpacked codes."""
    h = x
    for k, (q, d, m) in enumerate(zip(codes, scales, minimums, strict=True)):
        w = (d.unsqueeze(-1) * q.to(d.dtype) + m.unsqueeze(-1)).flatten(1)
        h = h @ w.T
        if k == 0:
            h = torch.tanh(h)
    return ((h - y) ** 2).mean()


def test_q4linear_is_d_times_code_plus_minimum():
    model, codes, x, y = tiny()
    layers = quantized_layers(model)
    expected = by_hand(codes, [m.scales.detach() for m in layers], [m.minimums.detach() for m in layers], x, y)
    close(((model(x) - y) ** 2).mean().detach(), expected, "Q4Linear forward")
    for layer, q in zip(layers, codes, strict=True):
        assert torch.equal(layer.unpacked(), q)


def test_q4linear_reads_gguf_q4_1_blocks_as_gguf_does():
    """GGUF's own Q4_1 quantizer and de-quantizer (gguf-py) against `from_blocks` on the same bytes."""
    quants = pytest.importorskip("gguf.quants")
    from gguf import GGMLQuantizationType

    weight = np.random.default_rng(0).standard_normal((8, 96)).astype(np.float32)
    raw = quants.quantize(weight, GGMLQuantizationType.Q4_1)
    layer = Q4Linear.from_blocks(raw)
    assert (layer.in_features, layer.out_features) == (96, 8)
    expected = torch.from_numpy(quants.dequantize(raw, GGMLQuantizationType.Q4_1))
    assert torch.equal(layer.dequantized(), expected)  # same float16 d, m and codes: the same float32 numbers


@pytest.mark.parametrize("engine", ["inplace", "virtual"])
def test_qzo_step_is_clipped_zo_sgd_on_the_scales(engine):
    """maifoundations/QZO trainer.py ZOTrainer.zo_step / zo_update: g = (L(d+εz) − L(d−εz))/2ε over the scales,
    g ← clip(g, −C, C), d ← max(d − η·g·z, floor); codes and minimums untouched. Either engine (the in-place
    one writes d ± εz into the scales, the virtual one shows it to Q4Linear's forward through views)."""
    model, codes, x, y = tiny()
    layers = quantized_layers(model)
    rec = Recorder()
    lr, eps, clip, floor = 0.05, 1e-3, 0.05, 0.03
    method = injected("qzo", list(model.parameters()), rec, lr=lr, eps=eps, clip=clip, scale_floor=floor,
                      engine=engine)
    assert [id(p) for p in method.params] == [id(m.scales) for m in layers]

    scales = [m.scales.detach().clone() for m in layers]
    minimums = [m.minimums.detach().clone() for m in layers]
    clipped = floored = 0
    for _ in range(3):
        method.step(lambda: ((model(x) - y) ** 2).mean())
        keys = rec.step_keys()
        z = [z_of(keys, rec, i) for i in range(len(scales))]
        plus = by_hand(codes, [d + eps * zi for d, zi in zip(scales, z, strict=True)], minimums, x, y)
        minus = by_hand(codes, [d - eps * zi for d, zi in zip(scales, z, strict=True)], minimums, x, y)
        g = float(plus - minus) / (2 * eps)
        clipped += abs(g) > clip
        g = min(max(g, -clip), clip)
        moved = [d - lr * g * zi for d, zi in zip(scales, z, strict=True)]
        floored += sum(int((t < floor).sum()) for t in moved)
        scales = [t.clamp(min=floor) for t in moved]
    assert clipped and floored, "the case must exercise both the clipping and the floor"
    for layer, d, m, q in zip(layers, scales, minimums, codes, strict=True):
        close(layer.scales.detach(), d, "qzo scales")
        assert torch.equal(layer.minimums.detach(), m)
        assert torch.equal(layer.unpacked(), q)


def test_codes_never_change_and_the_trained_state_is_the_scales_only():
    model, codes, x, y = tiny(dtype=torch.float32)
    layers = quantized_layers(model)
    before = [m.codes.clone() for m in layers]
    mins = [m.minimums.detach().clone() for m in layers]
    method_cls = registry.methods.get("qzo")
    method = method_cls(list(model.parameters()), method_cls.Params(lr=1e-3, eps=1e-3), seed=0)
    start = [m.scales.detach().clone() for m in layers]
    for _ in range(5):
        method.step(lambda: ((model(x) - y) ** 2).mean())
    method.settle()
    for layer, b, m, s in zip(layers, before, mins, start, strict=True):
        assert torch.equal(layer.codes, b) and layer.codes.dtype == torch.uint8
        assert torch.equal(layer.minimums.detach(), m)
        assert not torch.equal(layer.scales.detach(), s)
    trained = sum(p.numel() * p.element_size() for p in method.params)
    assert trained == sum(m.out_features * m.in_features // 32 * 4 for m in layers)  # one float32 d per block
    assert method.state_bytes() == 0
    sizes = weight_bytes(model)
    # per block of 32 weights: 16 bytes of codes, a float32 scale and a float32 minimum
    assert sizes["quantized_layer_bytes"] == sum(m.out_features * m.in_features * (16 + 4 + 4) // 32 for m in layers)
    assert sizes["dequantized_float32_layer_bytes"] == sum(m.out_features * m.in_features * 4 for m in layers)
    assert sizes["model_weight_bytes"] == sizes["quantized_layer_bytes"]  # no other weights in this model
    method.match_model(model)
    assert method.precision()["quantized_layer_bytes"] == sizes["quantized_layer_bytes"]


def test_scales_and_minimums_option_trains_both():
    model, _, x, y = tiny()
    layers = quantized_layers(model)
    method_cls = registry.methods.get("qzo")
    method = method_cls(list(model.parameters()), method_cls.Params(train="scales+minimums"), seed=0)
    assert {id(p) for p in method.params} == {id(t) for m in layers for t in (m.scales, m.minimums)}
    mins = [m.minimums.detach().clone() for m in layers]
    method.step(lambda: ((model(x) - y) ** 2).mean())
    method.settle()
    assert any(not torch.equal(m.minimums.detach(), b) for m, b in zip(layers, mins, strict=True))


def run_scales(seed: int) -> list[torch.Tensor]:
    model, _, x, y = tiny(dtype=torch.float32)
    method_cls = registry.methods.get("qzo")
    method = method_cls(list(model.parameters()), method_cls.Params(lr=1e-3), seed=seed)
    for _ in range(3):
        method.step(lambda: ((model(x) - y) ** 2).mean())
    method.settle()
    return [m.scales.detach().clone() for m in quantized_layers(model)]


def test_same_seed_same_scales_other_seed_other_scales():
    a, b, c = run_scales(0), run_scales(0), run_scales(1)
    assert all(torch.equal(s, t) for s, t in zip(a, b, strict=True))
    assert not all(torch.equal(s, t) for s, t in zip(a, c, strict=True))


def test_qzo_refuses_a_model_without_quantized_layers():
    model = torch.nn.Linear(4, 2)
    method_cls = registry.methods.get("qzo")
    with pytest.raises(UserError, match="smollm2-q4"):
        method_cls(list(model.parameters()), method_cls.Params(), seed=0)


def test_qzo_refuses_weight_decay():
    from zobench.errors import FieldError

    method_cls = registry.methods.get("qzo")
    with pytest.raises(FieldError, match="weight_decay"):
        method_cls.check(method_cls.Params(weight_decay=0.1).model_dump())


def test_qzo_and_the_quantized_model_are_registered():
    assert "qzo" in registry.methods.names()
    assert "smollm2-q4" in registry.models.names()


def test_report_weights_table_compares_held_and_float32_bytes():
    from types import SimpleNamespace

    from zobench.report.quantized import MIB, weights_table

    sizes = {"quantized_layer_bytes": 3 * MIB, "dequantized_float32_layer_bytes": 16 * MIB,
             "model_weight_bytes": 5 * MIB}  # 2 MiB of float32 tensors besides the Q4 layers
    record = SimpleNamespace(spec=SimpleNamespace(method=SimpleNamespace(name="qzo")),
                             cost=SimpleNamespace(precision={"weights": "q4_1", **sizes}))
    table = weights_table([(None, record)])
    assert table.loc["Q4_1 linear layers"].tolist() == [3.0, 16.0, round(16 / 3, 2)]
    assert table.loc["whole model"].tolist() == [5.0, 18.0, 3.6]


def test_from_float_quantizes_as_gguf_does():
    quants = pytest.importorskip("gguf.quants")
    from gguf import GGMLQuantizationType

    weight = np.random.default_rng(1).standard_normal((6, 64)).astype(np.float32)
    weight[0, :32] = 0.25  # a constant block: d = 0
    layer = Q4Linear.from_float(torch.from_numpy(weight))
    expected = Q4Linear.from_blocks(quants.quantize(weight, GGMLQuantizationType.Q4_1))
    for name in ("codes", "scales", "minimums"):
        assert torch.equal(getattr(layer, name), getattr(expected, name)), name


TINY_Q4 = """
name: qzo-tiny
defaults: {steps: 4, batch_size: 4, eval_every: 2, device: cpu}
grid:
  models:
    - {name: tiny-q4, label: tiny-q4, config: {model_type: llama, hidden_size: 32, intermediate_size: 64,
       num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 2, max_position_embeddings: 64}}
    - {name: tiny, label: tiny-float, config: {model_type: llama, hidden_size: 32, intermediate_size: 64,
       num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 2, max_position_embeddings: 64}}
  tasks:
    - {name: synthetic-sentiment, train_size: 16, dev_size: 8, test_size: 8, max_length: 32}
  methods:
    - {name: qzo, lr: 0.001}
  seeds: [0]
"""


def test_qzo_runs_through_the_runner_on_a_quantized_model_and_refuses_a_float_one(tmp_path):
    from zobench import runner
    from zobench.cli import plan
    from zobench.store import Store

    suite = tmp_path / "qzo-tiny.yaml"
    suite.write_text(TINY_Q4)
    _, specs = plan(suite)
    records = {s.model.label: runner.run(s, Store(tmp_path / "results", s.suite)) for s in specs}
    done = records["tiny-q4"]
    assert done.outcome.status == "done", done.outcome.error
    # one d per row and block of 32 inputs: q, k, v, o (32 rows × 1 block), gate, up (64 × 1), down (32 × 2)
    assert done.cost.trainable_params == 4 * 32 + 2 * 64 + 32 * 2 and done.cost.state_bytes == 0
    assert done.cost.precision["weights"] == "q4_1"
    refused = records["tiny-float"]
    assert refused.outcome.status == "failed" and "smollm2-q4" in refused.outcome.error


@pytest.mark.parametrize("engine", ["virtual", "inplace"])
def test_lr_zero_leaves_the_scales_as_they_were_and_the_state_holds_nothing(engine):
    """tests/test_methods.py's family checks, on a quantized model (qzo refuses its plain networks): lr = 0
    leaves θ bit-identical with the virtual engine and restored up to rounding in place; no tensor kept."""
    from test_methods import _held_tensors, make

    model, _, x, y = tiny(dtype=torch.float32)
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    method = make("qzo", params, lr=0.0, engine=engine)
    for _ in range(3):
        method.step(lambda: ((model(x) - y) ** 2).mean())
    method.settle()
    for a, b in zip(before, params, strict=True):
        if engine == "virtual":
            assert torch.equal(a, b.detach())
        else:  # θ + εz − 2εz + εz in float32
            torch.testing.assert_close(b.detach(), a, rtol=0, atol=4 * torch.finfo(torch.float32).eps * a.abs().max())
    assert _held_tensors(method, method.params) == [] and method.state_bytes() == 0
