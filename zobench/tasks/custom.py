"""`custom`: a user's own task with no code — data files, a text template, options or a verbalizer, a metric.

Declared inline in a suite (`- name: custom` + the fields below) or in a YAML file beside the suite
(`- name: my_task.yaml`; its relative file paths are then relative to that file). Example:

    files: {train: reviews_train.csv, test: reviews_test.csv}   # .csv/.tsv (header), .jsonl, .json
    template: "{{ text }} It was"          # jinja2 over a row's fields; '{{ mask }}' marks a masked LM's mask
    verbalizer: {neg: " terrible", pos: " great"}   # label value → option text (or `options:` + index labels)
    label_field: sentiment                  # the field holding the label (default "label")
    metric: accuracy                        # accuracy | f1 (macro); generation: f1 | em

A generation task gives `answer:` (a jinja2 template or a field name whose value is a string or a list of
acceptable answers) instead of options; the model is trained on ' <answer>\\n' and decodes greedily.
Splits: `dev` if given, else drawn from train (MeZO's protocol); `test` (or `validation`) is the test set.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Literal

import jinja2
import jinja2.nodes
import torch
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from pydantic import BaseModel, ConfigDict, PositiveInt, field_validator, model_validator

from zobench.errors import FieldError, UserError
from zobench.models.base import ModelBundle
from zobench.registry import tasks
from zobench.tasks.base import ChoiceParams, ChoiceTask, choice_workload, mezo_splits
from zobench.tasks.generation import Answerable, GenerationParams, generation_workload
from zobench.tasks.io import read_table
from zobench.tasks.scoring import Choice

MASK = "\x00mask\x00"
# Suites are shared like lm-eval task files, so a template is untrusted: jinja2's sandbox refuses attributes
# that start with '_' (the way out to Python: `lipsum.__globals__`), calls that are not safe, and changes
# to objects it is handed; `unsafe_access` also refuses it before anything runs.
_env = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)


def unsafe_access(text: str) -> str | None:
    """The first '_'-prefixed attribute or key a template reaches for (`x.__class__`, `x['__globals__']`), else
    None. The sandbox would refuse it while rendering; this refuses it when the suite is planned."""
    for node in _env.parse(text).find_all((jinja2.nodes.Getattr, jinja2.nodes.Getitem)):
        name = node.attr if isinstance(node, jinja2.nodes.Getattr) else getattr(node.arg, "value", None)
        if isinstance(name, str) and name.startswith("_"):
            return name
    return None


class CustomParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data_dir: str | None = None  # folder that relative paths in `files` start from
    files: dict[Literal["train", "dev", "validation", "test"], str]
    template: str
    options: list[str] | None = None
    verbalizer: dict[str, str] | None = None
    label_field: str = "label"  # the field holding the label
    answer: str | None = None
    metric: Literal["accuracy", "f1", "em"] = "accuracy"
    objective: Literal["loss", "accuracy", "f1", "em"] = "loss"
    train_size: PositiveInt = 1000
    dev_size: PositiveInt = 500
    test_size: PositiveInt = 1000
    max_length: PositiveInt = 256
    max_new_tokens: PositiveInt = 50
    eval_batch_size: PositiveInt = 16
    train_as_classification: bool = True

    @model_validator(mode="after")
    def _check(self) -> CustomParams:
        given = [k for k in ("options", "verbalizer", "answer") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'options' (labels are indices), 'verbalizer' (label value → "
                             f"option text) or 'answer' (a generation task); got {given or 'none'}")
        if "train" not in self.files or not ({"test", "validation"} & set(self.files)):
            raise ValueError("'files' needs 'train' and 'test' (or 'validation'), e.g. {train: train.csv, "
                             "test: test.csv}")
        if self.answer is None and self.metric == "em":
            raise ValueError("metric 'em' is for generation tasks (with 'answer'); use accuracy or f1")
        if self.answer is not None and self.metric == "accuracy":
            self.metric = "f1"
        return self

    @field_validator("template", "answer")
    @classmethod
    def _safe(cls, text: str | None) -> str | None:
        if text is None:
            return None
        try:
            reached = unsafe_access(text)
        except jinja2.TemplateSyntaxError as e:
            raise ValueError(f"jinja2 syntax error: {e.message}") from None
        if reached is not None:
            raise ValueError(f"reaches for '{reached}', which templates may not use (they are rendered in jinja2's "
                             f"sandbox); use only the row's fields, e.g. '{{{{ text }}}}'")
        return text


def _template(text: str, where: str) -> jinja2.Template:
    try:
        return _env.from_string(text)
    except jinja2.TemplateSyntaxError as e:
        raise UserError(f"{where}: jinja2 syntax error: {e.message}") from None


def _render(tpl: jinja2.Template, row: dict[str, Any], where: str) -> str:
    try:
        return tpl.render(**row, mask=MASK)
    except jinja2.UndefinedError as e:
        raise UserError(f"{where}: {e.message}; the row has fields {sorted(set(row) - {'__where__'})}") from None
    except SecurityError as e:
        raise UserError(f"{where}: the template was refused by jinja2's sandbox ({e}); use only the row's fields"
                        ) from None


def _verbalizer_key(p: CustomParams, value: Any) -> str | None:
    """The verbalizer key a label value stands for (as written, or lower-cased), None when there is none."""
    assert p.verbalizer is not None
    return next((key for key in (str(value), str(value).lower()) if key in p.verbalizer), None)


def _file(p: CustomParams, name: str) -> Path:
    base = Path(p.data_dir) if p.data_dir else Path.cwd()
    return Path(name) if Path(name).is_absolute() else base / name


@tasks.register("custom")
class CustomTask(ChoiceTask):
    """A task declared in YAML: files + jinja2 template + options/verbalizer (or answer) + metric."""

    Params = CustomParams  # type: ignore[assignment]

    @classmethod
    def check(cls, params: dict[str, Any]) -> None:
        """At planning, open every data file and try the task on it: the files exist and parse, the template and
        answer render on a row (in the sandbox), the label field is there and every label maps to an option."""
        p = CustomParams.model_validate(params)
        if p.data_dir and not Path(p.data_dir).is_dir():
            what = "is a file, not a folder" if Path(p.data_dir).exists() else "does not exist"
            raise FieldError("data_dir", f"'{p.data_dir}' {what}; point data_dir at the folder holding the files")
        for split, name in p.files.items():
            path = _file(p, name)
            if not path.is_file():
                what = "is a folder" if path.is_dir() else "does not exist"
                raise FieldError("files", f"{split} file '{path}' {what}; fix files.{split} (relative paths start "
                                          f"from data_dir, or the task file's folder)")
            try:
                rows = read_table(path)
            except UserError as e:
                raise FieldError("files", f"files.{split}: {e}") from None
            if not rows:
                raise FieldError("files", f"{split} file '{path}' has no rows")
            first = dict(rows[0], __where__=f"{path}: row 1")
            for field in ("template", "answer") if p.answer is not None and p.answer not in first else ("template",):
                try:
                    _render(_template(getattr(p, field), field), first, first["__where__"])
                except UserError as e:
                    raise FieldError(field, f"{e}") from None
            if p.answer is not None:
                continue
            if p.label_field not in first:
                raise FieldError("label_field", f"{path} has no field '{p.label_field}'; set label_field to one of "
                                                f"{sorted(rows[0])}")
            for i, row in enumerate(rows):
                try:
                    cls.label_index(p, dict(row, __where__=f"{path}: row {i + 1}"))
                except UserError as e:
                    raise FieldError("verbalizer" if p.verbalizer is not None else "options", f"{e}") from None

    @classmethod
    def read(cls, p: CustomParams) -> dict[str, list[dict[str, Any]]]:
        out = {}
        for split, name in p.files.items():
            path = _file(p, name)
            rows = read_table(path)
            if not rows:
                raise UserError(f"{path}: no rows")
            for i, r in enumerate(rows):
                r["__where__"] = f"{path}: row {i + 1}"
            out[split] = rows
        return out

    @classmethod
    def label_index(cls, p: CustomParams, row: dict[str, Any]) -> int:
        where = row["__where__"]
        if p.label_field not in row:
            fields = sorted(set(row) - {"__where__"})
            raise UserError(f"{where}: no label field '{p.label_field}'; set label_field to one of {fields}")
        value = row[p.label_field]
        if p.verbalizer is not None:
            keys = list(p.verbalizer)
            key = _verbalizer_key(p, value)
            if key is None:
                raise UserError(f"{where}: label {value!r} is not a verbalizer key; keys: {keys}; make the "
                                f"verbalizer's keys the label values")
            return keys.index(key)
        assert p.options is not None
        try:
            index = int(value)
        except (TypeError, ValueError):
            raise UserError(f"{where}: label {value!r} is not an index into options; use 'verbalizer' to map label "
                            f"values to option texts") from None
        if not 0 <= index < len(p.options):
            raise UserError(f"{where}: label {index} is out of range for {len(p.options)} options")
        return index

    @classmethod
    def choice(cls, p: CustomParams, tpl: jinja2.Template, row: dict[str, Any]) -> Choice:
        text = _render(tpl, row, row["__where__"])
        prompt, _, suffix = text.partition(MASK)
        options = list(p.verbalizer.values()) if p.verbalizer is not None else list(p.options or [])
        return Choice(prompt=prompt, options=options, label=cls.label_index(p, row), suffix=suffix)

    @classmethod
    def answerable(cls, p: CustomParams, tpl: jinja2.Template, row: dict[str, Any]) -> Answerable:
        assert p.answer is not None
        where = row["__where__"]
        if p.answer in row:
            value = row[p.answer]
            answers = [str(a) for a in value] if isinstance(value, list) else [str(value)]
        else:
            answers = [_render(_template(p.answer, "answer"), row, where).strip()]
        if not answers or not answers[0]:
            raise UserError(f"{where}: empty answer")
        return Answerable(prompt=_render(tpl, row, where).replace(MASK, ""), options=[f" {answers[0]}\n"], label=0,
                          answers=answers)

    @classmethod
    def build(cls, params: dict[str, Any], bundle: ModelBundle | None, device: torch.device, seed: int) -> Any:
        p = CustomParams.model_validate(params)
        if bundle is None:
            raise UserError("task 'custom' needs a model")
        raw = cls.read(p)
        tpl = _template(p.template, "template")
        make = (lambda r: cls.answerable(p, tpl, r)) if p.answer is not None else (lambda r: cls.choice(p, tpl, r))
        test_rows = raw.get("test", raw.get("validation", []))
        if "dev" in raw:
            rng = random.Random(seed)
            parts = {"train": rng.sample(raw["train"], min(p.train_size, len(raw["train"]))),
                     "dev": rng.sample(raw["dev"], min(p.dev_size, len(raw["dev"]))),
                     "test": random.Random(seed + 1).sample(test_rows, min(p.test_size, len(test_rows)))}
            note = "given train/dev/test files"
        else:
            parts, note = mezo_splits(raw["train"], test_rows, p, seed)
        data = {k: [make(r) for r in v] for k, v in parts.items()}
        if p.answer is not None:
            if bundle.kind != "causal":
                raise UserError("a custom generation task (with 'answer') needs a causal LM")
            gp = GenerationParams(train_size=p.train_size, dev_size=p.dev_size, test_size=p.test_size,
                                  max_length=p.max_length, max_new_tokens=p.max_new_tokens,
                                  eval_batch_size=p.eval_batch_size,
                                  objective=p.objective if p.objective in ("loss", "f1", "em") else "f1")
            workload = generation_workload(gp, data, bundle, device, note)
        else:
            if p.objective == "em":
                raise UserError("objective 'em' is for generation tasks; use loss, accuracy or f1")
            cp = ChoiceParams(train_size=p.train_size, dev_size=p.dev_size, test_size=p.test_size,
                              max_length=p.max_length, eval_batch_size=p.eval_batch_size,
                              objective=p.objective, train_as_classification=p.train_as_classification)
            cls._note = note
            workload = choice_workload(cls, cp, data, bundle, device)  # type: ignore[arg-type]
        workload.metric = p.metric
        return workload
