"""Hugging Face models: by hub id or local path, or random-initialised from an inline config."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict

from zobench.errors import UserError
from zobench.models.base import ModelBundle, ModelLoader
from zobench.models.byte_tokenizer import byte_tokenizer
from zobench.registry import models

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MASKED_TYPES = {"bert", "roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2", "xlm-roberta"}


class HFParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    revision: str | None = None
    tokenizer: str | None = None  # defaults to the model's own


class TinyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    config: dict[str, Any]  # a transformers config: model_type plus its fields
    tokenizer: str = "bytes"  # "bytes" (made in code) or a hub id / local path
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


def _tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    if name == "bytes":
        return byte_tokenizer()
    tok = AutoTokenizer.from_pretrained(name)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _auto_class(model_type: str) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    return AutoModelForMaskedLM if model_type in MASKED_TYPES else AutoModelForCausalLM


@models.register("hf")
class HFModel(ModelLoader):
    """A pretrained model by hub id or local path (transformers' from_pretrained)."""

    Params = HFParams

    @classmethod
    def load(cls, params: dict[str, Any], device: torch.device, seed: int) -> ModelBundle:
        from transformers import AutoConfig

        p = HFParams.model_validate(params)
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
