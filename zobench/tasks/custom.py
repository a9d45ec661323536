"""`custom`: a user's own task with no code — data files or a hub dataset, a text template, options or a
verbalizer, a metric.

Declared inline in a suite (`- name: custom` + the fields below) or in a YAML file beside the suite
(`- name: my_task.yaml`; its relative file paths are then relative to that file). Example:

    files: {train: reviews_train.csv, test: reviews_test.csv}   # .csv .tsv .json .jsonl .parquet
    template: "{{ text }} It was"          # jinja2 over a row's fields; '{{ mask }}' marks a masked LM's mask
    verbalizer: {neg: " terrible", pos: " great"}   # label value → option text (or `options:` + index labels)
    label_field: sentiment                  # the field holding the label (default "label")
    metric: accuracy                        # accuracy | f1 (macro); generation: f1 | em

Every file is read by `datasets` (`load_dataset("csv"|"json"|"parquet", data_files=...)`; .tsv is csv with a
tab and no quoting, as GLUE writes it). csv/tsv fields stay the text written, never parsed as numbers or
missing values, so a template renders what the file says. A csv/tsv without a header row names its columns
with `column_names: [class, title, description]` (AG News). A split may come from a hub dataset instead of a file:
`files: {train: {hub: ag_news, split: train}, test: {hub: ag_news, config: null, split: test}}` (`split`
defaults to the key; `hub` may also be a local dataset folder, a hub-layout one or one `save_to_disk` wrote).

A generation task gives `answer:` (a jinja2 template or a field name whose value is a string or a list of
acceptable answers) instead of options; the model is trained on ' <answer>\\n' and decodes greedily.
Splits: `dev` if given, else drawn from train (MeZO's protocol); `test` (or `validation`) is the test set.
Planning (`zobench validate`, and `zobench run` before any model loads) opens every split once and checks
that each field the template, answer and label use is there and that every label has an option.
"""

from __future__ import annotations

import csv
import functools
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import jinja2
import jinja2.meta
import jinja2.nodes
import torch
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from pydantic import BaseModel, ConfigDict, PositiveInt, field_validator, model_validator

from zobench.errors import FieldError, UserError
from zobench.models.base import ModelBundle
from zobench.registry import tasks
from zobench.tasks.base import ChoiceParams, ChoiceTask, Splits, choice_workload, mezo_splits
from zobench.tasks.generation import Answerable, GenerationParams, generation_workload
from zobench.tasks.scoring import Choice

if TYPE_CHECKING:
    from datasets import Dataset

MASK = "\x00mask\x00"
# Suites are shared like lm-eval task files, so a template is untrusted: jinja2's sandbox refuses attributes
# that start with '_' (the way out to Python: `lipsum.__globals__`), calls that are not safe, and changes
# to objects it is handed; `unsafe_access` also refuses it before anything runs.
_env = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)

# file suffix → (datasets builder, its options). TSV as GLUE writes it: tabs, quotes are text.
FORMATS: dict[str, tuple[str, dict[str, Any]]] = {
    ".csv": ("csv", {}), ".tsv": ("csv", {"sep": "\t", "quoting": csv.QUOTE_NONE}),
    ".json": ("json", {}), ".jsonl": ("json", {}), ".parquet": ("parquet", {}),
}


def unsafe_access(text: str) -> str | None:
    """The first '_'-prefixed attribute or key a template reaches for (`x.__class__`, `x['__globals__']`), else
    None. The sandbox would refuse it while rendering; this refuses it when the suite is planned."""
    for node in _env.parse(text).find_all((jinja2.nodes.Getattr, jinja2.nodes.Getitem)):
        name = node.attr if isinstance(node, jinja2.nodes.Getattr) else getattr(node.arg, "value", None)
        if isinstance(name, str) and name.startswith("_"):
            return name
    return None


def template_fields(text: str) -> set[str]:
    """The row fields a template reads: every name it does not set itself, less `mask` and jinja2's globals.
    Found from the template's text, so a field used only under an `{% if %}` is checked too."""
    return jinja2.meta.find_undeclared_variables(_env.parse(text)) - {"mask"} - set(_env.globals)


