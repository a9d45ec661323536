"""Tasks: data, prompts and metrics. A prompt-choice task turns rows into (prompt, options, label).

The runner sees a `Workload`; prompt tasks return a `PromptWorkload`, which also lets the training-free
baselines render demonstrations (ICL) and read frozen features (linear probing).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, PositiveInt

from zobench.errors import FieldError, UserError
from zobench.models.base import ModelBundle
from zobench.tasks import metrics
from zobench.tasks.scoring import Choice, answer_loss, choice_loss, encode, option_scores
from zobench.workload import Workload


class Task:
    """A registered task builds the workload the runner trains."""

    Params: ClassVar[type[BaseModel] | None] = None
    needs_model: ClassVar[bool] = True
    registered_name: ClassVar[str] = ""
    data_files: ClassVar[tuple[str, ...]] = ()  # what a local data_dir must hold (checked at planning)

    @classmethod
    def build(cls, params: dict[str, Any], bundle: ModelBundle | None, device: torch.device,
              seed: int) -> Workload:
        raise NotImplementedError

    @classmethod
    def check(cls, params: dict[str, Any]) -> None:
        """Planning-time check of validated params, before anything is written: raise FieldError(field, why + fix).
        Cheap and side-effect free. Default: a given data_dir must be a folder holding `data_files`."""
        data_dir = params.get("data_dir")
        if not data_dir:
            return
        folder = Path(data_dir)
        if not folder.is_dir():
            what = "is a file, not a folder" if folder.exists() else "does not exist"
            raise FieldError("data_dir", f"data folder '{folder}' {what}; point data_dir at the task's "
                             f"local files{' (' + ', '.join(cls.data_files) + ')' if cls.data_files else ''}, "
                             f"or drop it to load the task from the hub")
        missing = [name for name in cls.data_files if not (folder / name).exists()]
        if missing:
            raise FieldError("data_dir", f"data folder '{folder}' lacks {', '.join(missing)}; task "
                             f"'{cls.registered_name}' reads {', '.join(cls.data_files)} from it")


class NonDifferentiableObjective(RuntimeError):
    """A first-order method asked for the gradient of accuracy/F1: the run fails with this message."""


Objective = Literal["loss", "accuracy", "f1"]


class ChoiceParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data_dir: str | None = None  # local files in the original format; None = the hub
    train_size: PositiveInt = 1000  # MeZO: 1000 train and 500 dev drawn from train, 1000 test from validation
    dev_size: PositiveInt = 500
    test_size: PositiveInt = 1000
    max_length: PositiveInt = 256
    eval_batch_size: PositiveInt = 32
    objective: Objective = "loss"  # accuracy / f1: the (non-differentiable) metric on the batch is what ZO optimises
    train_as_classification: bool | None = None  # None: MeZO's choice for the task (CE over options or answer NLL)


@dataclass
class PromptWorkload(Workload):
    """A workload over prompted examples: splits of `Choice`s scored through one model."""

    data: dict[str, list[Any]] = field(default_factory=dict)
    tokenizer: Any = None
    kind: str = "causal"
    max_length: int = 256
    demonstrations: str = ""  # prepended to dev/test prompts by ICL
    device: torch.device = torch.device("cpu")

    def encode(self, examples: list[Choice], only_correct: bool = False) -> dict[str, Any]:
        """A model batch: masked-LM prompts at the mask, causal prompts with their options (or the correct one)."""
        if self.kind == "masked":
            from zobench.tasks.masked import encode_masked

            return encode_masked(examples, self.tokenizer, self.max_length, self.device)
        if any(e.suffix for e in examples):  # an LM-BFF prompt on a causal LM: score the option where the mask was
            examples = [replace(e, suffix="") for e in examples]
        return encode(examples, self.tokenizer, self.max_length, self.device, only_correct=only_correct)

    def set_demonstrations(self, text: str, separator: str = "\n\n") -> None:
        """ICL: every evaluated prompt is `demonstrations + separator + prompt` (truncated from the left)."""
        if self.kind != "causal":
            raise UserError("in-context demonstrations are implemented for causal LMs only; this task uses a "
                            "masked LM")
        self.demonstrations = text + separator if text else ""

    def eval_examples(self, split: str) -> list[Any]:
        examples = self.data[split]
        if not self.demonstrations:
            return examples
        return [replace(e, prompt=self.demonstrations + e.prompt) for e in examples]


def mezo_splits(train: list[Any] | None, valid: list[Any], p: Any, seed: int) -> tuple[dict[str, list[Any]], str]:
    """MeZO's protocol: train and dev drawn (disjoint, seeded) from train; test sampled from validation.

    With no train split (a local copy that lacks it), test is drawn from validation first and train/dev are
    carved from the rest; the returned note says so.
    """
    note = "mezo: train/dev from train, test from validation"
    if train is None:
        order = list(range(len(valid)))
        random.Random(seed + 2).shuffle(order)
        n_test = min(p.test_size, len(order) // 2)
        test_rows = [valid[i] for i in sorted(order[:n_test])]
        train, valid, note = [valid[i] for i in order[n_test:]], test_rows, (
            "no train split here: test, then train/dev drawn disjointly from validation")
    rng = random.Random(seed)
    order = list(range(len(train)))
    rng.shuffle(order)
    short = len(order) < p.train_size + p.dev_size  # small train split: keep a fifth for dev
    n_dev = min(p.dev_size, len(order) // 5) if short else p.dev_size
    dev_idx, train_idx = order[:n_dev], order[n_dev:n_dev + p.train_size]
    test_idx = list(range(len(valid)))
    if len(test_idx) > p.test_size:
        test_idx = sorted(random.Random(seed + 1).sample(test_idx, p.test_size))
    return {"train": [train[i] for i in train_idx], "dev": [train[i] for i in dev_idx],
            "test": [valid[i] for i in test_idx]}, note


class ChoiceTask(Task):
    """Classification by the log-likelihood of each option's verbalizer (MeZO's large-model setting)."""

    Params = ChoiceParams
    train_as_classification: ClassVar[bool] = True  # False: teacher forcing on the answer (COPA, ReCoRD)
    masked: ClassVar[bool] = False  # True: LM-BFF prompts with a mask, scored by a masked LM

    @classmethod
    def rows(cls, split: str, data_dir: str | None, seed: int) -> list[dict[str, Any]] | None:
        """Raw rows of 'train' or 'validation'; None when a local copy lacks the train split."""
        raise NotImplementedError

    @classmethod
    def load(cls, p: Any, split: str, seed: int) -> list[dict[str, Any]] | None:
        """Rows of a split given the task's parameters (tasks whose files depend on them override this)."""
        return cls.rows(split, p.data_dir, seed)

    @classmethod
    def render(cls, row: dict[str, Any]) -> Choice | list[Choice]:
        raise NotImplementedError

    @classmethod
    def render_all(cls, rows: list[dict[str, Any]]) -> list[Choice]:
        out: list[Choice] = []
        for row in rows:
            r = cls.render(row)
            out.extend(r if isinstance(r, list) else [r])
        return out

    @classmethod
    def splits(cls, p: ChoiceParams, seed: int) -> dict[str, list[Choice]]:
        parts, note = mezo_splits(cls.load(p, "train", seed), cls.load(p, "validation", seed) or [], p, seed)
        cls._note = note
        return {k: cls.render_all(v) for k, v in parts.items()}

    @classmethod
    def check_model(cls, bundle: ModelBundle) -> None:
        if bundle.kind == "masked" and not cls.masked:
            raise UserError(f"task '{cls.registered_name}' scores options with a causal LM (MeZO's autoregressive "
                            f"setting) but the model is a masked LM; use a causal model, or an LM-BFF task "
                            f"(sst2-mlm, sst5-mlm, snli-mlm, mnli-mlm, rte-mlm, trec-mlm)")

    @classmethod
    def build(cls, params: dict[str, Any], bundle: ModelBundle | None, device: torch.device,
              seed: int) -> Workload:
        p = cls.Params.model_validate(params)
        if bundle is None:
            raise UserError(f"task '{cls.registered_name}' needs a model")
        cls.check_model(bundle)
        cls._note = ""
        data = cls.splits(p, seed)
        if not data["train"]:
            raise UserError(f"task '{cls.registered_name}': the train split is empty")
        return choice_workload(cls, p, data, bundle, device)


