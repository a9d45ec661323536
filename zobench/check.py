"""Regression check: a suite's runs against a stored reference, metric by metric, under declared tolerances.

`zobench check SUITE --against REF` runs the suite (in a fresh temporary folder, unless `--results`
names one to reuse) and compares each run's summary with REF. Runs are keyed by their cell (task,
model, method, scheme, seed), so a changed spec shows as a drifted `spec_hash` beside the metrics it
moved, and a new method shows as a run missing from the reference. `--update --reason TEXT` rewrites REF on
purpose and records why.

The reference records the platform its numbers came from (CPU model and instruction set, BLAS, torch,
transformers, numpy, scikit-learn, threads). On that same platform the runs repeat bit for bit, so every
value must match exactly. On another platform the last digits move (another reduction order in a matmul,
another iteration count in an iterative solver), so values are compared under the suite's `check.tolerances`,
which are set from the spread measured across platforms (see the suite's comment). Wall-clock metrics are
left out unless asked for (`--timing` or `check.timing`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fnmatch
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from tabulate import tabulate

from zobench.config import CheckSpec, Suite, Tolerance
from zobench.errors import UserError
from zobench.grid import RunSpec
from zobench.store import GROUPS, RunRecord, Store, atomic_write

STRUCTURE = ("status", "metric", "spec_hash", "steps", "forward_passes", "backward_passes", "state_bytes",
             "trainable_params")  # what a platform-bound run must still match on another platform
TIMING_SUFFIX = "_s"  # wall_s, train_s, median_step_s, ...: seconds, compared only when asked (a suite's own too)
TIMING_DEFAULT = Tolerance(rel=0.5)  # wall-clock on a shared machine: only gross slow-downs are drift
FORMAT = 2  # 2: `platform` and `reason` beside the runs; format 1 (no platform) is read as another platform
PLATFORM_PACKAGES = ("torch", "transformers", "numpy", "scikit-learn", "scipy", "peft")  # the ones that move numbers


def is_timing(name: str) -> bool:
    return "." not in name and name.endswith(TIMING_SUFFIX)


def cell_key(run_id: str) -> str:
    """The run id without its spec hash: the same cell keeps its key when its spec changes."""
    return run_id.rsplit("_", 1)[0]


def compared_fields() -> dict[str, str]:
    """{field: how} for every field of the run record marked `compared(...)` in store.py, in any group: what
    `check` compares is declared beside the field, not listed here."""
    out: dict[str, str] = {}
    for model in (RunRecord, *GROUPS.values()):
        for name, info in model.model_fields.items():
            how = (info.json_schema_extra or {}).get("compare") if isinstance(info.json_schema_extra, dict) else None
            if how is not None:
                out[name] = str(how)
    return out


def metrics_of(record: RunRecord, spec: CheckSpec) -> dict[str, Any]:
    """The comparable values of one run record, flattened ('test.accuracy'); timing included, ignores dropped.
    Only fields the run set are compared: a run that failed before it was scored has no test metric."""
    flat = record.flat()
    out: dict[str, Any] = {}
    for name, how in compared_fields().items():
        if name not in flat:
            continue
        if how == "nested":
            for k, v in (flat[name] or {}).items():
                if isinstance(v, int | float | str | bool) or v is None:
                    out[f"{name}.{k}"] = v
        elif how != "timing" or isinstance(flat[name], int | float):
            out[name] = flat[name]
    for name in spec.tolerances:  # a suite may opt in to any other top-level number
        if name in flat and isinstance(flat[name], int | float):
            out[name] = flat[name]
    return {k: v for k, v in out.items() if not any(fnmatch.fnmatchcase(k, g) for g in spec.ignore)}


def tolerance_for(name: str, spec: CheckSpec, run: str | None = None) -> Tolerance | None:
    """A run-scoped entry ('RUN_GLOB/METRIC_GLOB', e.g. '*-linear-probe-*/test.loss') matching this run first,
    then the exact name, then the first matching glob, in the order the suite declares them."""
    for pattern, tol in spec.tolerances.items():
        run_glob, slash, metric_glob = pattern.partition("/")
        if slash and run is not None and fnmatch.fnmatchcase(run, run_glob) and fnmatch.fnmatchcase(name, metric_glob):
            return tol
    if name in spec.tolerances:
        return spec.tolerances[name]
    for pattern, tol in spec.tolerances.items():
        if "/" not in pattern and fnmatch.fnmatchcase(name, pattern):
            return tol
    return TIMING_DEFAULT if is_timing(name) else None


def holds(ref: Any, got: Any, tol: Tolerance | None) -> bool:
    numbers = (int, float)
    if isinstance(ref, bool) or isinstance(got, bool) or not (isinstance(ref, numbers) and isinstance(got, numbers)):
        return ref == got
    if math.isnan(ref) or math.isnan(got):
        return math.isnan(ref) and math.isnan(got)
    if tol is None or math.isinf(ref) or math.isinf(got):
        return ref == got
    return abs(got - ref) <= tol.abs + tol.rel * abs(ref)


@dataclass
class Drift:
    run: str
    metric: str
    reference: Any
    got: Any
    tolerance: str

    @property
    def difference(self) -> str:
        if isinstance(self.reference, int | float) and isinstance(self.got, int | float) \
                and not isinstance(self.reference, bool) and not isinstance(self.got, bool):
            diff = self.got - self.reference
            rel = f" ({diff / abs(self.reference):+.2e} rel)" if self.reference else ""
            return f"{diff:+.3e}{rel}"
        return ""


def _tol_text(tol: Tolerance | None) -> str:
    if tol is None or (tol.abs == 0 and tol.rel == 0):
        return "exact"
    return " + ".join(part for part in (f"abs {tol.abs:g}" if tol.abs else "",
                                        f"rel {tol.rel:g}" if tol.rel else "") if part)


def compare(reference: dict[str, dict[str, Any]], runs: dict[str, RunRecord | None], spec: CheckSpec,
            timing: bool, exact: bool = False) -> tuple[list[Drift], int]:
    """Drifts between reference and fresh runs (both keyed by cell), and how many values held or not.
    `exact`: the same platform as the reference's, so every value but wall-clock must match exactly."""
    drifts: list[Drift] = []
    compared = 0
    for key in sorted(set(reference) | set(runs)):
        if key not in reference:
            drifts.append(Drift(key, "(run)", "absent", "present", "run not in the reference: --update adds it"))
            continue
        record = runs.get(key)
        if record is None:
            drifts.append(Drift(key, "(run)", "present", "absent", "no summary: the run did not finish"))
            continue
        ref, got = reference[key], metrics_of(record, spec)
        names = set(ref) | set(got)
        names = {n for n in names if not any(fnmatch.fnmatchcase(n, g) for g in spec.ignore)}
        if not exact and any(fnmatch.fnmatchcase(key, g) for g in spec.platform_bound):
            names &= set(STRUCTURE)
        if not timing:
            names = {n for n in names if not is_timing(n)}
        for name in sorted(names):
            compared += 1
            tol = None if exact and not is_timing(name) else tolerance_for(name, spec, key)
            if name not in ref or name not in got:
                drifts.append(Drift(key, name, ref.get(name, "(absent)"), got.get(name, "(absent)"), _tol_text(tol)))
            elif not holds(ref[name], got[name], tol):
                drifts.append(Drift(key, name, ref[name], got[name], _tol_text(tol)))
    return drifts, compared


