"""Training-free and simple baselines (MeZO's table rows): zero-shot, in-context learning, linear probing.

They are methods with no training step (`takes_steps = False`: the runner does 0 steps, evaluates dev and
test). `prepare(workload)` runs once before evaluation:
- `zero-shot`: nothing — the prompt-and-options scoring of the untouched model;
- `icl`: k demonstrations drawn (seeded) from the train split, each its prompt completed with its correct
  option, joined by a blank line and prepended to every dev/test prompt; prompts are truncated from the
  left to the task's max_length, so raise it (MeZO: 32 demonstrations in 2048 tokens);
- `linear-probe`: MeZO's LP. Frozen features are the LM head's inputs at the positions predicting the correct
  option's tokens (causal) or at the mask (masked LM); scikit-learn's logistic regression is fit on them
  with the predicted token ids as classes, and its weights replace those tokens' rows of the (untied) LM
  head, so the usual option scoring then evaluates the probe.
"""

from __future__ import annotations

import random
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt

from zobench.errors import UserError
from zobench.optim.base import LossFn, Method
from zobench.registry import methods


class FreeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrainingFree(Method):
    """No optimisation step; `prepare` does the method's work before evaluation."""

    Params: ClassVar[type[BaseModel]] = FreeParams  # type: ignore[assignment]
    takes_steps: ClassVar[bool] = False
    prepares: ClassVar[bool] = True

    def step(self, loss_fn: LossFn) -> float:
        raise RuntimeError(f"'{self.registered_name}' takes no training steps")

    def prepare(self, workload: Any) -> None:
        """Change how the workload evaluates (demonstrations, a fitted probe); default: nothing."""


def prompt_workload(workload: Any, method: str) -> Any:
    from zobench.tasks.base import PromptWorkload

    if not isinstance(workload, PromptWorkload):
        raise UserError(f"method '{method}' needs a prompted language task (sst2, rte, ...); this task has no prompts")
    return workload


@methods.register("zero-shot")
class ZeroShot(TrainingFree):
    """The pretrained model's prompt-and-options predictions, untouched."""


class ICLParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    k: PositiveInt = 32  # MeZO: 32 demonstrations
    separator: str = "\n\n"  # MeZO's train_sep
    demo_seed: int | None = None  # None: the run seed (draw: shared)
    draw: Literal["per-example", "shared"] = "per-example"  # MeZO's icl.sh: each evaluated example its own k


@methods.register("icl")
class ICL(TrainingFree):
    """In-context learning: k demonstrations from the train split before every evaluated prompt."""

    Params = ICLParams  # type: ignore[assignment]
    hp: ICLParams

    def prepare(self, workload: Any) -> None:
        w = prompt_workload(workload, "icl")
        if self.hp.draw == "per-example" and w.demonstration_pool is not None:
            w.info.update(w.draw_demonstrations(self.hp.k, self.hp.separator))  # zobench/tasks/sampling.py
            return
        train = w.data["train"]
        seed = self.seed if self.hp.demo_seed is None else self.hp.demo_seed
        demos = random.Random(seed).sample(train, min(self.hp.k, len(train)))
        text = self.hp.separator.join(d.answer_text().rstrip("\n") for d in demos)
        w.set_demonstrations(text, self.hp.separator)
        n_tokens = len(w.tokenizer(text, add_special_tokens=False)["input_ids"])
        w.info.update(icl_demonstrations=len(demos), icl_demo_tokens=n_tokens,
                      icl_truncated=n_tokens >= w.max_length)


class ProbeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cv_folds: NonNegativeInt = 5  # LogisticRegressionCV's folds (MeZO); 0: plain LogisticRegression with C
    C: PositiveFloat = 1.0
    max_iter: PositiveInt = 1000
    tol: PositiveFloat = Field(1e-4)
    batch_size: PositiveInt = 16  # examples per feature-extraction forward