class HubSplit(BaseModel):
    """One split of a dataset `datasets.load_dataset` opens by name: a hub id, or a local dataset folder
    (hub layout, or one `Dataset.save_to_disk` wrote)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    hub: str
    config: str | None = None
    split: str | None = None  # default: the split's key in `files`
    revision: str | None = None  # a commit, so a run reads the same rows next year


class CustomParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data_dir: str | None = None  # folder that relative paths in `files` start from
    files: dict[Literal["train", "dev", "validation", "test"], str | HubSplit]
    column_names: list[str] | None = None  # the columns of headerless .csv/.tsv files, in order
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

    @field_validator("verbalizer", mode="before")
    @classmethod
    def _label_keys_as_text(cls, value: Any) -> Any:
        """YAML reads `{1: " World"}` with an int key; a label read from a file is compared as text anyway."""
        if isinstance(value, dict):
            return {str(k).lower() if isinstance(k, bool) else str(k): v for k, v in value.items()}
        return value

    @field_validator("column_names")
    @classmethod
    def _distinct(cls, names: list[str] | None) -> list[str] | None:
        if names is not None and (not names or len(set(names)) != len(names)):
            raise ValueError(f"give each column of the headerless files a distinct name, in order; got {names}")
        return names

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


def describe(p: CustomParams, split: str) -> str:
    """Where a split's rows come from, as an error message names it."""
    source = p.files[split]
    if isinstance(source, str):
        return str(_file(p, source))
    config = f", config '{source.config}'" if source.config else ""
    return f"dataset '{source.hub}'{config}, split '{source.split or split}'"


@contextmanager
def _datasets_quiet() -> Iterator[None]:
    """No progress bars or logged tracebacks while `datasets` reads: a failure reaches the user once, as a
    UserError that says what to fix."""
    from datasets.utils import logging as ds_logging

    bars, level = ds_logging.is_progress_bar_enabled(), ds_logging.get_verbosity()
    ds_logging.disable_progress_bar()
    ds_logging.set_verbosity(ds_logging.CRITICAL)
    try:
        yield
    finally:
        ds_logging.set_verbosity(level)
        if bars:
            ds_logging.enable_progress_bar()


def _cause(e: BaseException) -> str:
    """The first line of the innermost error (`datasets` wraps pandas' and pyarrow's, which say what is wrong)."""
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _first_row(path: Path, delimiter: str, quoting: int) -> list[str]:
    with path.open(newline="", encoding="utf-8") as f:
        return next(csv.reader(f, delimiter=delimiter, quoting=quoting), [])


@functools.lru_cache(maxsize=32)
def _read_file(path: Path, stamp: tuple[int, int], column_names: tuple[str, ...] | None) -> Dataset:
    """A local file as a `datasets.Dataset` (memory-mapped Arrow). `stamp` (mtime, size) keys the cache, so
    planning and a run in the same process open a file once, and an edited file is read again."""
    from datasets import Features, List, Sequence, Value, load_dataset

    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise UserError(f"{path}: unknown data format '{suffix}'; use one of {', '.join(FORMATS)}")
    builder, options = FORMATS[suffix]
    options = dict(options)
    if builder == "csv":  # every field as the text written: no '007' → 7, '3.50' → 3.5, 'NA' → None
        first = _first_row(path, options.get("sep", ","), options.get("quoting", csv.QUOTE_MINIMAL))
        if not first:
            raise UserError(f"{path}: the file is empty")
        if column_names is not None:
            if len(first) != len(column_names):
                raise UserError(f"{path}: its first row has {len(first)} fields but column_names names "
                                f"{len(column_names)} ({list(column_names)}); name every column, in order")
            options["column_names"] = list(column_names)
        elif len(set(first)) != len(first):
            raise UserError(f"{path}: its header row names a column twice ({first}); give each a distinct name, "
                            f"or, if the file has no header row, name its columns with column_names: [...]")
        options["keep_default_na"] = False
        options["features"] = Features({name: Value("string") for name in column_names or first})
    elif column_names is not None:
        raise UserError(f"{path}: column_names is for headerless .csv/.tsv files; a {suffix} file names its "
                        f"fields itself, so drop column_names")
    try:
        with _datasets_quiet():
            ds = load_dataset(builder, data_files=str(path), split="train", **options)
            if builder == "json" and ds.column_names == ["data"] and isinstance(ds.features["data"],
                                                                             List | Sequence):
                ds = load_dataset(builder, data_files=str(path), split="train", field="data")  # {"data": [...]}
    except UserError:
        raise
    except Exception as e:  # pandas, pyarrow and datasets each raise their own kinds
        raise UserError(f"{path}: could not be read as {suffix[1:]} ({_cause(e)}); fix the file or its "
                        f"extension") from None
    return ds


@functools.lru_cache(maxsize=32)
def _read_hub(source: HubSplit, split: str, base: Path) -> Dataset:
    """A split of a named dataset: a local folder `save_to_disk` wrote (`load_from_disk`), else
    `load_dataset(hub, config, split=..., revision=...)`, which reads a hub-layout folder or the hub
    (its cache when offline)."""
    from datasets import DatasetDict, load_dataset, load_from_disk

    local = Path(source.hub).expanduser()
    local = local if local.is_absolute() else base / local
    where = f"dataset '{source.hub}'" + (f", config '{source.config}'" if source.config else "")
    try:
        with _datasets_quiet():
            if local.is_dir() and ((local / "dataset_dict.json").is_file() or (local / "state.json").is_file()):
                saved = load_from_disk(str(local))
                if isinstance(saved, DatasetDict):
                    if split not in saved:
                        raise UserError(f"{where} has no split '{split}'; its splits: {sorted(saved)}")
                    return saved[split]
                return saved
            return load_dataset(str(local) if local.is_dir() else source.hub, source.config, split=split,
                                revision=source.revision)
    except UserError:
        raise
    except Exception as e:  # offline, a wrong id/config/split: datasets raises many kinds
        raise UserError(f"{where}, split '{split}' could not be loaded ({_cause(e)}); check hub, config and "
                        f"split, or point hub at a local copy (a folder) when offline") from None


