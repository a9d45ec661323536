"""Expand a suite into run specs: the matrix, exclude/include rules, per-component settings, run ids."""

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

    def hashed(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", exclude={"suite"})
        if data["settings"].get("lm_eval") is None:  # unset: runs keep the ids they had before the field existed
            data["settings"].pop("lm_eval", None)
        else:
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
    def run_id(self) -> str:
        parts = [self.task.label, self.model.label, self.method.label, self.scheme.label, f"s{self.seed}"]
        slug = re.sub(r"[^A-Za-z0-9.=-]+", "-", "_".join(parts).replace("/", "-"))[:100]
        return f"{slug}_{self.spec_hash}"


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
    schema: type[BaseModel] | None = getattr(entry, "Params", None)
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
    check = getattr(entry, "check", None)
    if check is not None:
        try:
            check(params)
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

    resolved: dict[str, list[tuple[Resolved, Component, Loc]]] = {}
    for axis, field in AXES.items():
        seen: dict[str, int] = {}
        rows = []
        for i, comp in enumerate(getattr(suite.grid, field)):
            loc: Loc = ("grid", field, i)
            if axis == "task":
                comp = task_component(comp, path, lines, loc, data_dir)
            r = resolve(axis, comp, path, lines, loc, task_defaults if axis == "task" else None, origins)
            if r.label in seen:
                raise UserError(f"{where(path, lines, loc)}: two {field} are labelled '{r.label}' "
                                f"(also entry {seen[r.label]}); give each a distinct 'label'")
            seen[r.label] = i
            rows.append((r, comp, loc))
        resolved[axis] = rows

    cells: list[tuple] = list(itertools.product(*resolved.values(), suite.grid.seeds))
    for j, extra in enumerate(suite.include):
        cells.extend(_include_cells(extra, resolved, suite, path, lines, ("include", j)))

    specs: dict[str, RunSpec] = {}
    for (model, task, method, scheme, seed) in cells:
        task_entry = registry.tasks.get(task[0].name)
        needs_model = getattr(task_entry, "needs_model", True)
        if not needs_model:
            model = (Resolved(name="none", label="none", params={}), Component(name="none"), ())
        elif model[0].name == "none":
            raise UserError(f"{where(path, lines, task[2])}: task '{task[0].name}' needs a model; "
                            f"add one under grid.models")
        cell = {"model": model[0], "task": task[0], "method": method[0], "scheme": scheme[0], "seed": seed}
        if any(_matches(rule, cell) for rule in suite.exclude):
            continue
        incompatible = getattr(registry.methods.get(method[0].name), "incompatible", None)
        reason = incompatible(task[0].name, task[0].params) if incompatible else None
        if reason:
            raise UserError(f"{where(path, lines, method[2])}: method '{method[0].label}' {reason}; it meets task "
                            f"'{task[0].label}' in the grid: add `exclude: [{{method: {method[0].label}, task: "
                            f"{task[0].label}}}]` or give it its own suite")
        comps = [c for _, c, _ in (model, task, method, scheme)]
        locs = [lo for _, _, lo in (model, task, method, scheme)]
        spec = RunSpec(suite=suite.name, settings=_settings(suite, comps, path, lines, locs, data_dir,
                                                               executor), **cell)
        uncompilable = getattr(registry.methods.get(method[0].name), "uncompilable", None)
        reason = spec.settings.compile and uncompilable and uncompilable(method[0].params)
        if reason:
            raise UserError(f"{where(path, lines, method[2])}: method '{method[0].label}' {reason}, and its runs "
                            "have compile: true; give it engine: inplace, or settings: {compile: false}")
        specs.setdefault(spec.run_id, spec)
    if not specs:
        raise UserError(f"{where(path, lines, ('exclude',))}: the grid is empty after these rules; loosen them")
    return list(specs.values())


def _include_cells(extra: dict[str, Any], resolved: dict, suite: Suite, path: Path,
                   lines: dict[Loc, int], loc: Loc) -> list[tuple]:
    """An include entry names some axes (by label or as an inline component); the rest span the grid."""
    axes = []
    for axis in AXES:
        if axis not in extra:
            axes.append(resolved[axis])
            continue
        value = extra[axis]
        known = {r.label: (r, c, lo) for r, c, lo in resolved[axis]}
        if isinstance(value, str) and value in known:
            axes.append([known[value]])
        else:
            comp = Component.model_validate({"name": value} if isinstance(value, str) else value)
            axes.append([(resolve(axis, comp, path, lines, (*loc, axis)), comp, (*loc, axis))])
    unknown = set(extra) - set(AXES) - {"seeds"}
    if unknown:
        raise UserError(f"{where(path, lines, loc)}: unknown include key(s) {sorted(unknown)}; "
                        f"allowed: {', '.join([*AXES, 'seeds'])}")
    seeds = extra.get("seeds", suite.grid.seeds)
    return list(itertools.product(*axes, seeds))
