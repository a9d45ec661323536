"""What the model saw: a task's examples for one seed and split, rendered, in sampling order (`zobench data`)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from zobench import registry
from zobench.errors import UserError, did_you_mean
from zobench.tasks.scoring import Choice

SPLITS = ("train", "dev", "test")


def _params(name: str, cls: Any, params: dict[str, Any]) -> Any:
    try:
        return cls.Params.model_validate(params)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(x) for x in first["loc"]) or "(task)"
        raise UserError(f"task '{name}': parameter '{field}': {first['msg']}; fix it with --param "
                        f"{field}=VALUE") from None


def examples(name: str, seed: int, split: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per example of `split`: its position, source row id, rendered text, options and label."""
    if split not in SPLITS:
        raise UserError(f"--split '{split}': {did_you_mean(split, SPLITS)}")
    if name not in registry.tasks.names():
        raise UserError(f"unknown task '{name}': {did_you_mean(name, registry.tasks.names())}")
    cls = registry.tasks.get(name)
    if not hasattr(cls, "splits") or getattr(cls, "registered_name", "") == "custom":
        raise UserError(f"task '{name}' builds its examples with a model; `zobench data` lists the benchmark "
                        f"tasks' examples (zobench list tasks)")
    p = _params(name, cls, params)
    from zobench.tasks.lmbff import KShotParams

    seed_used = p.data_seed if isinstance(p, KShotParams) and p.data_seed is not None else seed  # as KShotTask.build
    splits = cls.splits(p, seed_used)
    data = splits.data
    ids = splits.ids.get(split) or [None] * len(data[split])
    return [record(n, row_id, ex) for n, (row_id, ex) in enumerate(zip(ids, data[split], strict=True))]


def record(position: int, row_id: str | None, ex: Choice) -> dict[str, Any]:
    """An example as the model is shown it: `text` is the prompt completed with the labelled option."""
    out: dict[str, Any] = {"position": position, "id": row_id,
                           "text": ex.prompt + ex.options[ex.label] + ex.suffix,
                           "prompt": ex.prompt, "options": ex.options, "label": ex.label,
                           "answer": ex.options[ex.label]}
    if ex.suffix:
        out["suffix"] = ex.suffix
    if ex.correct is not None:
        out["correct"] = list(ex.correct)
    if getattr(ex, "answers", None):
        out["answers"] = ex.answers
    return out
