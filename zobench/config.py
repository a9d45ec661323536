"""Suite schema (pydantic) and YAML loading with file:line on every error.

A suite is a grid of models × tasks × methods × schemes × seeds. Every grid entry is a
*component*: a registered name plus its parameters, validated against that entry's own
`Params` model, so a typo in a learning-rate key is caught before anything runs.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, ValidationInfo, field_validator

from zobench.errors import UserError, did_you_mean
from zobench.lm_eval_bridge import LmEvalSettings

Loc = tuple[str | int, ...]


# --------------------------------------------------------------------------- YAML with lines
class _LineLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}' (first at line {seen[key]})", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _line_map(node: yaml.Node, loc: Loc = (), out: dict[Loc, int] | None = None) -> dict[Loc, int]:
    """Map each path in the document to the line where it starts."""
    out = {} if out is None else out
    out[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = (*loc, key_node.value)
            out[child] = key_node.start_mark.line + 1
            _line_map(value_node, child, out)
            out[child] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_map(item, (*loc, i), out)
    return out


MAX_NODES = 100_000  # values in a document once its aliases are expanded: far above any real suite
MAX_DEPTH = 64  # nesting levels: a suite needs about eight


def _bounded(path: Path, root: yaml.Node) -> None:
    """Refuse a document that aliases expand past MAX_NODES values (the 'billion laughs'), nests deeper than
    MAX_DEPTH, or holds a non-finite number (.inf, .nan: no setting takes one). Linear in the file's size:
    each node's expanded size is counted once, however many aliases point at it."""
    size: dict[int, int] = {}
    stack: list[tuple[yaml.Node, Loc, bool]] = [(root, (), False)]
    while stack:
        node, loc, children_done = stack.pop()
        at = f"{path}:{node.start_mark.line + 1}: {dotted(loc)}"
        if len(loc) > MAX_DEPTH:
            raise UserError(f"{at}: nested more than {MAX_DEPTH} levels deep; a suite needs far fewer: flatten it")
        if isinstance(node, yaml.ScalarNode):
            if node.tag == "tag:yaml.org,2002:float" and not _finite(node.value):
                raise UserError(f"{at}: '{node.value}' is not a finite number; give a number")
            size[id(node)] = 1
            continue
        if isinstance(node, yaml.MappingNode):
            children = [(value, (*loc, str(key.value))) for key, value in node.value]
        else:
            children = [(item, (*loc, i)) for i, item in enumerate(node.value)]
        if not children_done:
            if id(node) in size:
                continue
            size[id(node)] = 0  # a marker: an alias back to an ancestor is not expanded twice
            stack.append((node, loc, True))
            stack.extend((child, child_loc, False) for child, child_loc in children if id(child) not in size)
            continue
        size[id(node)] = 1 + sum(size.get(id(child), 1) for child, _ in children) + len(children) * isinstance(
            node, yaml.MappingNode)
        if size[id(node)] > MAX_NODES:
            raise UserError(f"{at}: aliases expand this document past {MAX_NODES:,} values (an alias bomb?); "
                            f"write the values out or use fewer aliases")


