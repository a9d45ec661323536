"""A model placed with accelerate's device_map (`settings.shard`, zobench/parallel/sharded.py) under the ZO engines.

On a CPU-only machine the pieces all sit on "cpu", yet the model is dispatched with accelerate's hooks as on
several GPUs: the in-place engine perturbs and updates each piece where it lives and the run equals the
undispatched one. Accelerate's own offload ("disk", or "cpu" beside GPUs) keeps weights as meta tensors
that a ZO step cannot move: refused, naming settings.offload.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import TINY_LLAMA

from zobench import runner
from zobench.cli import plan
from zobench.errors import UserError
from zobench.parallel.sharded import check_placement, device_map_for

CONFIG = {**TINY_LLAMA, "num_hidden_layers": 2}
PIECES = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu", "model.norm": "cpu",
          "model.rotary_emb": "cpu", "lm_head": "cpu"}


def _suite(shard: dict | None) -> dict:
    return {"name": "shard", "defaults": {"steps": 4, "batch_size": 4, "eval_every": 2, "device": "cpu",
                                          **({"shard": shard} if shard else {})},
            "grid": {"models": [{"name": "tiny", "config": CONFIG}],
                     "tasks": [{"name": "synthetic-sentiment", "train_size": 16, "dev_size": 8, "test_size": 8}],
                     "methods": [{"name": "zo-sgd", "lr": 1e-3, "eps": 1e-3, "engine": "inplace"}], "seeds": [0]}}


def _run(write_suite, tmp_path, shard: dict | None, name: str):
    from zobench.store import Store

    _, specs = plan(write_suite(_suite(shard), f"{name}.yaml"))
    store = Store(tmp_path / name, specs[0].suite)
    record = runner.run(specs[0], store)
    curve = pd.read_parquet(store.run_dir(specs[0].run_id) / "curve.parquet") if record.status == "done" else None
    return record, curve


@pytest.mark.parametrize("shard", [{"device_map": PIECES}, {"device_map": "auto", "max_memory": {"cpu": "1GB"}}],
                         ids=["explicit", "auto"])
def test_sharded_run_equals_the_plain_run(write_suite, tmp_path, shard):
    plain, pc = _run(write_suite, tmp_path, None, "plain")
    sharded, sc = _run(write_suite, tmp_path, shard, "sharded")
    assert sharded.status == "done", sharded.outcome.error
    # the same operations on the same device: the same numbers
    pd.testing.assert_series_equal(pc["train_loss"], sc["train_loss"])
    assert plain.metrics.test == sharded.metrics.test
    layout = sharded.info["param_bytes_per_device"]
    assert layout == {"cpu": plain.cost.trainable_params * 4}
    assert sharded.info["peak_allocated_per_device"] == {}  # no GPU holds a piece here
    assert pc["dev_loss"].dropna().iloc[-1] != pc["dev_loss"].dropna().iloc[0]  # it trained


def test_disk_in_the_device_map_is_refused_naming_offload(write_suite, tmp_path):
    record, _ = _run(write_suite, tmp_path, {"device_map": {**PIECES, "model.layers.1": "disk"}}, "disk")
    assert record.status == "failed"
    assert "disk" in record.outcome.error and "settings.offload" in record.outcome.error


def test_meta_parameters_from_accelerate_offload_are_refused():
    from accelerate import cpu_offload
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**{**CONFIG, "vocab_size": 64}))
    check_placement(model)  # resident: fine
    cpu_offload(model, execution_device=torch.device("cpu"))
    with pytest.raises(UserError, match="settings.offload"):
        check_placement(model)


@pytest.mark.parametrize("strategy", ["sequential", "balanced"])
def test_named_maps_never_split_a_decoder_layer(strategy):
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**{**CONFIG, "vocab_size": 64}))
    placement = device_map_for(model, strategy, {"cpu": "1GB"})
    assert placement and all(not k.startswith("model.layers.") or k.count(".") == 2 for k in placement)


def test_zo_steps_through_accelerate_hooks_match_the_plain_model():
    """The hooks are there (each piece dispatched), and zo-sgd's in-place steps see the same θ ± εz through them."""
    import copy

    import torch.nn.functional as F
    from transformers import AutoConfig, AutoModelForCausalLM

    from zobench import registry
    from zobench.parallel.sharded import shard

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(AutoConfig.for_model(**{**CONFIG, "vocab_size": 64})).eval()
    ids = torch.randint(0, 64, (4, 10), generator=torch.Generator().manual_seed(1))
    cls = registry.methods.get("zo-sgd")
    hp = cls.Params.model_validate({"lr": 1e-2, "eps": 1e-3, "engine": "inplace"})
    models = [copy.deepcopy(base), shard(copy.deepcopy(base), PIECES, None)]
    assert hasattr(models[1].model.layers[0], "_hf_hook") and not hasattr(models[0].model.layers[0], "_hf_hook")
    losses = []
    for model in models:
        method = cls(list(model.parameters()), hp, 3)

        def loss(m=model):
            return F.cross_entropy(m(input_ids=ids).logits[:, :-1].reshape(-1, 64), ids[:, 1:].reshape(-1))

        with torch.no_grad():
            losses.append([method.step(loss) for _ in range(3)])
            method.settle()
    assert losses[0] == losses[1]
    assert all(torch.equal(a, b) for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True))
