"""GGUF checkpoints rebuilt into ordinary, trainable transformers models.

transformers reads a GGUF file (`gguf_file=`, needs the `gguf` package) by de-quantising every tensor
to floating point, but it keeps the GGUF quantizer on the model, which marks it as quantised: Trainer
and peft then refuse to fine-tune it. Here the de-quantised weights are copied into a model built from
the same config without the quantization config, so every parameter is a plain trainable tensor.
A quantised checkpoint (e.g. Q4_1) stays a quantised *approximation* of the original weights: the
rebuilt model is the de-quantised network, not the full-precision original.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from zobench.errors import UserError


def need_gguf_package() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise UserError("reading a GGUF checkpoint needs the 'gguf' package: pip install 'gguf>=0.17.1' "
                        "(or pip install 'zobench[gguf]')") from None


def load_gguf(folder: str | Path, gguf_file: str, dtype: torch.dtype, kind_class: Any) -> tuple[Any, Any]:
    """(trainable model, tokenizer) from `folder/gguf_file`; `kind_class` is AutoModelForCausalLM or similar."""
    from transformers import AutoTokenizer

    need_gguf_package()
    folder = str(folder)
    if not (Path(folder) / gguf_file).is_file() and Path(folder).exists():
        raise UserError(f"{Path(folder) / gguf_file}: GGUF file not found")
    from transformers.utils import logging

    bars = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()  # one de-quantisation bar per tensor group is noise in a suite's log
    try:
        quantised = kind_class.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    finally:
        if bars:
            logging.enable_progress_bar()
    model = rebuild_trainable(quantised, dtype)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def rebuild_trainable(quantised: Any, dtype: torch.dtype) -> Any:
    """A fresh model of the same architecture, without the GGUF quantization config, holding the same weights."""
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(quantised)._from_config(config, dtype=dtype)
    missing, unexpected = model.load_state_dict(quantised.state_dict(), strict=False)
    missing = [k for k in missing if k not in _tied(model)]
    if missing or unexpected:
        raise RuntimeError(f"GGUF rebuild: state dicts differ (missing {missing[:5]}, unexpected {unexpected[:5]})")
    if getattr(quantised, "generation_config", None) is not None:
        model.generation_config = quantised.generation_config
    model.tie_weights()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def _tied(model: Any) -> set[str]:
    keys = getattr(model, "_tied_weights_keys", None) or []
    return set(keys if isinstance(keys, list | tuple | set) else keys.keys())
