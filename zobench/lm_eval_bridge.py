"""Evaluate a run's final model with lm-evaluation-harness, in-process and offline.

The trained module itself is wrapped (`HFLM(pretrained=model, tokenizer=...)`, no save and reload) and
`simple_evaluate` runs the named tasks. zobench ships local task YAMLs (`zobench/tasks/lm_eval_tasks/`,
MeZO's prompts over the original data files) whose `{data_dir}` placeholder is filled from the settings,
so nothing is downloaded; any other lm-eval task name works too where its data is reachable.
Needs the optional extra: pip install 'zobench[lm-eval]'.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from zobench.errors import UserError

LOCAL_TASKS = Path(__file__).parent / "tasks" / "lm_eval_tasks"


class LmEvalSettings(BaseModel):
    """`lm_eval:` in a suite's defaults (or a component's settings): lm-eval tasks run on the final model."""

    model_config = ConfigDict(extra="forbid")
    tasks: list[str] = Field(min_length=1)  # e.g. [zobench_sst2, zobench_rte] (local) or any lm-eval task name
    data_dir: str | None = None  # fills {data_dir} in local YAMLs; relative to the suite file (default: its data_dir)
    limit: PositiveInt | None = None  # examples per task (None: all)
    num_fewshot: int | None = None
    batch_size: PositiveInt = 8


def local_tasks() -> dict[str, Path]:
    return {p.stem: p for p in sorted(LOCAL_TASKS.glob("*.yaml"))}


def task_config(name: str, data_dir: str | None) -> dict[str, Any] | str:
    """A local task as a config dict with its data files resolved; any other name is passed through."""
    path = local_tasks().get(name)
    if path is None:
        return name
    if not data_dir:
        raise UserError(f"lm-eval task '{name}' reads local files: set lm_eval.data_dir to the folder holding them "
                        f"(e.g. ../shared/data)")
    config = yaml.safe_load(path.read_text())
    files = config.get("dataset_kwargs", {}).get("data_files", {})
    for split, pattern in files.items():
        file = Path(pattern.format(data_dir=str(Path(data_dir).resolve())))
        if not file.is_file():
            raise UserError(f"lm-eval task '{name}': data file {file} not found; check lm_eval.data_dir")
        files[split] = str(file)
    return config


def evaluate(model: Any, tokenizer: Any, settings: LmEvalSettings | dict[str, Any]) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} from lm-eval's simple_evaluate on `model` as it is now."""
    s = LmEvalSettings.model_validate(settings)
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UserError("lm-eval is not installed: pip install 'zobench[lm-eval]' (or pip install lm-eval)") from None
    was_training = model.training
    model.eval()
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=s.batch_size)
        out = simple_evaluate(model=lm, tasks=[task_config(t, s.data_dir) for t in s.tasks],
                              num_fewshot=s.num_fewshot, limit=s.limit, task_manager=TaskManager(),
                              log_samples=False, bootstrap_iters=0, random_seed=0, numpy_random_seed=0,
                              torch_random_seed=0, fewshot_random_seed=0)
    finally:
        model.train(was_training)
    results = (out or {}).get("results", {})
    return {task: {k.split(",")[0]: float(v) for k, v in metrics.items() if isinstance(v, int | float)
                   and not k.startswith(("alias", "sample_len")) and "stderr" not in k}
            for task, metrics in results.items()}
