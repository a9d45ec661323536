"""Expand a suite into run specs: the matrix, sweeps, exclude/include rules, per-component settings, run ids.

A parameter (or a component's run setting) given as `{sweep: [v1, v2, ...]}` is swept: the component becomes one
configuration per point of the product of its sweeps, all under its label, so the swept runs of one cell
(model × task × method label × scheme) form a tuning group that the report selects from on dev. The mapping form
keeps a parameter whose value is itself a list (`target_modules: [q_proj, v_proj]`) unambiguous.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from zobench import registry
from zobench.config import Component, Loc, Rule, RunSettings, Suite, _pydantic_message, where
from zobench.errors import FieldError, UserError

AXES = {"model": "models", "task": "tasks", "method": "methods", "scheme": "schemes"}
UNHASHED = {"data_dir"}  # where data lives is not what the run is
REMOTE = {"slurm", "ray"}  # executors whose runs execute on other machines
SWEEP = "sweep"


class Resolved(BaseModel):
    """A component with its parameters validated and defaults filled in."""

    name: str
    label: str
    params: dict[str, Any]


class RunSpec(BaseModel):
    suite: str
    model: Resolved
    task: Resolved
    method: Resolved
    scheme: Resolved
    seed: int
    settings: RunSettings
    # the swept values this run takes, "axis.param" (or "axis.settings.key") → value; {} without sweeps.
    # Not hashed: the values are already in the parameters, so unswept suites keep their ids.
    sweep: dict[str, Any] = {}

    def hashed(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", exclude={"suite", "sweep"})
        for key in ("lm_eval", "parallel", "gpus", "fsdp", "offload", "shard"):  # unset: runs keep the ids they had
            if data["settings"].get(key) is None:                             # before these fields existed
                data["settings"].pop(key, None)
        if "lm_eval" in data["settings"]:
            data["settings"]["lm_eval"].pop("data_dir", None)  # where data lives is not what the run is
        method = data["method"]["params"]  # float32 weights: `auto` is full precision, as before the field existed
        if method.get("mixed_precision") == "auto" and data["model"]["params"].get("dtype", "float32") == "float32":
            method.pop("mixed_precision")
        for axis in AXES:
            data[axis]["params"] = {k: v for k, v in data[axis]["params"].items() if k not in UNHASHED}
            data[axis].pop("label")
        return data

    @property
    def spec_hash(self) -> str:
        blob = json.dumps(self.hashed(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    @property
    def cell(self) -> tuple[str, str, str, str]:
        """The tuning group: runs that differ only in swept values and seed."""
        return self.model.label, self.task.label, self.method.label, self.scheme.label

    @property
    def run_id(self) -> str:
        parts = [self.task.label, self.model.label, self.method.label, self.scheme.label,
                 *sweep_names(self.sweep), f"s{self.seed}"]
        slug = re.sub(r"[^A-Za-z0-9.=-]+", "-", "_".join(parts).replace("/", "-"))[:100]
        return f"{slug}_{self.spec_hash}"


def _value_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return "+".join(_value_text(v) for v in value)
    return str(value)


def sweep_names(point: dict[str, Any]) -> list[str]:
    """'lr=1e-06' per swept value; the key keeps its axis only where two axes sweep a parameter of one name."""
    short = [key.split(".")[-1] for key in point]
    return [f"{s if short.count(s) == 1 else key}={_value_text(v)}" for s, (key, v) in zip(short, point.items(),
                                                                                            strict=True)]


def _sweep_values(value: Any, path: Path, lines: dict[Loc, int], loc: Loc) -> list[Any] | None:
    """The values of a `{sweep: [...]}` mapping (None for any other value); a malformed sweep is refused."""
    if not (isinstance(value, dict) and SWEEP in value):
        return None
    if set(value) != {SWEEP}:
        raise UserError(f"{where(path, lines, loc)}: a sweep is a mapping with the one key 'sweep' "
                        f"(`{{sweep: [v1, v2]}}`), got also {sorted(k for k in value if k != SWEEP)}; "
                        f"remove the other keys")
    values = value[SWEEP]
    if not isinstance(values, list) or not values:
        raise UserError(f"{where(path, lines, (*loc, SWEEP))}: 'sweep' needs a non-empty list of values, got "
                        f"{values!r}; write `{{sweep: [v1, v2]}}` (a list-valued point is itself a list: "
                        f"`{{sweep: [[a, b], [a]]}}`)")
    seen: dict[str, int] = {}
    for i, v in enumerate(values):
        key = json.dumps(v, sort_keys=True, default=str)
        if key in seen:
            raise UserError(f"{where(path, lines, (*loc, SWEEP, i))}: value {v!r} is swept twice (also item "
                            f"{seen[key]}); each point must be a distinct configuration")
        seen[key] = i
    return values


def sweep_points(axis: str, comp: Component, path: Path, lines: dict[Loc, int],
                 loc: Loc) -> list[tuple[Component, dict[str, Any]]]:
    """One component per point of the product of its sweeps (in the order written), each with its point."""
    swept: list[tuple[str, str, list[Any]]] = []  # (where: params | settings, key, values)
    for key, value in comp.params.items():
        values = _sweep_values(value, path, lines, (*loc, key))
        if values is not None:
            swept.append(("params", key, values))
    for key, value in comp.settings.items():
        values = _sweep_values(value, path, lines, (*loc, "settings", key))
        if values is not None:
            swept.append(("settings", key, values))
    if not swept:
        return [(comp, {})]
    out = []
    for combo in itertools.product(*(values for _, _, values in swept)):
        data = comp.model_dump()
        point: dict[str, Any] = {}
        for (kind, key, _), value in zip(swept, combo, strict=True):
            if kind == "params":
                data[key] = value
                point[f"{axis}.{key}"] = value
            else:
                data["settings"] = {**data["settings"], key: value}
                point[f"{axis}.settings.{key}"] = value
        out.append((Component.model_validate(data), point))
    return out


def resolve(axis: str, comp: Component, path: Path, lines: dict[Loc, int], loc: Loc,
            defaults: dict[str, Any] | None = None, origins: dict[str, str] | None = None) -> Resolved:
    """Validate a component against its registry entry's `Params`, then its `check` hook (files, paths).
    `origins` says where a default came from (e.g. the suite's data_dir line), for error messages."""
    reg = registry.REGISTRIES[AXES[axis]]
    given = set(comp.params)
    try:
        entry = reg.get(comp.name)
    except registry.UnknownName as e:
        if axis == "model" and ("/" in comp.name or Path(comp.name).exists()):
            entry, comp = reg.get("hf"), Component(name="hf", label=comp.label or comp.name,
                                                   id=comp.name, **comp.params)
        else:
            raise UserError(f"{where(path, lines, (*loc, 'name'))}: {e}") from None
    params = {**(defaults or {}), **comp.params}
    schema: type[BaseModel] | None = entry.Params  # declared by every entry (registry.py)
    if schema is None:
        if comp.params:
            raise UserError(f"{where(path, lines, loc)}: {axis} '{comp.name}' takes no parameters, "
                            f"got {sorted(comp.params)}")
        return Resolved(name=comp.name, label=comp.display, params={})
    params = {k: v for k, v in params.items() if k in schema.model_fields or k in comp.params}
    try:
        checked = schema.model_validate(params)
    except ValidationError as e:
        err = e.errors()[0]
        raise UserError(f"{where(path, lines, (*loc, *err['loc']))}: "
                        f"{_pydantic_message(err, schema)}") from None
    params = checked.model_dump(mode="json")
    if axis == "method":
        params = entry.resolved(params)
    try:
        entry.check(params)
    except FieldError as e:
        at = where(path, lines, (*loc, e.field) if e.field in given else loc)
        if e.field not in given and e.field in (origins or {}):
            at = (origins or {})[e.field]
        raise UserError(f"{at}: {e}") from None
    return Resolved(name=comp.name, label=comp.display, params=params)


def _matches(rule: Rule, cell: dict[str, Any]) -> bool:
    for key, want in rule.model_dump(exclude_none=True).items():
        got = cell[key] if key == "seed" else cell[key].label
        if got not in (want if isinstance(want, list) else [want]):
            return False
    return True


def _settings(suite: Suite, comps: list[Component], path: Path, lines: dict[Loc, int],
              locs: list[Loc], data_dir: str | None = None, executor: str | None = None) -> RunSettings:
    """The run's settings: defaults, then each component's; lm_eval.data_dir is taken relative to the suite
    file, and when unset it is the suite's data_dir (or --data-dir)."""
    merged = suite.defaults.model_dump()
    for comp in comps:
        merged.update(comp.settings)
    try:
        settings = RunSettings.model_validate(merged)
    except ValidationError as e:
        err = e.errors()[0]
        loc = next((lo for c, lo in zip(comps, locs, strict=True) if err["loc"][0] in c.settings), ("defaults",))
        raise UserError(f"{where(path, lines, (*loc, 'settings', *err['loc']))}: "
                        f"{_pydantic_message(err, RunSettings)}") from None
    remote = (executor or suite.executor.name) in REMOTE  # a login node submits; the job checks its own GPU
    if settings.device == "cuda" and not remote and not _cuda_available():
        loc = next(((*lo, "settings", "device") for c, lo in zip(comps, locs, strict=True) if "device" in c.settings),
                   ("defaults", "device"))
        raise UserError(f"{where(path, lines, loc)}: device 'cuda' is asked for but no GPU is visible here; "
                        f"use device: auto (GPU when there is one) or cpu")
    if settings.lm_eval is not None:
        own = settings.lm_eval.data_dir
        resolved = str((path.parent / own).resolve()) if own else data_dir
        settings = settings.model_copy(update={"lm_eval": settings.lm_eval.model_copy(update={"data_dir": resolved})})
    return settings


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def task_component(comp: Component, path: Path, lines: dict[Loc, int], loc: Loc,
                   data_root: str | None) -> Component:
    """A task named by a YAML file (a `custom` task declared beside the suite) becomes that component; a task's
    relative data_dir is taken from the suite's data_dir when set, else from the suite file's folder."""
    if comp.name.endswith((".yaml", ".yml")):
        from zobench.config import load_yaml

        file = (path.parent / comp.name).resolve()
        if not file.is_file():
            raise UserError(f"{where(path, lines, (*loc, 'name'))}: task file '{comp.name}' not found next to the "
                            f"suite ({file}); give a path relative to the suite file")
        body, _ = load_yaml(file)
        if not isinstance(body, dict):
            raise UserError(f"{file}: a task file must be a mapping of the custom task's fields (files, template, "
                            f"options or verbalizer, metric)")
        body = {k: v for k, v in body.items() if k != "name"}
        task = body.pop("task", "custom")  # a task file may also preset a registered task's parameters
        body["data_dir"] = str((file.parent / body.get("data_dir", ".")).resolve())  # paths: from the task file
        return Component.model_validate({**body, **comp.params, "name": task,
                                         "label": comp.label or file.stem, "settings": comp.settings})
    given = comp.params.get("data_dir")
    if isinstance(given, str) and not Path(given).expanduser().is_absolute():
        base = Path(data_root) if data_root else path.parent
        return Component.model_validate({**comp.model_dump(), "data_dir": str((base / given).resolve())})
    return comp


Entry = tuple[Resolved, Component, Loc, dict[str, Any]]  # a resolved component, as written, where, its sweep point


def _entries(axis: str, comp: Component, path: Path, lines: dict[Loc, int], loc: Loc, data_dir: str | None,
             task_defaults: dict[str, Any], origins: dict[str, str]) -> list[Entry]:
    """A grid or include component resolved once per sweep point. A task file the suite does not override is
    checked as written there, so its errors name the task file and line."""
    at: tuple[Path, dict[Loc, int], Loc] = (path, lines, loc)
    if axis == "task":
        file = (path.parent / comp.name).resolve()
        if comp.name.endswith((".yaml", ".yml")) and not comp.params and file.is_file():
            from zobench.config import load_yaml

            at = (file, load_yaml(file)[1], ())
        comp = task_component(comp, path, lines, loc, data_dir)
    return [(resolve(axis, c, *at, task_defaults if axis == "task" else None, origins), c, loc, point)
            for c, point in sweep_points(axis, comp, path, lines, loc)]


def expand(suite: Suite, path: Path | str, lines: dict[Loc, int] | None = None,
           data_dir: str | None = None, executor: str | None = None) -> list[RunSpec]:
    """The suite's runs, in a stable order, validated against the registries. `executor` (default: the
    suite's) says whether runs execute on this machine, so whether a missing GPU is known here."""
    path, lines = Path(path), lines or {}
    origins: dict[str, str] = {}
    if data_dir:  # from the command line: relative to the current folder
        data_dir, origins["data_dir"] = str(Path(data_dir).resolve()), "--data-dir"
    elif suite.data_dir:  # from the suite: relative to the suite file
        data_dir = str((path.parent / suite.data_dir).resolve())
        origins["data_dir"] = where(path, lines, ("data_dir",)) + " (relative to the suite file)"
    task_defaults = {"data_dir": data_dir} if data_dir else {}

    resolved: dict[str, list[Entry]] = {}
    for axis, field in AXES.items():
        seen: dict[str, int] = {}
        rows: list[Entry] = []
        for i, comp in enumerate(getattr(suite.grid, field)):
            loc: Loc = ("grid", field, i)
            entries = _entries(axis, comp, path, lines, loc, data_dir, task_defaults, origins)
            label = entries[0][0].label
            if label in seen:
                raise UserError(f"{where(path, lines, loc)}: two {field} are labelled '{label}' "
                                f"(also entry {seen[label]}); give each a distinct 'label'")
            seen[label] = i
            rows.extend(entries)
        resolved[axis] = rows

    cells: list[tuple] = list(itertools.product(*resolved.values(), suite.grid.seeds))
    for j, extra in enumerate(suite.include):
        cells.extend(_include_cells(extra, resolved, suite, path, lines, ("include", j), data_dir, task_defaults,
                                    origins))
    _check_rules(suite, cells, path, lines)

    specs: dict[str, tuple[RunSpec, list[Loc]]] = {}
    configs: dict[tuple, tuple[dict[str, Any], RunSpec, list[Loc]]] = {}
    for (model, task, method, scheme, seed) in cells:
        if not registry.tasks.get(task[0].name).needs_model:
            model = (Resolved(name="none", label="none", params={}), Component(name="none"), (), {})
        elif model[0].name == "none":
            raise UserError(f"{where(path, lines, task[2])}: task '{task[0].name}' needs a model; "
                            f"add one under grid.models")
        cell = {"model": model[0], "task": task[0], "method": method[0], "scheme": scheme[0], "seed": seed}
        if any(_matches(rule, cell) for rule in suite.exclude):
            continue
        method_entry = registry.methods.get(method[0].name)
        reason = method_entry.incompatible(task[0].name, task[0].params)
        if reason:
            raise UserError(f"{where(path, lines, method[2])}: method '{method[0].label}' {reason}; it meets task "
                            f"'{task[0].label}' in the grid: add `exclude: [{{method: {method[0].label}, task: "
                            f"{task[0].label}}}]` or give it its own suite")
        parts = (model, task, method, scheme)
        comps = [c for _, c, _, _ in parts]
        locs = [lo for _, _, lo, _ in parts]
        point = {k: v for _, _, _, pt in parts for k, v in pt.items()}
        spec = RunSpec(suite=suite.name, settings=_settings(suite, comps, path, lines, locs, data_dir, executor),
                       sweep=point, **cell)
        reason = spec.settings.compile and method_entry.uncompilable(method[0].params)
        if reason:
            raise UserError(f"{where(path, lines, method[2])}: method '{method[0].label}' {reason}, and its runs "
                            "have compile: true; give it engine: inplace, or settings: {compile: false}")
        _refuse_merges(spec, locs, specs, configs, path, lines)
    if not specs:
        raise UserError(f"{where(path, lines, ('exclude',))}: the grid is empty after these rules; loosen them")
    return [spec for spec, _ in specs.values()]


def _refuse_merges(spec: RunSpec, locs: list[Loc], specs: dict[str, tuple[RunSpec, list[Loc]]],
                   configs: dict[tuple, tuple[dict[str, Any], RunSpec, list[Loc]]], path: Path,
                   lines: dict[Loc, int]) -> None:
    """Record `spec`, refusing what would silently drop a run or average two configurations as seeds.

    The same run twice (an include entry repeating a grid cell) is kept once.
    """
    axes = list(AXES)
    known = specs.get(spec.run_id)
    if known is not None and known[0] != spec:
        other, other_locs = known
        i = next((k for k, a in enumerate(axes) if getattr(other, a).label != getattr(spec, a).label), 2)
        axis = axes[i]
        raise UserError(f"{where(path, lines, locs[i])}: {axis} label '{getattr(spec, axis).label}' and "
                        f"'{getattr(other, axis).label}' ({where(path, lines, other_locs[i])}) give one run id "
                        f"'{spec.run_id}' (run ids keep letters, digits, '.', '=' and '-'), so one run would be "
                        f"dropped; give labels that differ in those characters")
    base = _unswept(spec)
    first = configs.get(spec.cell)
    if first is not None and first[0] != base:
        other, other_locs = first[1], first[2]
        diffs = _differences(_unswept(other), base)
        i = next((k for k, a in enumerate(axes) if any(d.startswith(a) for d in diffs)), 2)
        axis = axes[i]
        raise UserError(f"{where(path, lines, locs[i])}: {axis} label '{getattr(spec, axis).label}' is also used at "
                        f"{where(path, lines, other_locs[i])} with other unswept parameters "
                        f"({'; '.join(diffs)}); one table cell would average the two as if they were seeds. Give "
                        f"it its own label, or make the difference a sweep on both (`lr: {{sweep: [1.0e-6, "
                        f"1.0e-7]}}`) so the report selects between them on dev")
    configs.setdefault(spec.cell, (base, spec, locs))
    specs.setdefault(spec.run_id, (spec, locs))


def _unswept(spec: RunSpec) -> dict[str, Any]:
    """What every configuration of a cell must share: the spec without seed and swept values, and which keys
    are swept."""
    data = spec.hashed()
    data.pop("seed")
    for key in spec.sweep:
        axis, *rest = key.split(".")
        if rest[0] == "settings":
            data["settings"].pop(rest[1], None)
        else:
            data[axis]["params"].pop(rest[0], None)
    data["swept"] = sorted(spec.sweep)
    return data


def _differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """'method.params.q: 1 vs 2' for each leaf where b differs from a."""
    out = []
    for key in list(a) + [k for k in b if k not in a]:
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differences(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(f"{prefix}{key}: {y!r} vs {x!r}")
    return out


def _check_rules(suite: Suite, cells: list[tuple], path: Path, lines: dict[Loc, int]) -> None:
    """Every exclude rule names labels and seeds that are in the grid, and matches at least one run."""
    known: dict[str, set] = {axis: set() for axis in AXES}
    known["seed"] = set()
    for *parts, seed in cells:
        for axis, entry in zip(AXES, parts, strict=True):
            known[axis].add(entry[0].label)
        known["seed"].add(seed)
    for i, rule in enumerate(suite.exclude):
        for key, want in rule.model_dump(exclude_none=True).items():
            for j, value in enumerate(want if isinstance(want, list) else [want]):
                if value not in known[key]:
                    loc: Loc = ("exclude", i, key, j) if isinstance(want, list) else ("exclude", i, key)
                    have = sorted(map(str, known[key]))
                    raise UserError(f"{where(path, lines, loc)}: no {key} {'labelled ' if key != 'seed' else ''}"
                                    f"{value!r} in the grid, so this rule would match nothing; the grid has: "
                                    f"{', '.join(have)}")
        if not any(_matches(rule, _cell_of(parts)) for parts in cells):
            raise UserError(f"{where(path, lines, ('exclude', i))}: this rule matches no run of the grid (its "
                            f"conditions never meet); fix or remove it")


def _cell_of(parts: tuple) -> dict[str, Any]:
    model, task, method, scheme, seed = parts
    return {"model": model[0], "task": task[0], "method": method[0], "scheme": scheme[0], "seed": seed}


def _include_cells(extra: dict[str, Any], resolved: dict[str, list[Entry]], suite: Suite, path: Path,
                   lines: dict[Loc, int], loc: Loc, data_dir: str | None, task_defaults: dict[str, Any],
                   origins: dict[str, str]) -> list[tuple]:
    """An include entry names some axes (by label or as an inline component, which may sweep); the rest span
    the grid."""
    unknown = set(extra) - set(AXES) - {"seeds"}
    if unknown:
        raise UserError(f"{where(path, lines, loc)}: unknown include key(s) {sorted(unknown)}; "
                        f"allowed: {', '.join([*AXES, 'seeds'])}")
    axes = []
    for axis in AXES:
        if axis not in extra:
            axes.append(resolved[axis])
            continue
        value = extra[axis]
        known = [e for e in resolved[axis] if e[0].label == value] if isinstance(value, str) else []
        if known:
            axes.append(known)
        else:
            comp = Component.model_validate({"name": value} if isinstance(value, str) else value)
            axes.append(_entries(axis, comp, path, lines, (*loc, axis), data_dir, task_defaults, origins))
    seeds = extra.get("seeds", suite.grid.seeds)
    return list(itertools.product(*axes, seeds))