@methods.register("linear-probe")
class LinearProbe(TrainingFree):
    """MeZO's linear probing: logistic regression (scikit-learn) on frozen LM-head inputs, written into the head."""

    Params = ProbeParams  # type: ignore[assignment]
    hp: ProbeParams

    def prepare(self, workload: Any) -> None:
        w = prompt_workload(workload, "linear-probe")
        model = w.module
        head = model.get_output_embeddings()
        if head is None or not hasattr(head, "weight"):
            raise UserError(f"linear-probe: {type(model).__name__} has no output embedding layer to write into")
        head = untie(model, head)
        features, targets = probe_features(w, head, self.hp.batch_size)
        self.forward_passes += -(-len(w.data["train"]) // self.hp.batch_size)
        classes = np.unique(targets)
        if len(classes) < 2:
            raise UserError("linear-probe: the train split's answers use a single token; nothing to separate")
        reg = fit(features, targets, self.hp, fit_intercept=getattr(head, "bias", None) is not None, seed=self.seed)
        write_probe(head, reg)
        w.info.update(probe_examples=len(w.data["train"]), probe_features=int(features.shape[0]),
                      probe_classes=len(classes), probe_train_accuracy=float(reg.score(features, targets)))


def untie(model: torch.nn.Module, head: torch.nn.Module) -> torch.nn.Module:
    """Give the head its own weight when it shares the input embeddings, so writing the probe changes only it."""
    inputs = model.get_input_embeddings()
    if inputs is not None and head.weight is inputs.weight:
        head.weight = torch.nn.Parameter(head.weight.detach().clone(), requires_grad=False)
        config = getattr(model, "config", None)
        if config is not None:
            config.tie_word_embeddings = False
    return head


@torch.inference_mode()
def probe_features(w: Any, head: torch.nn.Module, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(features, target token ids) over the train split: the head's inputs where it predicts the answer."""
    from zobench.tasks.scoring import option_scores

    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0].detach()))
    feats, targets = [], []
    was_training = w.module.training
    w.module.eval()
    try:
        for start in range(0, len(w.data["train"]), batch_size):
            chunk = w.data["train"][start:start + batch_size]
            captured.clear()
            if w.kind == "masked":
                batch = w.encode(chunk)
                option_scores(w.module, batch)
                x = captured[-1]
                if x.dim() == 3:  # full-sequence head (peft prompt learning): read the mask positions
                    x = x[torch.arange(x.shape[0]), batch["mask_pos"]]
                feats.append(x)
                targets.append(batch["option_ids"][torch.arange(len(chunk)), batch["labels"]])
            else:
                batch = w.encode(chunk, only_correct=True)
                option_scores(w.module, batch)
                keep = batch["keep"]
                x = captured[-1][:, -keep:-1]
                mask = batch["option_mask"][:, -keep + 1:]
                feats.append(x[mask])
                targets.append(batch["input_ids"][:, -keep + 1:][mask])
    finally:
        hook.remove()
        w.module.train(was_training)
    return (torch.cat(feats).float().cpu().numpy().astype(np.float64), torch.cat(targets).cpu().numpy())


def fit(features: np.ndarray, targets: np.ndarray, hp: ProbeParams, fit_intercept: bool, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

    counts = np.bincount(np.unique(targets, return_inverse=True)[1])
    folds = min(hp.cv_folds, int(counts.min()))
    if folds >= 2:
        reg = LogisticRegressionCV(cv=folds, max_iter=hp.max_iter, tol=hp.tol, fit_intercept=fit_intercept,
                                   random_state=seed)
    else:
        reg = LogisticRegression(C=hp.C, max_iter=hp.max_iter, tol=hp.tol, fit_intercept=fit_intercept,
                                 random_state=seed)
    return reg.fit(features, targets)


@torch.no_grad()
def write_probe(head: torch.nn.Module, reg: Any) -> None:
    """Rows of the head for the probe's classes := its coefficients (binary: ±coef/2, as MeZO does)."""
    weight = head.weight
    coef = torch.tensor(reg.coef_, dtype=weight.dtype, device=weight.device)
    bias = getattr(head, "bias", None)
    intercept = torch.tensor(np.atleast_1d(reg.intercept_), dtype=weight.dtype, device=weight.device)
    if coef.shape[0] == 1:
        coef = torch.cat([-coef / 2, coef / 2])
        intercept = torch.cat([-intercept / 2, intercept / 2])
    for i, token in enumerate(reg.classes_):
        weight[int(token)] = coef[i]
        if bias is not None:
            bias[int(token)] = intercept[i]
