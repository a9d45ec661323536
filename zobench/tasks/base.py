"""Tasks: data, prompts and metrics. A prompt-choice task turns rows into (prompt, options, label)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, PositiveInt

from zobench.errors import FieldError, UserError
from zobench.models.base import ModelBundle
from zobench.tasks.scoring import Choice, choice_loss, encode, option_scores
from zobench.workload import Workload


class Task:
    """A registered task builds the workload the runner trains."""

    Params: ClassVar[type[BaseModel] | None] = None
    needs_model: ClassVar[bool] = True
    registered_name: ClassVar[str] = ""

    @classmethod
    def build(cls, params: dict[str, Any], bundle: ModelBundle | None, device: torch.device,
              seed: int) -> Workload:
        raise NotImplementedError

    @classmethod
    def check(cls, params: dict[str, Any]) -> None:
        """Planning-time check of validated params (files exist, ...): raise FieldError(field, why + fix).
        Cheap and side-effect free: it runs for every suite before anything is written."""


class ChoiceParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data_dir: str | None = None  # local files in the original format; None = the hub
    train_size: PositiveInt = 1000  # MeZO: 1000 train and 500 dev drawn from train, 1000 test from validation
    dev_size: PositiveInt = 500
    test_size: PositiveInt = 1000
    max_length: PositiveInt = 256
    eval_batch_size: PositiveInt = 32


class ChoiceTask(Task):
    """Classification by the log-likelihood of each option's verbalizer (MeZO's large-model setting)."""

    Params = ChoiceParams
    data_files: ClassVar[tuple[str, ...]] = ()  # what a local data_dir must hold

    @classmethod
    def check(cls, params: dict[str, Any]) -> None:
        data_dir = params.get("data_dir")
        if not data_dir:
            return
        folder = Path(data_dir)
        if not folder.is_dir():
            raise FieldError("data_dir", f"data folder '{folder}' does not exist; point data_dir at a folder "
                             f"holding {', '.join(cls.data_files) or 'the task files'} (or drop it to use the hub)")
        missing = [name for name in cls.data_files if not (folder / name).is_file()]
        if missing:
            raise FieldError("data_dir", f"data folder '{folder}' lacks {', '.join(missing)}; "
                             f"task '{cls.registered_name}' reads {', '.join(cls.data_files)} from it")

    @classmethod
    def rows(cls, split: str, data_dir: str | None, seed: int) -> list[dict[str, Any]]:
        """Raw rows of 'train' or 'validation', each with an integer 'label'."""
        raise NotImplementedError

    @classmethod
    def render(cls, row: dict[str, Any]) -> Choice:
        raise NotImplementedError

    @classmethod
    def splits(cls, p: ChoiceParams, seed: int) -> dict[str, list[Choice]]:
        """MeZO's protocol: train and dev drawn (disjoint, seeded) from train; test from validation."""
        train = cls.rows("train", p.data_dir, seed)
        valid = cls.rows("validation", p.data_dir, seed)
        rng = random.Random(seed)
        order = list(range(len(train)))
        rng.shuffle(order)
        short = len(order) < p.train_size + p.dev_size  # small train split: keep a fifth for dev
        n_dev = min(p.dev_size, len(order) // 5) if short else p.dev_size
        dev_idx, train_idx = order[:n_dev], order[n_dev:n_dev + p.train_size]
        test_idx = list(range(len(valid)))
        if len(test_idx) > p.test_size:
            test_idx = sorted(random.Random(seed + 1).sample(test_idx, p.test_size))
        return {
            "train": [cls.render(train[i]) for i in train_idx],
            "dev": [cls.render(train[i]) for i in dev_idx],
            "test": [cls.render(valid[i]) for i in test_idx],
        }

    @classmethod
    def build(cls, params: dict[str, Any], bundle: ModelBundle | None, device: torch.device,
              seed: int) -> Workload:
        p = cls.Params.model_validate(params)
        if bundle is None:
            raise UserError(f"task '{cls.registered_name}' needs a model")
        data = cls.splits(p, seed)
        model, tok = bundle.model, bundle.tokenizer

        def make_batch(idx: list[int]) -> dict[str, Any]:
            return encode([data["train"][i] for i in idx], tok, p.max_length, device)

        @torch.inference_mode()
        def evaluate(split: str) -> dict[str, float]:
            was_training = model.training
            model.eval()
            examples, correct, loss_sum = data[split], 0, 0.0
            for start in range(0, len(examples), p.eval_batch_size):
                batch = encode(examples[start:start + p.eval_batch_size], tok, p.max_length, device)
                scores = option_scores(model, batch)
                correct += int((scores.argmax(-1) == batch["labels"]).sum())
                loss_sum += float(torch.nn.functional.cross_entropy(scores, batch["labels"], reduction="sum"))
            model.train(was_training)
            n = max(len(examples), 1)
            return {"accuracy": correct / n, "loss": loss_sum / n}

        return Workload(
            module=model, train_size=len(data["train"]), loss=lambda b: choice_loss(model, b),
            make_batch=make_batch, evaluate=evaluate, metric="accuracy", higher_is_better=True,
            info={f"{k}_size": len(v) for k, v in data.items()},
        )