# --------------------------------------------------------------------------- platform
def current_platform(threads: int) -> dict[str, Any]:
    """What decides the last digits of a CPU run: the CPU and the instruction set torch's kernels use, the
    BLAS builds (torch's and numpy's), the packages that compute, and the thread count the check pins."""
    import torch

    from zobench.measure import _cpu_model, _version

    config = torch.__config__.show()
    blas = next((line.split("-", 1)[1].strip() for line in config.splitlines()
                 if "Math Kernel Library" in line or "OpenBLAS" in line), "unknown")
    return {
        "cpu": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_blas": blas,
        "numpy_blas": _numpy_blas(),
        **{name: _version(name) for name in PLATFORM_PACKAGES},
        "threads": threads,
    }


def _numpy_blas() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown"
    found = [f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')})" for i in threadpool_info()
             if i.get("user_api") == "blas"]
    return ", ".join(sorted(set(found))) or "unknown"


def platform_differences(recorded: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """'key: recorded → current' for each platform fact that differs (all of them when none was recorded)."""
    if not recorded:
        return ["no platform recorded in the reference (format 1)"]
    return [f"{k}: {recorded.get(k)} → {current.get(k)}" for k in sorted(set(recorded) | set(current))
            if recorded.get(k) != current.get(k)]


# --------------------------------------------------------------------------- reference file
def read_reference(path: Path, suite: str) -> dict[str, Any]:
    """The reference file, checked: a JSON object for this suite whose runs map cell → {metric: scalar}."""
    fix = f"fix it, or rewrite it with `zobench check SUITE --against {path} --update --reason TEXT`"
    if path.is_dir():
        raise UserError(f"{path}: is a folder; --against takes the reference JSON file, e.g. "
                        f"baselines/reference/<suite>.json")
    if not path.exists():
        raise UserError(f"{path}: no reference file; write one on purpose with "
                        f"`zobench check SUITE --against {path} --update --reason TEXT`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); {fix}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); {fix}") from None
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror}); check its permissions") from None
    if not isinstance(data, dict) or not isinstance(data.get("runs"), dict):
        raise UserError(f"{path}: not a zobench reference (no 'runs' mapping); {fix}")
    if data.get("suite") != suite:
        raise UserError(f"{path}: this reference is for suite '{data.get('suite')}', not '{suite}'; "
                        f"give the right --against file")
    for key, entry in data["runs"].items():
        if not isinstance(entry, dict):
            raise UserError(f"{path}: runs.{key}: a run's entry must be a mapping of metric → value, got "
                            f"{type(entry).__name__}; {fix}")
        for name, value in entry.items():
            if not (value is None or isinstance(value, int | float | str | bool)):
                raise UserError(f"{path}: runs.{key}.{name}: a value must be a number, string, true/false or null, "
                                f"got {type(value).__name__}; {fix}")
    if data.get("platform") is not None and not isinstance(data["platform"], dict):
        raise UserError(f"{path}: platform: must be a mapping (as `--update` writes it); {fix}")
    return data