def choice_workload(task: type[ChoiceTask], p: ChoiceParams, data: dict[str, list[Choice]], bundle: ModelBundle,
                    device: torch.device) -> PromptWorkload:
    model = bundle.model
    as_classification = p.train_as_classification
    if as_classification is None:
        as_classification = task.train_as_classification
    only_correct = not as_classification and bundle.kind != "masked"

    def make_batch(idx: list[int]) -> dict[str, Any]:
        examples = [data["train"][i] for i in idx]
        batch = workload.encode(examples, only_correct and p.objective == "loss")
        batch["examples"] = examples
        return batch

    def predict(examples: list[Choice]) -> tuple[list[int], torch.Tensor, dict[str, Any]]:
        batch = workload.encode(examples)
        scores = option_scores(model, batch)
        return scores.argmax(-1).tolist(), scores, batch

    def loss(batch: dict[str, Any]) -> torch.Tensor:
        if p.objective == "loss":
            return answer_loss(model, batch) if only_correct else choice_loss(model, batch)
        if torch.is_grad_enabled():
            raise NonDifferentiableObjective(
                f"task objective '{p.objective}' is not differentiable: a first-order method cannot train on it; "
                f"use a zeroth-order method or objective: loss")
        examples = batch["examples"]
        pred = option_scores(model, batch).argmax(-1).tolist()
        gold = [e.label for e in examples]
        score = (sum(e.is_correct(q) for e, q in zip(examples, pred, strict=True)) / len(examples)
                 if p.objective == "accuracy" else metrics.macro_f1(pred, gold))
        return torch.tensor(-score)

    @torch.inference_mode()
    def evaluate(split: str) -> dict[str, float]:
        was_training = model.training
        model.eval()
        examples = workload.eval_examples(split)
        preds: list[int] = []
        loss_sum = 0.0
        for start in range(0, len(examples), p.eval_batch_size):
            chunk = examples[start:start + p.eval_batch_size]
            pred, scores, batch = predict(chunk)
            preds.extend(pred)
            loss_sum += float(torch.nn.functional.cross_entropy(scores, batch["labels"], reduction="sum"))
        model.train(was_training)
        n = max(len(examples), 1)
        correct = sum(e.is_correct(q) for e, q in zip(examples, preds, strict=True))
        return {"accuracy": correct / n, "f1": metrics.macro_f1(preds, [e.label for e in examples]),
                "loss": loss_sum / n}

    info: dict[str, Any] = {f"{k}_size": len(v) for k, v in data.items()}
    info.update(objective=p.objective, protocol=getattr(task, "_note", ""),
                train_loss="classification" if not only_correct else "answer-nll")
    workload = PromptWorkload(
        module=model, train_size=len(data["train"]), loss=loss, make_batch=make_batch, evaluate=evaluate,
        metric="accuracy", higher_is_better=True, info=info, data=data, tokenizer=bundle.tokenizer,
        kind=bundle.kind, max_length=p.max_length, device=device,
    )
    return workload
