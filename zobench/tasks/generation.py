"""Generation tasks (MeZO's SQuAD and DROP): teacher forcing on the answer, greedy decoding, F1 and EM.

Prompt (MeZO): 'Title: <t>\\nContext: <c>\\nQuestion: <q>\\nAnswer:' (SQuAD) or 'Passage: <c>\\nQuestion:
<q>\\nAnswer:' (DROP); the trained continuation is ' <first gold answer>\\n'. Evaluation decodes greedily
up to `max_new_tokens` (MeZO: 50), stops at a newline, and scores SQuAD-normalised token F1 and exact match
against every gold answer (the best counts). `objective: f1|em` makes the batch's decoded F1 (or EM) the ZO
objective (MeZO Table 3, ZO-AdaMU Table 4): each step then decodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, PositiveInt

from zobench.errors import UserError
from zobench.models.base import ModelBundle
from zobench.registry import tasks
from zobench.tasks import metrics
from zobench.tasks.base import (
    NonDifferentiableObjective,
    PromptWorkload,
    Splits,
    Task,
    mezo_bos_id,
    mezo_sample,
    model_max_length,
)
from zobench.tasks.io import hub, read_json
from zobench.tasks.scoring import Choice, adds_bos, answer_loss, truncate_left


@dataclass
class Answerable(Choice):
    """A prompt whose single option is the trained answer; `answers` are every gold answer."""

    answers: list[str] = field(default_factory=list)


class GenerationParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data_dir: str | None = None
    train_size: PositiveInt = 1000
    dev_size: PositiveInt = 500
    test_size: PositiveInt = 1000
    max_length: PositiveInt = 2048  # MeZO's; capped by the model, less max_new_tokens when generating
    max_new_tokens: PositiveInt = 50
    eval_batch_size: PositiveInt = 8
    objective: Literal["loss", "f1", "em"] = "loss"


class GenerationTask(Task):
    Params: ClassVar[type[BaseModel]] = GenerationParams

    @classmethod
    def rows(cls, split: str, data_dir: str | None) -> list[dict[str, Any]] | None:
        """Rows {prompt fields..., answers: [str]}; None when a local copy lacks the train split."""
        raise NotImplementedError

    @classmethod
    def prompt(cls, row: dict[str, Any]) -> str:
        raise NotImplementedError

    @classmethod
    def render(cls, row: dict[str, Any]) -> Answerable:
        return Answerable(prompt=cls.prompt(row), options=[f" {row['answers'][0]}\n"], label=0,
                          answers=list(row["answers"]))

    @classmethod
    def build(cls, params: dict[str, Any], bundle: ModelBundle | None, device: torch.device, seed: int) -> Any:
        p = GenerationParams.model_validate(params)
        if bundle is None or bundle.kind != "causal":
            raise UserError(f"task '{cls.registered_name}' generates answers: it needs a causal LM")
        splits = cls.splits(p, seed)
        workload = generation_workload(p, splits.data, bundle, device, splits.note)
        workload.example_ids = dict(splits.ids)
        return workload

    @classmethod
    def splits(cls, p: GenerationParams, seed: int) -> Splits:
        """MeZO's sample of train, dev and test, rendered, with their row ids and how they were drawn."""
        sampled = mezo_sample(cls.rows("train", p.data_dir), cls.rows("validation", p.data_dir) or [], p, seed)
        return Splits({k: [cls.render(r) for r in v] for k, v in sampled.parts.items()}, sampled.ids, sampled.note)


def newline_ids(tokenizer: Any) -> list[int]:
    ids = {tokenizer("\n", add_special_tokens=False)["input_ids"][-1]}
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


def generate(model: torch.nn.Module, tokenizer: Any, prompts: list[str], max_length: int, max_new_tokens: int,
             device: torch.device, bos_id: int | None = None) -> list[str]:
    """Greedy continuations of left-padded prompts, cut at the first newline. Prompts keep their last
    max_length - max_new_tokens tokens and their BOS (MeZO's large_models/utils.py:157-166)."""
    keep_first = adds_bos(tokenizer)
    rows = []
    for pr in prompts:
        ids = tokenizer(pr, add_special_tokens=True)["input_ids"]
        if keep_first and bos_id is not None:
            ids = [bos_id, *ids[1:]]
        rows.append(truncate_left(ids, max_length - max_new_tokens, keep_first))
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        attn[i, width - len(r):] = 1
    out = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device), max_new_tokens=max_new_tokens,
                         do_sample=False, eos_token_id=newline_ids(tokenizer), pad_token_id=pad)
    texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return [t.split("\n")[0].strip() for t in texts]


