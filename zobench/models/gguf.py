"""GGUF checkpoints rebuilt into ordinary, trainable transformers models.

transformers reads a GGUF file (`gguf_file=`, needs the `gguf` package) by de-quantising every tensor
to floating point, but it keeps the GGUF quantizer on the model, which marks it as quantised: Trainer
and peft then refuse to fine-tune it. Here the de-quantised weights are copied into a model built from
the same config without the quantization config, so every parameter is a plain trainable tensor.
A quantised checkpoint (e.g. Q4_1) stays a quantised *approximation* of the original weights: the
rebuilt model is the de-quantised network, not the full-precision original.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
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


CACHE_FORMAT = 1  # bump when what is written to the cache changes


def cache_root() -> Path:
    """$ZOBENCH_CACHE, else $XDG_CACHE_HOME/zobench, else ~/.cache/zobench (the bench's cache root too)."""
    root = os.environ.get("ZOBENCH_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "zobench")
    return Path(root).expanduser()


@lru_cache(maxsize=16)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            sha.update(chunk)
    return sha.hexdigest()


def converted_dir(source: Path) -> Path:
    """Where the rebuilt model of a GGUF file is kept: keyed by the file's contents, the transformers
    version that de-quantised it and CACHE_FORMAT, so a changed file or library converts again."""
    import transformers

    stat = source.stat()
    key = hashlib.sha256(f"{_digest(str(source.resolve()), stat.st_size, stat.st_mtime_ns)} "
                         f"{transformers.__version__} {CACHE_FORMAT}".encode()).hexdigest()[:16]
    return cache_root() / "gguf" / f"{source.stem}-{key}"


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """transformers draws a bar per de-quantised tensor group and per loaded checkpoint: noise in a suite's log."""
    from transformers.utils import logging

    bars = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            logging.enable_progress_bar()


def load_gguf(folder: str | Path, gguf_file: str, dtype: torch.dtype, kind_class: Any) -> tuple[Any, Any]:
    """(trainable model, tokenizer) from `folder/gguf_file`; `kind_class` is AutoModelForCausalLM or similar.

    A local file is de-quantised once and its rebuilt model kept under cache_root()/gguf/ (float32
    safetensors and the tokenizer); later loads read that copy, the same numbers without the conversion.
    """
    from transformers import AutoTokenizer

    need_gguf_package()
    source = Path(folder) / gguf_file
    if not source.is_file() and Path(folder).exists():
        raise UserError(f"{source}: GGUF file not found")
    if source.is_file():
        cached = converted_dir(source)
        if not (cached / "config.json").is_file():
            _convert(str(folder), gguf_file, kind_class, cached)
        with _no_progress_bars():
            model = kind_class.from_pretrained(str(cached), dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(cached))
        model.requires_grad_(True)
    else:  # a hub repository: transformers' own download cache holds the file; converted each time
        with _no_progress_bars():
            model = rebuild_trainable(kind_class.from_pretrained(str(folder), gguf_file=gguf_file,
                                                                 dtype=torch.float32), dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _convert(folder: str, gguf_file: str, kind_class: Any, target: Path) -> None:
    """De-quantise, rebuild trainable in float32 and save to `target`, written beside it and renamed into
    place, so a killed conversion leaves nothing and two processes converting at once keep one copy."""
    from transformers import AutoTokenizer

    with _no_progress_bars():
        model = rebuild_trainable(kind_class.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32),
                                  torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-partial-"))
    try:
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        try:
            partial.rename(target)
        except OSError:  # another process put its copy there first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)


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
