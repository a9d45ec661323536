"""Scoring options by log-likelihood, as MeZO classifies with a causal LM.

Each example becomes one sequence per option: prompt + option, left-padded so every option sits at
the end. Only the last positions are turned into logits (the loss needs nothing else), and an
option's score is the mean log-probability of its tokens. Training losses:
- `choice_loss`: cross-entropy over the options' scores (MeZO's classification tasks);
- `answer_loss`: teacher forcing on the correct option only, token-mean NLL (MeZO's multiple-choice and
  generation tasks).
Masked LMs (LM-BFF prompts) are scored at the mask position instead: see `tasks/masked.py`.
Examples may have different numbers of options (ReCoRD); missing options score -inf.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F

from zobench.tasks.choice import Choice, prompt_learning
from zobench.tasks.masked import mask_scores

__all__ = ["Choice", "answer_loss", "choice_loss", "encode", "option_logprobs", "option_scores", "prompt_learning"]


def context_ids(tokenizer: Any, prompt: str) -> list[int]:
    """Prompt ids with the tokenizer's special tokens; never empty, so the first option token has a context."""
    ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    if not ids:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ids = [start if start is not None else 0]
    return ids


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts a BOS token in front of every text (MeZO's `tokenizer.add_bos_token`)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    return tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos] != \
        tokenizer("a", add_special_tokens=False)["input_ids"][:1]


def truncate_left(ids: list[int], max_length: int, keep_first: bool) -> list[int]:
    """MeZO's truncation (large_models/utils.py:163-166): drop tokens from the left, keeping the BOS token."""
    if len(ids) <= max_length:
        return ids
    return ids[:1] + ids[1:][-(max_length - 1):] if keep_first else ids[-max_length:]


def encode(choices: list[Choice], tokenizer: Any, max_length: int, device: torch.device,
           only_correct: bool = False, bos_id: int | None = None) -> dict[str, Any]:
    """Left-padded ids for every (example, option) pair, the mask of option tokens, and labels.

    `only_correct`: one row per example, its correct option (teacher forcing). A sequence longer than
    `max_length` loses tokens from the left but keeps the tokenizer's BOS, as MeZO's encoder does. `bos_id`
    replaces that BOS (MeZO gives OPT id 0: run.py:174-176).
    """
    keep_first = adds_bos(tokenizer)
    rows, opt_lens, counts = [], [], []
    for c in choices:
        prompt_ids = context_ids(tokenizer, c.prompt)
        if keep_first and bos_id is not None:
            prompt_ids = [bos_id, *prompt_ids[1:]]
        options = [c.options[c.label]] if only_correct else c.options
        counts.append(len(options))
        for opt in options:
            opt_ids = tokenizer(opt, add_special_tokens=False)["input_ids"][: max_length - 1 - keep_first] or [0]
            rows.append(truncate_left(prompt_ids + opt_ids, max_length, keep_first))
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
    labels = [0 if only_correct else c.label for c in choices]
    return {
        "kind": "causal", "input_ids": ids.to(device), "attention_mask": attn.to(device),
        "option_mask": opt_mask.to(device), "labels": torch.tensor(labels, device=device),
        "counts": counts, "keep": max(opt_lens) + 1,
    }


def _base(model: torch.nn.Module) -> torch.nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _accepts(model: torch.nn.Module, name: str) -> bool:
    return name in inspect.signature(_base(model).forward).parameters


def option_logprobs(model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed log-probability of its option tokens, and how many there are."""
    keep = batch["keep"]
    kwargs: dict[str, Any] = {}
    if _accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = keep
    if _accepts(model, "use_cache"):
        kwargs["use_cache"] = False  # a scorer reads no past: build no key/value cache (memory; compiled layers)
    ids, attn = batch["input_ids"], batch["attention_mask"]
    virtual = prompt_learning(model)
    if virtual and _accepts(model, "position_ids"):
        # peft's prompt tuning drops position_ids, so left padding would sit between the soft prompt and
        # the text and move the text's positions: prepend the prompt here, as peft does, with positions
        words = model.get_input_embeddings()(ids)
        embeds = torch.cat([model.get_prompt(batch_size=ids.shape[0]).to(words.dtype), words], dim=1)
        mask = torch.cat([attn.new_ones(ids.shape[0], virtual), attn], dim=1)
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = _base(model)(inputs_embeds=embeds, attention_mask=mask, **kwargs).logits
    else:
        if _accepts(model, "position_ids"):
            kwargs["position_ids"] = (attn.cumsum(-1) - 1).clamp(min=0)  # left padding
        logits = model(input_ids=ids, attention_mask=attn, **kwargs).logits
    logits = logits[:, -keep:-1]
    targets = batch["input_ids"][:, -keep + 1:]
    mask = batch["option_mask"][:, -keep + 1:].float()
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (logp * mask).sum(-1), mask.sum(-1)


def _per_example(flat: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Rows of options → [examples, max options], -inf where an example has fewer options."""
    if len(set(counts)) == 1:
        return flat.view(len(counts), counts[0])
    out = flat.new_full((len(counts), max(counts)), float("-inf"))
    start = 0
    for i, n in enumerate(counts):
        out[i, :n] = flat[start:start + n]
        start += n
    return out


def option_scores(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """[examples, options]: mean log-likelihood of each option (causal) or its logit at the mask (masked)."""
    if batch["kind"] == "masked":
        return mask_scores(model, batch)
    total, count = option_logprobs(model, batch)
    return _per_example(total / count.clamp(min=1), batch["counts"])


def choice_loss(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    return F.cross_entropy(option_scores(model, batch), batch["labels"])


def answer_loss(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """Teacher forcing on the correct answer only: NLL averaged over all answer tokens of the batch."""
    total, count = option_logprobs(model, batch)
    return -total.sum() / count.sum().clamp(min=1)