def open_split(p: CustomParams, split: str) -> Dataset:
    """The rows of one split, read by `datasets`."""
    source = p.files[split]
    if isinstance(source, HubSplit):
        return _read_hub(source, source.split or split, Path(p.data_dir) if p.data_dir else Path.cwd())
    path = _file(p, source)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise UserError(f"{split} file '{path}' {what}; fix files.{split} (relative paths start from data_dir, or "
                        f"the task file's folder)")
    stat = path.stat()
    names = tuple(p.column_names) if p.column_names is not None else None
    return _read_file(path.resolve(), (stat.st_mtime_ns, stat.st_size), names)


@tasks.register("custom")
class CustomTask(ChoiceTask):
    """A task declared in YAML: files + jinja2 template + options/verbalizer (or answer) + metric."""

    Params = CustomParams  # type: ignore[assignment]

    @classmethod
    def check(cls, params: dict[str, Any]) -> None:
        """At planning, before any model loads: open every split once and check the task against it — the
        data parses, every field the template, answer and label use is a column, the template renders on the
        first row (in the sandbox), every label value has an option."""
        p = CustomParams.model_validate(params)
        if p.data_dir and not Path(p.data_dir).is_dir():
            what = "is a file, not a folder" if Path(p.data_dir).exists() else "does not exist"
            raise FieldError("data_dir", f"'{p.data_dir}' {what}; point data_dir at the folder holding the files")
        for split in p.files:
            try:
                ds = open_split(p, split)
            except UserError as e:
                raise FieldError("files", f"files.{split}: {e}") from None
            source = describe(p, split)
            if len(ds) == 0:
                raise FieldError("files", f"files.{split}: {source} has no rows")
            columns = list(ds.column_names)
            headerless = (isinstance(p.files[split], str) and p.column_names is None  # a data row read as one
                          and Path(str(p.files[split])).suffix.lower() in (".csv", ".tsv")
                          and not all(name.isidentifier() for name in columns))
            hint = ("; if the file has no header row, name its columns with column_names: [...]" if headerless
                    else "")
            used = {"template": template_fields(p.template)}
            if p.answer is not None and p.answer not in columns:  # a field's name, or a template over fields
                used["answer"] = {p.answer} if p.answer.isidentifier() else template_fields(p.answer)
            if p.answer is None:
                used["label_field"] = {p.label_field}
            for field, names in used.items():
                missing = sorted(names - set(columns))
                if missing:
                    fix = f"set {field} to one of them" if field == "label_field" else f"fix the {field}"
                    raise FieldError(field, f"'{missing[0]}' is undefined: the {field} uses it but files.{split} "
                                            f"({source}) has no field '{missing[0]}'; its fields: {columns}; {fix}"
                                            f"{hint}")
            first = dict(ds[0], __where__=f"{source}: row 1")
            for field in used.keys() & {"template", "answer"}:
                try:
                    _render(_template(getattr(p, field), field), first, first["__where__"])
                except UserError as e:
                    raise FieldError(field, f"{e}") from None
            if p.answer is None:
                for value in ds.unique(p.label_field):
                    try:
                        cls.label_index(p, {p.label_field: value, "__where__": f"{source}: row "
                                            f"{ds[p.label_field].index(value) + 1}"})
                    except UserError as e:
                        raise FieldError("verbalizer" if p.verbalizer is not None else "options", f"{e}") from None
        n_train = len(open_split(p, "train"))
        if "dev" not in p.files and n_train <= p.dev_size:
            raise FieldError("dev_size", f"files.train ({describe(p, 'train')}) has {n_train} rows and dev takes "
                                         f"dev_size={p.dev_size} of them (MeZO's protocol), leaving none to train on; "
                                         f"set dev_size below {n_train}, or give a dev file")

    @classmethod
    def read(cls, p: CustomParams) -> dict[str, list[dict[str, Any]]]:
        out = {}
        for split in p.files:
            rows = open_split(p, split).to_list()
            source = describe(p, split)
            if not rows:
                raise UserError(f"{source}: no rows")
            for i, r in enumerate(rows):
                r["__where__"] = f"{source}: row {i + 1}"
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
            workload = choice_workload(cls, cp, Splits(data, note=note), bundle, device)  # type: ignore[arg-type]
        workload.metric = p.metric
        return workload
