"""Tasks: data, prompts and metrics. A prompt-choice task turns rows into (prompt, options, label).

The runner sees a `Workload`; prompt tasks return a `PromptWorkload`, which also lets the training-free
baselines render demonstrations (ICL) and read frozen features (linear probing).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, PositiveInt

from zobench.errors import FieldError, UserError
from zobench.models.base import ModelBundle
from zobench.tasks import metrics
from zobench.tasks.sampling import mezo_icl_demonstrations, mezo_indices, mezo_subset
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
    max_length: PositiveInt = 2048  # MeZO's run.py default; capped by the model's limit (`model_max_length`)
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
    bos_id: int | None = None  # replaces the tokenizer's BOS (MeZO's OPT: 0)
    demonstrations: str = ""  # prepended to dev/test prompts by ICL
    device: torch.device = torch.device("cpu")
    demonstration_pool: Callable[[], list[Any]] | None = None  # the whole train split, rendered (MeZO's ICL)
    example_demonstrations: dict[str, list[str]] = field(default_factory=dict)  # per split, per example

    def encode(self, examples: list[Choice], only_correct: bool = False) -> dict[str, Any]:
        """A model batch: masked-LM prompts at the mask, causal prompts with their options (or the correct one)."""
        if self.kind == "masked":
            from zobench.tasks.masked import encode_masked

            return encode_masked(examples, self.tokenizer, self.max_length, self.device)
        if any(e.suffix for e in examples):  # an LM-BFF prompt on a causal LM: score the option where the mask was
            examples = [replace(e, suffix="") for e in examples]
        return encode(examples, self.tokenizer, self.max_length, self.device, only_correct=only_correct,
                      bos_id=self.bos_id)

    def set_demonstrations(self, text: str, separator: str = "\n\n") -> None:
        """ICL: every evaluated prompt is `demonstrations + separator + prompt` (truncated from the left)."""
        if self.kind != "causal":
            raise UserError("in-context demonstrations are implemented for causal LMs only; this task uses a "
                            "masked LM")
        self.demonstrations = text + separator if text else ""

    def draw_demonstrations(self, k: int, separator: str = "\n\n") -> dict[str, Any]:
        """MeZO's ICL (icl.sh, run.py:514-521): every evaluated example gets its own k demonstrations from the
        whole train split, drawn by `mezo_icl_demonstrations`; each is its prompt completed with its correct
        option, stripped, and they are joined by the separator (utils.py:124-125). Returns what to record."""
        if self.kind != "causal":
            raise UserError("in-context demonstrations are implemented for causal LMs only; this task uses a "
                            "masked LM")
        if self.demonstration_pool is None:
            raise UserError("this task has no train split to draw per-example demonstrations from; use the "
                            "icl method's draw: shared")
        pool = self.demonstration_pool()
        lengths = []
        for split in ("dev", "test"):
            draws = mezo_icl_demonstrations(len(pool), k, len(self.data[split]))
            texts = [separator.join(pool[i].answer_text().strip() for i in idx) for idx in draws]
            self.example_demonstrations[split] = [t + separator if t else "" for t in texts]
            lengths += [len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts[:8]]
        return {"icl_demonstrations": min(k, len(pool)), "icl_draw": "per-example (MeZO)",
                "icl_demo_tokens": max(lengths, default=0), "icl_truncated": max(lengths, default=0) >= self.max_length}

    def eval_examples(self, split: str) -> list[Any]:
        examples = self.data[split]
        if split in self.example_demonstrations:
            return [replace(e, prompt=d + e.prompt.lstrip(" "))
                    for d, e in zip(self.example_demonstrations[split], examples, strict=True)]
        if not self.demonstrations:
            return examples
        return [replace(e, prompt=self.demonstrations + e.prompt) for e in examples]


@dataclass
class Sampled:
    """Rows of each split in sampling order, each row's id ('<source split>:<row index>') and how they were drawn."""

    parts: dict[str, list[Any]]
    ids: dict[str, list[str]]
    note: str
    pool: list[Any] = field(default_factory=list)  # the rows train and dev were drawn from (MeZO's ICL pool)


