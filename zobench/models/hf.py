"""Hugging Face models: by hub id or local path (or a GGUF file in it), or random-initialised from an inline config."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict

from zobench.errors import FieldError, UserError
from zobench.models.base import ModelBundle, ModelLoader
from zobench.models.byte_tokenizer import byte_tokenizer, wordpiece_tokenizer
from zobench.registry import models

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MASKED_TYPES = {"bert", "roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2", "xlm-roberta"}


class HFParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    revision: str | None = None
    tokenizer: str | None = None  # defaults to the model's own
    gguf_file: str | None = None  # a GGUF checkpoint in `id` (a folder or hub repo): de-quantised, rebuilt trainable


class TinyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    config: dict[str, Any]  # a transformers config: model_type plus its fields
    tokenizer: str = "bytes"  # "bytes" or "wordpiece" (made in code; wordpiece has [MASK]) or a hub id / local path
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


def _tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    if name == "bytes":
        return byte_tokenizer()
    if name == "wordpiece":
        return wordpiece_tokenizer()
    tok = AutoTokenizer.from_pretrained(name)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def check_source(field: str, name: str, revision: str | None = None, model: bool = True) -> None:
    """A local path must exist (with a config.json for a model); a hub id must be cached when the hub is offline."""
    path = Path(name)
    if path.exists():
        if model and not (path / "config.json").is_file():
            raise FieldError(field, f"'{name}' holds no config.json; point it at a folder written by save_pretrained")
        return
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:
        raise FieldError(field, f"path '{name}' does not exist (relative paths are from the current folder); "
                         f"fix the path or give a hub id")
    if model and _hub_offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json", revision=revision), str):
            raise FieldError(field, f"'{name}' is not in the local Hugging Face cache and the hub is offline "
                             f"(HF_HUB_OFFLINE); download it once online, or give a local path")


def _auto_class(model_type: str) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    return AutoModelForMaskedLM if model_type in MASKED_TYPES else AutoModelForCausalLM


def load_gguf_bundle(folder: str, gguf_file: str, dtype: str, device: torch.device,
                     tokenizer: str | None = None) -> ModelBundle:
    """A GGUF checkpoint as a trainable model (see models/gguf.py); causal LMs only."""
    from transformers import AutoModelForCausalLM

    from zobench.models.gguf import load_gguf

    model, tok = load_gguf(folder, gguf_file, DTYPES[dtype], AutoModelForCausalLM)
    return ModelBundle(model.to(device), _tokenizer(tokenizer) if tokenizer else tok, "causal")


@models.register("hf")
class HFModel(ModelLoader):
    """A pretrained model by hub id or local path (transformers' from_pretrained)."""

    Params = HFParams

    @classmethod
    def check(cls, params: dict[str, Any]) -> None:
        p = HFParams.model_validate(params)
        if p.gguf_file:
            if Path(p.id).is_dir() and not (Path(p.id) / p.gguf_file).is_file():
                raise FieldError("gguf_file", f"'{p.gguf_file}' is not in '{p.id}'; name a .gguf file in that folder")
            return
        check_source("id", p.id, p.revision)
        if p.tokenizer:
            check_source("tokenizer", p.tokenizer, model=False)

    @classmethod
    def load(cls, params: dict[str, Any], device: torch.device, seed: int) -> ModelBundle:
        from transformers import AutoConfig

        p = HFParams.model_validate(params)
        if p.gguf_file:
            return load_gguf_bundle(p.id, p.gguf_file, p.dtype, device, p.tokenizer)
        try:
            config = AutoConfig.from_pretrained(p.id, revision=p.revision)
        except OSError as e:
            raise UserError(f"model '{p.id}': cannot load it ({str(e).splitlines()[0]}); give a local path "
                            f"or a hub id reachable from here") from None
        model = _auto_class(config.model_type).from_pretrained(p.id, revision=p.revision, dtype=DTYPES[p.dtype])
        kind = "masked" if config.model_type in MASKED_TYPES else "causal"
        return ModelBundle(model.to(device), _tokenizer(p.tokenizer or p.id), kind)


@models.register("tiny")
class TinyModel(ModelLoader):
    """A random-initialised model from an inline transformers config (seeded), for tests and CPU demos."""

    Params = TinyParams

    @classmethod
    def check(cls, params: dict[str, Any]) -> None:
        p = TinyParams.model_validate(params)
        from transformers import CONFIG_MAPPING

        model_type = p.config.get("model_type")
        if not model_type:
            raise FieldError("config", "config needs 'model_type' (e.g. llama, opt, gpt2, bert)")
        if model_type not in CONFIG_MAPPING:
            close = difflib.get_close_matches(str(model_type), list(CONFIG_MAPPING.keys()), n=3)
            hint = f"did you mean {' or '.join(map(repr, close))}?" if close else "e.g. llama, opt, gpt2, bert"
            raise FieldError("config", f"unknown transformers model_type '{model_type}'; {hint}")
        if p.tokenizer not in ("bytes", "wordpiece"):
            check_source("tokenizer", p.tokenizer, model=False)
        from transformers import AutoConfig

        try:  # transformers validates each field's type (hidden_size: big) when the config is built: no weights
            AutoConfig.for_model(model_type, **{k: v for k, v in p.config.items() if k != "model_type"})
        except Exception as e:  # huggingface_hub's StrictDataclass errors, ValueError, TypeError
            raise FieldError("config", " ".join(str(e).split()) + "; fix that field of the model config") from None

    @classmethod
    def load(cls, params: dict[str, Any], device: torch.device, seed: int) -> ModelBundle:
        from transformers import AutoConfig

        p = TinyParams.model_validate(params)
        fields = dict(p.config)
        model_type = fields.pop("model_type", None)
        if not model_type:
            raise UserError("tiny model: config needs 'model_type' (e.g. llama, opt, gpt2, bert)")
        tokenizer = _tokenizer(p.tokenizer)
        fields.setdefault("vocab_size", len(tokenizer))
        fields.setdefault("pad_token_id", tokenizer.pad_token_id)
        fields.setdefault("bos_token_id", tokenizer.bos_token_id)
        fields.setdefault("eos_token_id", tokenizer.eos_token_id)
        config = AutoConfig.for_model(model_type, **fields)
        torch.manual_seed(seed)
        model = _auto_class(model_type).from_config(config, dtype=DTYPES[p.dtype])
        kind = "masked" if model_type in MASKED_TYPES else "causal"
        return ModelBundle(model.to(device), tokenizer, kind)
