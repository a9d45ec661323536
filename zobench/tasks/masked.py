"""Masked-LM prompting (LM-BFF, Gao et al. 2021; MeZO's medium-model setting).

A prompt reads `prompt <mask> suffix` between the tokenizer's special tokens; each option is a
verbalizer word whose (single) token is scored by the MLM head at the mask. Training: cross-entropy
over the verbalizer logits; prediction: their argmax. Only the mask position goes through the head,
so no [batch, length, vocabulary] tensor is built (peft prompt learning needs the full forward).
"""

from __future__ import annotations

from typing import Any

import torch

from zobench.errors import UserError
from zobench.tasks.choice import Choice, prompt_learning


def verbalizer_ids(tokenizer: Any, options: list[str]) -> list[int]:
    """One token per option, as LM-BFF requires; a word that splits is a user error naming it."""
    ids = []
    for opt in options:
        toks = tokenizer(opt, add_special_tokens=False)["input_ids"]
        if len(toks) != 1:
            pieces = tokenizer.convert_ids_to_tokens(toks)
            raise UserError(f"verbalizer word {opt!r} is {len(toks)} tokens {pieces} for this tokenizer; a masked-LM "
                            f"prompt needs one token per option: choose another word")
        ids.append(toks[0])
    return ids


def special_frame(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special tokens a tokenizer puts before and after a text ([CLS] … [SEP], <s> … </s>)."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i:i + len(bare)] == bare:
            return full[:i], full[i + len(bare):]
    return full[:1], full[1:]


def encode_masked(choices: list[Choice], tokenizer: Any, max_length: int, device: torch.device) -> dict[str, Any]:
    """Right-padded `[CLS] prompt <mask> suffix [SEP]`; the prompt loses tokens at its start and the suffix at
    its end (whichever is longer first) until the sequence fits."""
    if tokenizer.mask_token_id is None:
        raise UserError("this task scores a masked LM but the tokenizer has no mask token; use a BERT/RoBERTa-style "
                        "model and tokenizer")
    before, after = special_frame(tokenizer)
    budget = max_length - len(before) - len(after) - 1
    rows, mask_pos = [], []
    n_opts = len(choices[0].options)
    if any(len(c.options) != n_opts for c in choices):
        raise ValueError("every example of a masked-LM task needs the same options")
    cache: dict[tuple[str, ...], list[int]] = {}
    opt_ids = []
    for c in choices:
        head = tokenizer(c.prompt, add_special_tokens=False)["input_ids"] if c.prompt else []
        tail = tokenizer(c.suffix, add_special_tokens=False)["input_ids"] if c.suffix else []
        while len(head) + len(tail) > budget:
            if len(head) >= len(tail):
                head = head[1:]
            else:
                tail = tail[:-1]
        ids = before + head + [tokenizer.mask_token_id] + tail + after
        rows.append(ids)
        mask_pos.append(ids.index(tokenizer.mask_token_id))
        key = tuple(c.options)
        if key not in cache:
            cache[key] = verbalizer_ids(tokenizer, c.options)
        opt_ids.append(cache[key])
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids_t = torch.full((len(rows), width), pad, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids_t[i, :len(r)] = torch.tensor(r)
        attn[i, :len(r)] = 1
    return {
        "kind": "masked", "input_ids": ids_t.to(device), "attention_mask": attn.to(device),
        "mask_pos": torch.tensor(mask_pos, device=device), "option_ids": torch.tensor(opt_ids, device=device),
        "labels": torch.tensor([c.label for c in choices], device=device), "counts": [n_opts] * len(choices),
    }


def split_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(encoder, MLM head) of a *ForMaskedLM model, so the head runs at the mask only; None if unknown."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    encoder = getattr(base, "base_model", None)
    out = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if encoder is None or encoder is base or out is None:
        return None
    for _name, child in base.named_children():
        if child is not encoder and any(m is out for m in child.modules()):
            return encoder, child
    return None


def mask_scores(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """[examples, options]: the MLM logit of each option's verbalizer token at the mask."""
    rows = torch.arange(batch["input_ids"].shape[0], device=batch["input_ids"].device)
    parts = split_head(model)
    peft_prompt = getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False)
    if parts is not None and not peft_prompt:
        hidden = parts[0](input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        logits = parts[1](hidden[rows, batch["mask_pos"]])
    else:  # peft prompt learning: its forward adds virtual tokens (prompt tuning shifts positions)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logits = out[rows, batch["mask_pos"] + prompt_learning(model)]
    return logits.float().gather(-1, batch["option_ids"])