def generation_workload(p: GenerationParams, data: dict[str, list[Answerable]], bundle: ModelBundle,
                        device: torch.device, note: str) -> PromptWorkload:
    model, tok = bundle.model, bundle.tokenizer

    def make_batch(idx: list[int]) -> dict[str, Any]:
        examples = [data["train"][i] for i in idx]
        batch = workload.encode(examples, only_correct=True)
        batch["examples"] = examples
        return batch

    def decoded_scores(examples: list[Answerable]) -> tuple[list[float], list[float]]:
        preds = generate(model, tok, [e.prompt for e in examples], max_length, p.max_new_tokens, device,
                         workload.bos_id)
        return ([metrics.best_f1(q, e.answers) for q, e in zip(preds, examples, strict=True)],
                [metrics.best_em(q, e.answers) for q, e in zip(preds, examples, strict=True)])

    def loss(batch: dict[str, Any]) -> torch.Tensor:
        if p.objective == "loss":
            return answer_loss(model, batch)
        if torch.is_grad_enabled():
            raise NonDifferentiableObjective(
                f"task objective '{p.objective}' is not differentiable: a first-order method cannot train on it; "
                f"use a zeroth-order method or objective: loss")
        was_training = model.training
        model.eval()
        f1, em = decoded_scores(batch["examples"])
        model.train(was_training)
        scores = f1 if p.objective == "f1" else em
        return torch.tensor(-sum(scores) / len(scores))

    @torch.inference_mode()
    def evaluate(split: str) -> dict[str, float]:
        was_training = model.training
        model.eval()
        examples = workload.eval_examples(split)
        f1s: list[float] = []
        ems: list[float] = []
        nll, tokens = 0.0, 0.0
        for start in range(0, len(examples), p.eval_batch_size):
            chunk = examples[start:start + p.eval_batch_size]
            f1, em = decoded_scores(chunk)
            f1s.extend(f1)
            ems.extend(em)
            batch = workload.encode(chunk, only_correct=True)
            n = float(batch["option_mask"][:, 1:].sum())
            nll += float(answer_loss(model, batch)) * n
            tokens += n
        model.train(was_training)
        count = max(len(examples), 1)
        return {"f1": sum(f1s) / count, "em": sum(ems) / count, "loss": nll / max(tokens, 1.0)}

    max_length = model_max_length(bundle, p.max_length)
    if max_length <= p.max_new_tokens:
        raise UserError(f"max_length {max_length} (the model's limit or the task's) leaves no room for the prompt "
                        f"with max_new_tokens {p.max_new_tokens}; lower max_new_tokens")
    info: dict[str, Any] = {f"{k}_size": len(v) for k, v in data.items()}
    info.update(max_length=max_length, objective=p.objective, protocol=note, train_loss="answer-nll")
    workload = PromptWorkload(module=model, train_size=len(data["train"]), loss=loss, make_batch=make_batch,
                              evaluate=evaluate, metric="f1", higher_is_better=True, info=info, data=data,
                              tokenizer=tok, kind="causal", max_length=max_length, device=device,
                              bos_id=mezo_bos_id(bundle))
    return workload


@tasks.register("squad")
class SQuAD(GenerationTask):
    """SQuAD v1.1. Hub: rajpurkar/squad. Local: the official `train-v1.1.json`/`dev-v1.1.json` (or `train.json`/
    `dev.json`); shared/data has only dev, so train/dev are then carved from it, disjoint from test."""

    @classmethod
    def rows(cls, split: str, data_dir: str | None) -> list[dict[str, Any]] | None:
        if not data_dir:
            return [{"title": r["title"], "context": r["context"], "question": r["question"],
                     "answers": list(r["answers"]["text"])} for r in hub("rajpurkar/squad", None, split)]
        names = ["train-v1.1.json", "train.json"] if split == "train" else ["dev-v1.1.json", "dev.json"]
        path = next((Path(data_dir) / n for n in names if (Path(data_dir) / n).exists()), None)
        if path is None:
            if split == "train":
                return None
            raise UserError(f"{data_dir}: no {' or '.join(names)}; point data_dir at SQuAD v1.1's JSON files")
        rows = []
        for article in read_json(path)["data"]:
            for para in article["paragraphs"]:
                for qa in para["qas"]:
                    rows.append({"title": article["title"], "context": para["context"], "question": qa["question"],
                                 "answers": [a["text"] for a in qa["answers"]]})
        return rows

    @classmethod
    def prompt(cls, row: dict[str, Any]) -> str:
        return f"Title: {row['title']}\nContext: {row['context']}\nQuestion: {row['question'].strip()}\nAnswer:"


def drop_answers(qa: dict[str, Any]) -> list[str]:
    """DROP's structured answers as strings: the number, the spans, or 'day month year'."""
    out = []
    for ans in [qa["answer"], *qa.get("validated_answers", [])]:
        if ans.get("number"):
            out.append(str(ans["number"]))
        elif ans.get("spans"):
            out.extend(ans["spans"])
        else:
            date = ans.get("date") or {}
            text = " ".join(str(date[k]) for k in ("day", "month", "year") if date.get(k))
            if text:
                out.append(text)
    return list(dict.fromkeys(out))


@tasks.register("drop")
class DROP(GenerationTask):
    """DROP (Dua et al. 2019). Hub: ucinlp/drop (answers_spans). Local: the original
    `drop_dataset_train.json` / `drop_dataset_dev.json` ({passage_id: {passage, qa_pairs}})."""

    @classmethod
    def rows(cls, split: str, data_dir: str | None) -> list[dict[str, Any]] | None:
        if not data_dir:
            return [{"context": r["passage"], "question": r["question"], "answers": list(r["answers_spans"]["spans"])}
                    for r in hub("ucinlp/drop", None, split)]
        path = Path(data_dir) / ("drop_dataset_train.json" if split == "train" else "drop_dataset_dev.json")
        if split == "train" and not path.exists():
            return None
        rows = []
        for doc in read_json(path).values():
            for qa in doc["qa_pairs"]:
                answers = drop_answers(qa)
                if answers:
                    rows.append({"context": doc["passage"], "question": qa["question"], "answers": answers})
        return rows

    @classmethod
    def prompt(cls, row: dict[str, Any]) -> str:
        return f"Passage: {row['context']}\nQuestion: {row['question'].strip()}\nAnswer:"