def write_reference(path: Path, suite: Suite, runs: dict[str, RunRecord | None], platform: dict[str, Any],
                    reason: str) -> None:
    done = [r for r in runs.values() if r is not None]
    env = done[0].env.model_dump() if done else {}
    data = {
        "format": FORMAT, "suite": suite.name,
        "note": "written by `zobench check --update --reason TEXT`; compared by `zobench check`: exactly on this "
                "platform, under the suite's check.tolerances on any other",
        "written": dt.datetime.now().isoformat(timespec="seconds"),
        "reason": reason,
        "platform": platform,
        "env": {k: env.get(k) for k in ("device", "python", "git_revision")},
        "runs": {key: metrics_of(s, suite.check) for key, s in sorted(runs.items()) if s},
    }
    atomic_write(path, (json.dumps(data, indent=1, sort_keys=False, default=str) + "\n").encode())


# --------------------------------------------------------------------------- the verb
def _run(suite: Suite, specs: list[RunSpec], store: Store, threads: int, console: Console) -> None:
    import torch

    from zobench.executors import suite_record
    from zobench.executors.local import LocalExecutor, pending

    store.write_suite(suite_record(suite))  # `zobench report RESULTS/<suite>` later: the suite's own page
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # CPU sums depend on the thread split: pin it so numbers repeat
    try:
        with _blas_threads(threads):
            LocalExecutor({}, console=console).run(pending(specs, store), store)
    finally:
        torch.set_num_threads(before)


def _blas_threads(threads: int) -> Any:
    """numpy/scikit-learn BLAS pinned too (threadpoolctl comes with scikit-learn); a no-op without it."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=threads)


def run_check(suite: Suite, specs: list[RunSpec], against: Path, results: Path | None = None,
              update: bool = False, timing: bool | None = None, run: bool = True, threads: int = 1,
              out: Console | None = None, err: Console | None = None, reason: str | None = None) -> int:
    """Run (or read) the suite and compare with `against`; 0 when every value holds, 1 on drift."""
    out, err = out or Console(), err or Console(stderr=True)

    def say(text: str) -> None:
        out.print(text, highlight=False, soft_wrap=True, markup=False)
    timing = suite.check.timing if timing is None else timing
    if update and not (reason or "").strip():
        raise UserError(f"{against}: --update needs --reason TEXT (why the numbers changed: it is recorded in "
                        f"the reference)")
    if update and against.is_dir():
        raise UserError(f"{against}: is a folder; --against takes the reference JSON file to write")
    if results is not None and results.exists() and not results.is_dir():
        raise UserError(f"{results}: is a file; --results takes a folder (runs land in RESULTS/{suite.name}/)")
    data = None if update else read_reference(against, suite.name)  # fail before hours of running
    platform = current_platform(threads)
    with tempfile.TemporaryDirectory(prefix="zobench-check-") as tmp:
        store = Store(results or tmp, suite.name)
        if run:
            _run(suite, specs, store, threads, err)
        runs = {cell_key(s.run_id): store.record(s.run_id) for s in specs}
    if update:
        write_reference(against, suite, runs, platform, (reason or "").strip())
        bad = sorted(k for k, r in runs.items() if r is None or r.status != "done")
        say(f"reference written: {against} ({len(runs)} runs)")
        if bad:
            say(f"note: {len(bad)} runs are not 'done' and are recorded as they are: {', '.join(bad)}")
        return 0
    assert data is not None
    differences = platform_differences(data.get("platform"), platform)
    if differences:
        say(f"platform differs from the reference's ({'; '.join(differences)}): values compared under "
            f"check.tolerances")
    else:
        say("platform: the reference's own: values compared exactly")
    drifts, compared = compare(data["runs"], runs, suite.check, timing, exact=not differences)
    say(f"check {suite.name} against {against}: {len(runs)} runs, {compared} values compared, "
        f"{len(drifts)} drifted{'' if timing else ' (timing not compared)'}")
    if not drifts:
        say("all hold")
        return 0
    rows = [(d.run, d.metric, _short(d.reference), _short(d.got), d.difference, d.tolerance) for d in drifts]
    say(tabulate(rows, headers=("run", "metric", "reference", "got", "difference", "tolerance"), tablefmt="github"))
    return 1


def _short(value: Any) -> str:
    return f"{value:.10g}" if isinstance(value, float) else str(value)
