"""Scoring options by log-likelihood, as MeZO classifies with a causal LM.

Each example becomes one sequence per option: prompt + option, left-padded so every option sits at
the end. Only the last positions are turned into logits (the loss needs nothing else), and an
option's score is the mean log-probability of its tokens. Training loss: cross-entropy over scores.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass
class Choice:
    prompt: str
    options: list[str]
    label: int


def encode(choices: list[Choice], tokenizer: Any, max_length: int, device: torch.device) -> dict[str, Any]:
    """Left-padded ids for every (example, option) pair, the mask of option tokens, and labels."""
    n_opts = len(choices[0].options)
    if any(len(c.options) != n_opts for c in choices):
        raise ValueError("every example in a batch needs the same number of options")
    rows, opt_lens = [], []
    for c in choices:
        prompt_ids = tokenizer(c.prompt, add_special_tokens=True)["input_ids"]
        for opt in c.options:
            opt_ids = tokenizer(opt, add_special_tokens=False)["input_ids"]
            keep = max(1, max_length - len(opt_ids))
            rows.append(prompt_ids[-keep:] + opt_ids)
            opt_lens.append(len(opt_ids))
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    opt_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (r, n) in enumerate(zip(rows, opt_lens, strict=True)):
        ids[i, width - len(r):] = torch.tensor(r)
        attn[i, width - len(r):] = 1
        opt_mask[i, width - n:] = True
    return {
        "input_ids": ids.to(device), "attention_mask": attn.to(device), "option_mask": opt_mask.to(device),
        "labels": torch.tensor([c.label for c in choices], device=device), "n_options": n_opts,
        "keep": max(opt_lens) + 1,
    }


def _accepts(model: torch.nn.Module, name: str) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return name in inspect.signature(base.forward).parameters


def option_scores(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """[examples, options] mean log-likelihood of each option given its prompt."""
    keep = batch["keep"]
    kwargs: dict[str, Any] = {}
    if _accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = keep
    if _accepts(model, "position_ids"):  # left padding: positions count real tokens only
        kwargs["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs).logits
    logits = logits[:, -keep:-1]
    targets = batch["input_ids"][:, -keep + 1:]
    mask = batch["option_mask"][:, -keep + 1:].to(logits.dtype if logits.is_floating_point() else torch.float)
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    scores = (logp * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return scores.view(-1, batch["n_options"])


def choice_loss(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    return F.cross_entropy(option_scores(model, batch), batch["labels"])
