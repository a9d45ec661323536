"""`compile: true`: the model's blocks run through torch.compile. A compiled run follows the eager run of the
same spec (the in-place ZO engine moves θ between the forwards of a compiled graph; Adam trains through
it) and repeats itself exactly; the planning check that refuses the virtual engine is in tests/malformed."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import TINY_LLAMA
from torch._dynamo.utils import counters

from zobench import runner
from zobench.cli import plan
from zobench.store import Store

SUITE = {
    "name": "compiled",
    "defaults": {"steps": 4, "batch_size": 4, "eval_every": 4},
    "grid": {
        "models": [{"name": "tiny", "label": "tiny-llama", "config": TINY_LLAMA}],
        "tasks": [{"name": "synthetic-sentiment", "train_size": 16, "dev_size": 8, "test_size": 8}],
        "methods": [{"name": "zo-sgd", "lr": 0.01, "engine": "inplace"}, {"name": "fo-adam", "lr": 0.01},
                    # its first step moves parameters into group buffers under the compiled blocks
                    {"name": "zo-sgd", "label": "zo-sgd-counter", "lr": 0.01, "engine": "inplace", "rng": "counter",
                     "direction": "rademacher"}],
        "seeds": [0],
    },
}


def _curves(write_suite, tmp_path, compile_: bool, folder: str) -> dict[str, pd.DataFrame]:
    suite = {**SUITE, "defaults": {**SUITE["defaults"], "compile": compile_}}
    _, specs = plan(write_suite(suite, f"{folder}.yaml"))
    out = {}
    torch._dynamo.reset()  # graphs another test compiled would be reused, uncounted
    counters.clear()
    for spec in specs:
        assert spec.settings.compile is compile_
        store = Store(tmp_path / folder, spec.suite)
        record = runner.run(spec, store)
        assert record.status == "done", record.outcome.error
        out[spec.method.label] = pd.read_parquet(store.run_dir(spec.run_id) / "curve.parquet")
    return out


def test_compiled_runs_follow_eager_ones_and_repeat(write_suite, tmp_path):
    eager = _curves(write_suite, tmp_path, False, "eager")
    counter_loops = counters["stats"]["unique_graphs"]  # rng: counter's own compiled loops, the forwards eager
    compiled = _curves(write_suite, tmp_path, True, "compiled")
    assert counters["stats"]["unique_graphs"] > counter_loops  # the forwards ran compiled too
    again = _curves(write_suite, tmp_path, True, "again")
    for method in ("zo-sgd", "fo-adam", "zo-sgd-counter"):
        cols = ["step", "train_loss", "dev_accuracy"]
        pd.testing.assert_frame_equal(compiled[method][cols], again[method][cols], check_exact=True)
        losses = compiled[method]["train_loss"].dropna()
        assert len(losses) == 4
        assert losses.to_numpy() == pytest.approx(eager[method]["train_loss"].dropna().to_numpy(), rel=1e-4)


@pytest.mark.parametrize("config, layer", [
    (TINY_LLAMA, "LlamaDecoderLayer"),
    ({"model_type": "opt", "hidden_size": 16, "ffn_dim": 32, "word_embed_proj_dim": 16, "num_hidden_layers": 2,
      "num_attention_heads": 2}, "OPTDecoderLayer"),  # OPT's head calls its decoder, not its base model
    ({"model_type": "bert", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
      "num_attention_heads": 2}, "BertLayer"),  # an MLM task calls the encoder, then the head at the mask
])
def test_the_compiled_blocks_are_the_transformer_layers_with_lora_inside(config, layer):
    from zobench import registry
    from zobench.models.base import blocks

    bundle = registry.models.get("tiny").load(
        {"config": config, **({"tokenizer": "wordpiece"} if config["model_type"] == "bert" else {})},
        torch.device("cpu"), 0)
    found = blocks(bundle.model)
    assert [type(b).__name__ for b in found] == [layer] * config["num_hidden_layers"]
    lora = registry.schemes.get("lora").apply(bundle.model, {"r": 2})
    assert [id(b) for b in blocks(lora)] == [id(b) for b in found]
    assert any("lora" in name for name, _ in found[0].named_modules())
    plain = torch.nn.Linear(3, 3)
    assert blocks(plain) == [plain]