def mezo_sample(train: list[Any] | None, valid: list[Any], p: Any, seed: int) -> Sampled:
    """MeZO's protocol (zobench/tasks/sampling.py): train and dev from one seeded permutation of the train split,
    dev its last `dev_size`; test the first `test_size` of a permutation of validation under the same seed.

    With no train split (a local copy that lacks it), test is drawn from validation as MeZO draws it, and train
    and dev are drawn by MeZO's rule from the validation rows left; the note says so.
    """
    note = "mezo: train/dev from train, test from validation (princeton-nlp/MeZO run.py:479-488)"
    train_source = "train"
    train_ids = list(range(len(train))) if train is not None else []
    if train is None:
        test_idx = mezo_subset(len(valid), seed, min(p.test_size, len(valid) // 2))
        taken = set(test_idx)
        train_ids = [i for i in range(len(valid)) if i not in taken]
        train, train_source = [valid[i] for i in train_ids], "validation"
        note = "no train split here: test drawn from validation, then train/dev from the validation rows left"
        idx = mezo_indices(len(train), 0, p.train_size, p.dev_size, 0, seed)
        idx["test"] = test_idx
    else:
        idx = mezo_indices(len(train), len(valid), p.train_size, p.dev_size, p.test_size, seed)
    parts = {"train": [train[i] for i in idx["train"]], "dev": [train[i] for i in idx["dev"]],
             "test": [valid[i] for i in idx["test"]]}
    ids = {split: [f"{train_source}:{train_ids[i]}" for i in idx[split]] for split in ("train", "dev")}
    ids["test"] = [f"validation:{i}" for i in idx["test"]]
    return Sampled(parts, ids, note, train)


@dataclass
class Splits:
    """One run's examples: rendered train/dev/test, each example's row id, how they were drawn, and the rows
    MeZO's ICL draws demonstrations from. Returned by a task's `splits`, never kept on the task class, which
    every run in the process shares. `splits["train"]` is the rendered train split."""

    data: dict[str, list[Any]]
    ids: dict[str, list[str]] = field(default_factory=dict)
    note: str = ""
    pool: list[Any] = field(default_factory=list)

    def __getitem__(self, split: str) -> list[Any]:
        return self.data[split]


def mezo_splits(train: list[Any] | None, valid: list[Any], p: Any, seed: int) -> tuple[dict[str, list[Any]], str]:
    """`mezo_sample` without the ids (the generation and custom tasks' entry point)."""
    sampled = mezo_sample(train, valid, p, seed)
    return sampled.parts, sampled.note


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
    def render_all(cls, rows: list[dict[str, Any]], ids: list[str] | None = None) -> tuple[list[Choice], list[str]]:
        """Every row's examples (a row may render to several), and each example's row id when `ids` are given."""
        out: list[Choice] = []
        out_ids: list[str] = []
        for n, row in enumerate(rows):
            r = cls.render(row)
            r = r if isinstance(r, list) else [r]
            out.extend(r)
            out_ids.extend([ids[n]] * len(r) if ids is not None else [])
        return out, out_ids

    @classmethod
    def splits(cls, p: ChoiceParams, seed: int) -> Splits:
        """The rendered examples of train, dev and test in sampling order, with their row ids."""
        sampled = mezo_sample(cls.load(p, "train", seed), cls.load(p, "validation", seed) or [], p, seed)
        out = Splits({}, {}, sampled.note, sampled.pool)
        for split, rows in sampled.parts.items():
            out.data[split], out.ids[split] = cls.render_all(rows, sampled.ids[split])
        return out

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
        data = cls.splits(p, seed)
        if not data["train"]:
            raise UserError(f"task '{cls.registered_name}': the train split is empty (MeZO takes dev_size="
                            f"{getattr(p, 'dev_size', '?')} from the end of the sampled train rows); lower dev_size")
        return choice_workload(cls, p, data, bundle, device)


def _config(bundle: ModelBundle) -> Any:
    model = bundle.model.get_base_model() if hasattr(bundle.model, "get_base_model") else bundle.model
    return getattr(model, "config", None)


def model_max_length(bundle: ModelBundle, asked: int) -> int:
    """MeZO's max_length: 2048 unless the model takes fewer positions (run.py:45 'max length the model can take')."""
    limits = [getattr(_config(bundle), "max_position_embeddings", None),
              getattr(bundle.tokenizer, "model_max_length", None)]  # RoBERTa: 514 positions, 512 tokens
    return min([asked] + [n for n in limits if isinstance(n, int) and 0 < n < 1_000_000])


def mezo_bos_id(bundle: ModelBundle) -> int | None:
    """OPT's sequences start with id 0 in MeZO (run.py:174-176 sets `tokenizer.bos_token_id = 0` for OPT)."""
    return 0 if getattr(_config(bundle), "model_type", None) == "opt" else None


def _pool(task: type[ChoiceTask], rows: list[Any]) -> Callable[[], list[Any]] | None:
    return (lambda: task.render_all(rows)[0]) if rows else None


def choice_workload(task: type[ChoiceTask], p: ChoiceParams, splits: Splits, bundle: ModelBundle,
                    device: torch.device) -> PromptWorkload:
    data = splits.data
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

    max_length = model_max_length(bundle, p.max_length)
    info: dict[str, Any] = {f"{k}_size": len(v) for k, v in data.items()}
    info.update(max_length=max_length, objective=p.objective, protocol=splits.note,
                train_loss="classification" if not only_correct else "answer-nll")
    workload = PromptWorkload(
        module=model, train_size=len(data["train"]), loss=loss, make_batch=make_batch, evaluate=evaluate,
        metric="accuracy", higher_is_better=True, info=info, data=data, tokenizer=bundle.tokenizer,
        kind=bundle.kind, max_length=max_length, device=device, example_ids=dict(splits.ids),
        bos_id=mezo_bos_id(bundle), demonstration_pool=_pool(task, splits.pool),
    )
    return workload
