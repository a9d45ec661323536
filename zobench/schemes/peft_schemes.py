"""Parameter-efficient tuning schemes through peft: LoRA, prefix tuning, prompt tuning.

`apply` wraps the model and freezes everything but the scheme's parameters, so a method (ZO or
first-order) sees only those as trainable: ZO perturbs nothing else. Defaults follow MeZO
(LoRA r=8, alpha=16 on the attention query/value projections; 5 prefix tokens) and ZO-Bench
(prompt tuning with 10 virtual tokens). peft's prefix tuning stands in for MeZO's own (which can
initialise prefixes from real activations). peft's prompt tuning drops position ids, so the causal
scorer (tasks/scoring.py) prepends the soft prompt itself, with positions that skip the left padding.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveInt

from zobench.errors import UserError
from zobench.registry import schemes
from zobench.schemes.base import Scheme


def _task_type(model: torch.nn.Module) -> Any:
    from peft import TaskType

    is_causal = any(name.endswith("ForCausalLM") for name in (type(model).__name__,))
    return TaskType.CAUSAL_LM if is_causal else TaskType.FEATURE_EXTRACTION


def _wrap(model: torch.nn.Module, config: Any, scheme: str) -> torch.nn.Module:
    from peft import get_peft_model

    try:
        wrapped = get_peft_model(model, config)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise UserError(f"scheme '{scheme}': peft cannot apply it to {type(model).__name__} ({e}); check the "
                        f"scheme's parameters (e.g. target_modules) for this architecture") from None
    if not any(p.requires_grad for p in wrapped.parameters()):
        raise UserError(f"scheme '{scheme}' left no trainable parameter in {type(model).__name__}")
    return wrapped


class LoRAParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    r: PositiveInt = 8
    alpha: float = Field(16.0, gt=0)
    dropout: NonNegativeFloat = 0.0
    target_modules: list[str] | None = None  # None: peft's default for the architecture (q/v projections)


@schemes.register("lora")
class LoRA(Scheme):
    """LoRA (Hu et al. 2022): low-rank adapters on the target modules; the base weights stay frozen."""

    Params: ClassVar[type[BaseModel]] = LoRAParams

    @staticmethod
    def apply(model: torch.nn.Module, params: dict[str, Any]) -> torch.nn.Module:
        from peft import LoraConfig

        p = LoRAParams.model_validate(params)
        config = LoraConfig(r=p.r, lora_alpha=p.alpha, lora_dropout=p.dropout, target_modules=p.target_modules,
                            task_type=_task_type(model))
        return _wrap(model, config, "lora")


class PrefixParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_virtual_tokens: PositiveInt = 5  # MeZO: 5 prefix tokens
    projection: bool = False  # reparameterise the prefix through an MLP (Li & Liang 2021)


@schemes.register("prefix")
class Prefix(Scheme):
    """Prefix tuning (Li & Liang 2021): trainable keys/values prepended at every layer (peft)."""

    Params: ClassVar[type[BaseModel]] = PrefixParams

    @staticmethod
    def apply(model: torch.nn.Module, params: dict[str, Any]) -> torch.nn.Module:
        from peft import PrefixTuningConfig

        p = PrefixParams.model_validate(params)
        config = PrefixTuningConfig(num_virtual_tokens=p.num_virtual_tokens, prefix_projection=p.projection,
                                    task_type=_task_type(model))
        return _wrap(model, config, "prefix")


class PromptParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_virtual_tokens: PositiveInt = 10
    init_text: str | None = None  # initialise the soft prompt from this text's embeddings (else random)


@schemes.register("prompt")
class PromptTuning(Scheme):
    """Prompt tuning (Lester et al. 2021): trainable input embeddings prepended to every sequence (peft)."""

    Params: ClassVar[type[BaseModel]] = PromptParams

    @staticmethod
    def apply(model: torch.nn.Module, params: dict[str, Any]) -> torch.nn.Module:
        from peft import PromptTuningConfig, PromptTuningInit

        p = PromptParams.model_validate(params)
        extra: dict[str, Any] = {}
        if p.init_text:
            name = getattr(model.config, "_name_or_path", "") or None
            if not name:
                raise UserError("scheme 'prompt': init_text needs a model loaded from a path or hub id (its tokenizer)")
            extra = {"prompt_tuning_init": PromptTuningInit.TEXT, "prompt_tuning_init_text": p.init_text,
                     "tokenizer_name_or_path": name}
        config = PromptTuningConfig(num_virtual_tokens=p.num_virtual_tokens, task_type=_task_type(model), **extra)
        return _wrap(model, config, "prompt")