def _shallow(path: Path, text: str) -> None:
    """Refuse deep nesting from the event stream (PyYAML's parser keeps an explicit stack; its composer, which
    builds nodes, recurses), stopping at the first level too deep: 20,000 '[' cost microseconds, not a crash."""
    depth = 0
    for event in yaml.parse(text, Loader=_LineLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise UserError(f"{path}:{event.start_mark.line + 1}: nested more than {MAX_DEPTH} levels deep "
                                f"(column {event.start_mark.column + 1}); a suite needs far fewer: flatten it")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _finite(text: str) -> bool:
    """A YAML float as written ('.inf', '1.0e999', '1_000.5', '1:30.0') is a finite number."""
    value = text.replace("_", "").lower().lstrip("+-")
    if value in (".inf", ".nan"):
        return False
    try:
        return ":" in value or math.isfinite(float(value))
    except ValueError:
        return True  # not a plain decimal: PyYAML's own constructor decides


def load_yaml(path: Path) -> tuple[Any, dict[Loc, int]]:
    """Parse a YAML file; return the data and a path → line map. Errors name file and line."""
    if not path.is_file():
        raise UserError(f"{path}: {'is a folder, not a file' if path.is_dir() else 'file not found'}; check the path "
                        f"(relative paths are from the current folder)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    try:
        _shallow(path, text)
        node = yaml.compose(text, Loader=_LineLoader)
        if node is not None:
            _bounded(path, node)
        data = yaml.load(text, Loader=_LineLoader)
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to read (more than {MAX_DEPTH} levels); flatten it") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark else ""
        start = e.context_mark if e.context_mark and "flow" in (e.context or "") else mark
        field = _field_near(text, start.line) if start else ""
        where_ = f" in '{field}'" if field else ""
        raise UserError(f"{path}{line}: YAML error{where_}: {e.problem or e}; fix the syntax there") from None
    return data, (_line_map(node) if node is not None else {})


def _field_near(text: str, line: int) -> str:
    """The dotted key path of the line a YAML error points at, read from indentation (the file does not parse)."""
    keys: list[str] = []
    indent: int | None = None
    for raw in reversed(text.splitlines()[: line + 1]):
        m = re.match(r"^(\s*)(?:-\s+)?([A-Za-z_][\w.-]*)\s*:", raw)
        if m and (indent is None or len(m.group(1)) < indent):
            keys.append(m.group(2))
            indent = len(m.group(1))
            if indent == 0:
                break
    return ".".join(reversed(keys))


def where(path: Path, lines: dict[Loc, int], loc: Loc) -> str:
    """'file:line: field' for the deepest part of `loc` that has a line."""
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return f"{path}:{lines[loc[:n]]}: {dotted(loc)}"
    return f"{path}: {dotted(loc)}"


def dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


# --------------------------------------------------------------------------- schema
class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


Count = Annotated[int, Field(strict=True, gt=0)]  # strict: `steps: yes` (YAML true) is not one step
Seed = Annotated[int, Field(strict=True, ge=0, lt=2**32)]  # numpy's seed range (runner.seed_everything)


class FsdpSettings(Strict):
    """First-order training sharded by FSDP2 (zobench/parallel/fsdp.py); cpu_offload: FSDP2's CPUOffloadPolicy."""

    cpu_offload: StrictBool = True


class ParallelSettings(Strict):
    """Data-parallel ZO (zobench/parallel/data.py): the run is one of `data` torch.distributed processes
    started by a launcher (`torchrun --nproc-per-node N -m zobench.parallel.launch SUITE`)."""

    data: Count = 1
    mode: Literal["shard", "queries"] = "shard"  # shard: the batch split, losses reduced; queries: q split


class OffloadSettings(Strict):
    """ZO2-style offload (zobench/parallel/offload_hf.py): decoder layers live in `tier` and cross once per step;
    `amp` keeps them there in a low precision (ZO2's AMP mode), up-cast on upload."""

    tier: Literal["safetensors", "host"] = "safetensors"
    amp: Literal["bfloat16", "float16", "float8_e4m3fn"] | None = None


class ShardSettings(Strict):
    """A model over several devices through accelerate (zobench/parallel/sharded.py)."""

    device_map: Literal["auto", "balanced", "balanced_low_0", "sequential"] | dict[str, str | int] = "auto"
    max_memory: dict[str | int, str | int] | None = None


class RunSettings(Strict):
    """How one run trains and evaluates; suite defaults, overridable per component."""

    steps: Count = 100
    batch_size: Count = 16
    eval_every: Count | None = Field(None, description="steps between dev evaluations; None = at the end")
    log_every: Count = 1
    eval_at_start: StrictBool = True
    select: Literal["best-dev", "last"] = "best-dev"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    gpus: Count | None = Field(None, description="GPUs each of the run's processes needs (a model spread over them "
                               "by device_map); the executors reserve gpus × parallel.data. None: one where a GPU is")
    fsdp: FsdpSettings | None = Field(None, description="first-order: shard the model with FSDP2, offload to CPU")
    # torch.compile the model's repeated blocks (models.base.compile_blocks): shorter forwards where the model
    # is big enough, paid for with compile time at the first step and each new shape, and ~100 MB of
    # resident compiler. ZO methods need engine: inplace (the virtual engine's per-op view is not compiled)
    compile: StrictBool = False
    max_seconds: float | None = Field(None, gt=0, allow_inf_nan=False, description="stop a run after this much "
                                                                                    "wall-clock")
    lm_eval: LmEvalSettings | None = Field(None, description="lm-eval tasks run on the final model (in-process)")
    parallel: ParallelSettings | None = Field(None, description="data-parallel ZO over torch.distributed")
    offload: OffloadSettings | None = Field(None, description="train a decoder block by block from a slower tier")
    shard: ShardSettings | None = Field(None, description="place the model over devices with accelerate's device_map")

    @field_validator("offload")
    @classmethod
    def _offload_alone(cls, value: OffloadSettings | None, info: ValidationInfo) -> OffloadSettings | None:
        d = info.data
        if value is not None and (d.get("select") != "last" or d.get("compile") or d.get("parallel") is not None):
            raise ValueError("offload runs with select: last, without compile or parallel (the offloaded layers are "
                             "not in the model's state to keep a best-dev copy of); set select: last")
        return value

    @field_validator("shard")
    @classmethod
    def _one_way_to_fit(cls, value: ShardSettings | None, info: ValidationInfo) -> ShardSettings | None:
        if value is not None and info.data.get("offload") is not None:
            raise ValueError("offload and shard are two ways to fit a model: choose one (remove one of the two)")
        return value


class Component(BaseModel):
    """A registered name plus parameters. `label` names it in tables; `settings` overrides RunSettings."""

    model_config = ConfigDict(extra="allow")
    name: str
    label: str | None = None
    settings: dict[str, Any] = Field(default_factory=dict)

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @property
    def display(self) -> str:
        return self.label or self.name


def _as_components(value: Any) -> Any:
    if isinstance(value, list):
        return [{"name": v} if isinstance(v, str) else v for v in value]
    return value


class Grid(Strict):
    models: list[Component] = Field(default_factory=lambda: [Component(name="none")])
    tasks: list[Component]
    methods: list[Component]
    schemes: list[Component] = Field(default_factory=lambda: [Component(name="full")])
    seeds: list[Seed] = Field(default_factory=lambda: [0])

    _coerce = field_validator("models", "tasks", "methods", "schemes", mode="before")(
        lambda cls, v: _as_components(v)
    )

    @field_validator("models", "tasks", "methods", "schemes", "seeds")
    @classmethod
    def _non_empty(cls, v: list) -> list:
        if not v:
            raise ValueError("must list at least one entry")
        return v


class Rule(Strict):
    """Matches grid cells by label (or seed). Every given key must match."""

    model: str | list[str] | None = None
    task: str | list[str] | None = None
    method: str | list[str] | None = None
    scheme: str | list[str] | None = None
    seed: int | list[int] | None = None


class ExecutorSpec(BaseModel):
    """Which engine runs the suite (`name`; `zobench run --executor` picks another) and its options.

    `options` belong to `name`'s engine; a key named after another engine holds that engine's options,
    used when `--executor` picks it: `{name: local, slurm: {partition: gpu}, ray: {address: auto}}`.
    """

    model_config = ConfigDict(extra="allow")
    name: str = "local"
    options: dict[str, Any] = Field(default_factory=dict)

    def sections(self) -> dict[str, tuple[Loc, Any]]:
        """Engine name → (where its options sit in the suite, the options)."""
        out: dict[str, tuple[Loc, Any]] = {k: (("executor", k), v) for k, v in (self.model_extra or {}).items()}
        if self.options or self.name not in out:
            out[self.name] = (("executor", "options"), self.options)
        return out

    def options_for(self, name: str) -> dict[str, Any]:
        """The options given for engine `name` (empty: its defaults)."""
        return dict(self.sections().get(name, ((), {}))[1] or {})


def check_executor(spec: ExecutorSpec, path: Path, lines: dict[Loc, int]) -> None:
    """Every engine section names a registered executor and validates against its `Options` (file:line)."""
    from zobench.registry import UnknownName, executors

    extra = spec.model_extra or {}
    if spec.options and spec.name in extra:
        raise UserError(f"{where(path, lines, ('executor', spec.name))}: options for '{spec.name}' are given twice "
                        f"(also in executor.options); keep one")
    for name, (loc, options) in spec.sections().items():
        try:
            entry = executors.get(name)
        except UnknownName as e:
            if loc[-1] == "options":
                raise UserError(f"{where(path, lines, ('executor', 'name'))}: {e}") from None
            raise UserError(f"{where(path, lines, loc)}: unknown field '{name}' (executor takes name, options and "
                            f"one section per engine); {did_you_mean(name, ['name', 'options', *executors.names()])}"
                            ) from None
        if not isinstance(options, dict):
            raise UserError(f"{where(path, lines, loc)}: options for executor '{name}' must be a mapping "
                            f"of option: value, got {type(options).__name__}")
        schema: type[BaseModel] | None = getattr(entry, "Options", None)
        if schema is None:
            continue
        try:
            schema.model_validate(options)
        except ValidationError as e:
            err = e.errors()[0]
            raise UserError(f"{where(path, lines, (*loc, *err['loc']))}: {_pydantic_message(err, schema)}") from None


class Tolerance(Strict):
    """A value holds when |got − reference| ≤ abs + rel·|reference|; both 0 means exactly equal."""

    abs: float = Field(0.0, ge=0)
    rel: float = Field(0.0, ge=0)


class CheckSpec(Strict):
    """How `zobench check` compares this suite's runs with its stored reference."""

    tolerances: dict[str, Tolerance] = Field(default_factory=dict,
                                             description="metric name or glob (e.g. 'test.*') → tolerance")
    timing: bool = Field(False, description="also compare wall-clock metrics (noisy: give them a tolerance)")
    ignore: list[str] = Field(default_factory=list, description="metric names or globs left out")
    platform_bound: list[str] = Field(default_factory=list, description="run globs whose values repeat only on "
                                      "the reference's platform: elsewhere only their counts and status are compared")


class Suite(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)  # a folder name: keep it short
    description: str = ""
    regenerates: str | None = Field(None, description="the paper table this suite regenerates, e.g. 'mezo-table1'")
    defaults: RunSettings = Field(default_factory=RunSettings)
    grid: Grid
    exclude: list[Rule] = Field(default_factory=list)
    include: list[dict[str, Any]] = Field(default_factory=list)
    executor: ExecutorSpec = Field(default_factory=ExecutorSpec)
    data_dir: str | None = Field(None, description="default data_dir for every task that takes one")
    check: CheckSpec = Field(default_factory=CheckSpec)

    @field_validator("executor", mode="before")
    @classmethod
    def _executor_name(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v


def _pydantic_message(err: dict, model: type[BaseModel] | None) -> str:
    msg = err["msg"]
    if err["type"] == "extra_forbidden" and model is not None:
        field = str(err["loc"][-1])
        return f"unknown field '{field}'; {did_you_mean(field, model.model_fields)}"
    if err["type"] == "missing":
        return "required field is missing; add it"
    got = err.get("input")
    if got is not None and not isinstance(got, dict | list):
        msg += f" (got {got!r})"
    return msg


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The schema class that owns the last field of `loc` (for did-you-mean on unknown fields)."""
    owners: dict[str, type[BaseModel]] = {"defaults": RunSettings, "grid": Grid, "executor": ExecutorSpec,
                                          "check": CheckSpec}
    if len(loc) == 1:
        return Suite
    if len(loc) == 2:
        return owners.get(str(loc[0]))
    if len(loc) == 3 and loc[0] == "exclude":
        return Rule
    if len(loc) == 4 and loc[:2] == ("check", "tolerances"):
        return Tolerance
    return None


def load_suite(path: Path | str) -> tuple[Suite, dict[Loc, int]]:
    """Read and validate a suite file. Raises UserError naming file, line and field."""
    path = Path(path)
    data, lines = load_yaml(path)
    if data is None:
        raise UserError(f"{path}: the file is empty; a suite needs at least 'name', 'grid.tasks' and 'grid.methods'")
    if not isinstance(data, dict):
        raise UserError(f"{path}:1: a suite must be a mapping of fields (name, grid, ...), got {type(data).__name__}")
    try:
        suite = Suite.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(err["loc"])
        raise UserError(f"{where(path, lines, loc)}: {_pydantic_message(err, _model_at(loc))}") from None
    check_executor(suite.executor, path, lines)
    return suite, lines
