"""peft schemes: only the scheme's parameters train, they change the model's output, ZO perturbs nothing else."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_LLAMA

from zobench import registry
from zobench.errors import UserError
from zobench.tasks.masked import encode_masked, mask_scores
from zobench.tasks.scoring import Choice, encode, option_scores, prompt_learning

CPU = torch.device("cpu")
TINY_BERT = {"model_type": "bert", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
             "num_attention_heads": 2, "max_position_embeddings": 128}
SCHEMES = [("lora", {"r": 4, "alpha": 8}), ("prefix", {"num_virtual_tokens": 3}),
           ("prompt", {"num_virtual_tokens": 3})]


def wrapped(config, tokenizer, scheme, params):
    bundle = registry.models.get("tiny").load({"config": config, "tokenizer": tokenizer}, CPU, 0)
    total = sum(p.numel() for p in bundle.model.parameters())
    model = registry.schemes.get(scheme).apply(bundle.model, params)
    model.eval()
    return model, bundle.tokenizer, total


def _scores_move_with_trainables(model, scores_fn):
    trainable = [p for p in model.parameters() if p.requires_grad]
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    with torch.no_grad():
        before = scores_fn()
        for p in trainable:
            p.add_(torch.randn_like(p) * 0.5)
        after = scores_fn()
    assert not torch.allclose(before, after)  # the scheme's parameters reach the scores
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)
    return trainable


@pytest.mark.parametrize("scheme,params", SCHEMES)
def test_causal_scheme_trains_only_its_parameters(scheme, params):
    model, tok, total = wrapped(TINY_LLAMA, "bytes", scheme, params)
    batch = encode([Choice("good fun", [" bad", " good"], 1), Choice("dull", [" bad", " good"], 0)], tok, 64, CPU)
    trainable = _scores_move_with_trainables(model, lambda: option_scores(model, batch))
    assert 0 < sum(p.numel() for p in trainable) < total / 10


@pytest.mark.parametrize("scheme,params", SCHEMES)
def test_masked_scheme_scores_at_the_mask(scheme, params):
    if scheme == "lora":
        params = {**params, "target_modules": ["query", "value"]}
    model, tok, _ = wrapped(TINY_BERT, "wordpiece", scheme, params)
    batch = encode_masked([Choice("fun movie . it was", [" terrible", " great"], 1, suffix=".")], tok, 32, CPU)
    assert prompt_learning(model) == (3 if scheme == "prompt" else 0)  # prompt tuning shifts the mask position
    if scheme == "prompt":
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        assert full.shape[1] == batch["input_ids"].shape[1] + 3
    _scores_move_with_trainables(model, lambda: mask_scores(model, batch))


def test_zo_perturbs_only_lora_parameters_in_a_run(write_suite, tmp_path):
    import json

    from typer.testing import CliRunner

    from zobench.cli import app

    path = write_suite({"name": "lora", "defaults": {"steps": 3, "batch_size": 4, "device": "cpu"},
                        "grid": {"models": [{"name": "tiny", "config": TINY_LLAMA}],
                                 "tasks": [{"name": "synthetic-sentiment", "train_size": 16, "dev_size": 8,
                                            "test_size": 8}],
                                 "methods": [{"name": "zo-sgd", "lr": 1e-2}],
                                 "schemes": ["full", {"name": "lora", "r": 2, "alpha": 4}]}})
    result = CliRunner().invoke(app, ["run", str(path), "--results", str(tmp_path / "r"), "--no-report"])
    assert result.exit_code == 0, result.output
    runs = {json.loads(f.read_text())["spec"]["scheme"]["name"]: json.loads(f.read_text())
            for f in (tmp_path / "r").rglob("summary.json")}
    assert runs["lora"]["status"] == "done", runs["lora"].get("error")
    assert 0 < runs["lora"]["trainable_params"] < runs["full"]["trainable_params"] / 10


def test_bad_target_modules_is_a_user_error():
    bundle = registry.models.get("tiny").load({"config": TINY_LLAMA}, CPU, 0)
    with pytest.raises(UserError, match="target_modules"):
        registry.schemes.get("lora").apply(bundle.model, {"target_modules": ["no_such_layer"]})


TINY_OPT = {"model_type": "opt", "hidden_size": 32, "ffn_dim": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
            "word_embed_proj_dim": 32, "max_position_embeddings": 128}


@pytest.mark.parametrize("config", [TINY_LLAMA, TINY_OPT], ids=["llama", "opt"])
@pytest.mark.parametrize("scheme,params", SCHEMES)
def test_an_examples_scores_do_not_depend_on_the_padding_its_batch_adds(config, scheme, params):
    """Left padding (scoring puts the options last) must not move positions: an example scores the same
    alone and beside a longer one — also under prompt tuning, whose peft forward drops position_ids."""
    model, tok, _ = wrapped(config, "bytes", scheme, params)
    short = Choice("fun", [" bad", " good"], 1)
    long = Choice("a much longer and rather dull review of a film", [" bad", " good"], 0)
    with torch.no_grad():
        alone = option_scores(model, encode([short], tok, 96, CPU))
        together = option_scores(model, encode([short, long], tok, 96, CPU))
    torch.testing.assert_close(together[0], alone[0], rtol=1e-6, atol=1e-6)  # llama + prompt was 1.5e-4 off
