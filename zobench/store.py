"""The results folder: results/<suite>/<run_id>/{spec.yaml, curve.parquet, summary.json}.

Every file is written to a temporary name and renamed, and summary.json is written last, so a run
killed at any point leaves no summary and is simply run again. A run is claimed under a per-run file
lock (`<run>/.lock`, fcntl: the kernel drops it when its process dies, even by SIGKILL), so two
`zobench run` processes on one results folder never run the same run twice.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import io
import json
import os
import platform
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import yaml
from filelock import FileLock, Timeout
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer, model_validator

# written after (or beside) the checksums, never checksummed; run.log is a log, appended while the run ends
UNCHECKED = ("summary.json", "attempts.jsonl", "run.log")
REQUIRED = ("spec.yaml", "curve.parquet")  # every finished run has them; a record without them is damaged


RECORD_FORMAT = 2  # 2: `format` written; a summary without it is format 1 (the same keys, read as they are)

Compare = Literal["exact", "value", "timing"]


def compared(how: Compare, **kwargs: Any) -> Any:
    """A record field `zobench check` compares: exactly, as a value (under the suite's tolerances off the
    reference's platform) or as wall-clock (only when asked). check.py reads this, not a list of names."""
    return Field(default=None, json_schema_extra={"compare": how}, **kwargs)


class Part(BaseModel):
    """A group of a run record's fields. Keys a newer zobench adds are kept as they are (extra)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)


class AxisRecord(Part):
    """One grid axis of a run (model, task, method or scheme) as its summary records it."""

    name: str
    label: str
    params: dict[str, Any] = Field(default_factory=dict)


class SpecRecord(Part):
    """The resolved spec (grid.RunSpec as JSON): the four axes, the settings and the swept values."""

    model: AxisRecord
    task: AxisRecord
    method: AxisRecord
    scheme: AxisRecord
    settings: dict[str, Any] = Field(default_factory=dict)
    sweep: dict[str, Any] = Field(default_factory=dict)


class Outcome(Part):
    """How the run ended and which attempt wrote it."""

    status: Literal["done", "diverged", "oom", "failed"] = Field(json_schema_extra={"compare": "exact"})
    error: str | None = None
    diverged_at_step: int | None = compared("exact")
    device_fallback: str | None = Field(None, description="why a `device: auto` run is on the CPU")
    attempt: int | None = None
    pid: int | None = None
    recorded_by: str | None = Field(None, description="'executor' when the worker died and the executor wrote it")
    recorded_at: float | None = None


class Metrics(Part):
    """What the run scored: the task's metric on test at the best dev evaluation, and the curve's ends."""

    metric: str | None = compared("exact")
    higher_is_better: bool | None = None
    test: dict[str, Any] = Field(default_factory=dict, json_schema_extra={"compare": "nested"})
    test_metric: float | None = compared("value")
    best_dev: dict[str, Any] | None = Field(None, json_schema_extra={"compare": "nested"})
    best_step: int | None = compared("exact")
    initial_dev_metric: float | None = compared("value")
    final_train_loss: float | None = compared("value")
    lm_eval: dict[str, Any] | None = None


class Cost(Part):
    """What the run spent in counts: steps, passes, optimizer state, trainable parameters, precision."""

    steps: int | None = compared("exact")
    forward_passes: int | None = compared("exact")
    backward_passes: int | None = compared("exact")
    state_bytes: int | None = compared("exact")
    trainable_params: int | None = compared("exact")
    comm_bytes_per_step: int | None = None  # parallel: {data: N}: bytes this worker passed to collectives per step
    precision: dict[str, Any] | None = None


class PhaseTiming(Part):
    """One timed phase (measure.Clock): total seconds, median per step it ran in, how many steps."""

    total_s: float
    median_s: float | None = None
    laps: int = 0


class Timing(Part):
    """Wall-clock seconds (measure.Clock, device-synchronised); `check` compares them only when asked."""

    wall_s: float | None = compared("timing")
    train_s: float | None = compared("timing")
    eval_s: float | None = compared("timing")
    median_step_s: float | None = compared("timing")
    inference_forward_s: float | None = compared("timing", description="median forward-only probe on a train batch")
    phases: dict[str, PhaseTiming] = Field(default_factory=dict)


class MemoryPeak(Part):
    """One memory source's peak over the run (measure.PeakMemory.record)."""

    bytes: int | None = None
    source: str = Field("", description="how it was measured, in words")
    baseline_bytes: int | None = Field(None, description="held before the run")
    loaded_bytes: int | None = Field(None, description="held once model, data and method were built")


class Memory(Part):
    """Peak memory by named source; a source not measured on this machine is absent (None)."""

    nvml: MemoryPeak | None = Field(None, description="NVML: this process's own device memory")
    nvml_device: MemoryPeak | None = Field(None, description="NVML: device used minus its use before the run")
    torch_allocator: MemoryPeak | None = Field(None, description="torch.cuda.max_memory_allocated")
    rss: MemoryPeak | None = Field(None, description="process peak resident set size")

    def sources(self) -> dict[str, MemoryPeak]:
        """The measured sources by name, in the report's order of preference."""
        named = {name: getattr(self, name) for name in MEMORY_SOURCES}
        extra = {k: MemoryPeak.model_validate(v) for k, v in (self.model_extra or {}).items()}  # a newer source
        return {name: peak for name, peak in (named | extra).items() if peak is not None}


MEMORY_SOURCES = tuple(Memory.model_fields)


class WindowPeaks(Part):
    """Peak bytes per named source within one window (setup, inference probe, train, evaluation)."""

    nvml: int | None = None
    nvml_device: int | None = None
    torch_allocator: int | None = None
    rss: int | None = None


class Environment(Part):
    """Where the numbers came from (measure.environment)."""

    device: str | None = None
    device_name: str | None = None
    host: str | None = None
    platform: str | None = None
    python: str | None = None
    cpu: str | None = None
    cpu_count: int | None = None
    memory_total_bytes: int | None = None
    torch_threads: int | None = None
    packages: dict[str, str | None] = Field(default_factory=dict)
    git_revision: str | None = None
    cuda_visible_devices: str | None = None
    cuda: str | None = None
    driver: str | None = None
    device_memory_bytes: int | None = None


# on disk these groups are flat (the keys summary.json has always had); in Python each is its own model
GROUPS: dict[str, type[Part]] = {"outcome": Outcome, "metrics": Metrics, "cost": Cost, "timing": Timing}


class RunRecord(Part):
    """A run's summary.json: the runner fills it, `Store.write_record` validates and writes it, the report
    and `zobench check` read it. A new field is one line in its group here plus the line that fills it.

    On disk the groups (outcome, metrics, cost, timing) are flat, as summaries have always been, so results
    written before the record was typed still load; `format` says which version wrote it (absent: 1). A
    summary that fails this schema (hand-written, truncated, another program's JSON) is damaged: the run
    is redone and the report skips it, naming it. Fields are written only when set (`exclude_unset`), so a
    run that failed before it was scored has no `test_metric`, not a null one.
    """

    format: int = Field(1, description="the record format that wrote it (RECORD_FORMAT); absent on disk: 1")
    run_id: str
    spec_hash: str = compared("exact")
    suite: str
    seed: int
    spec: SpecRecord
    env: Environment = Field(default_factory=Environment)
    outcome: Outcome
    metrics: Metrics = Field(default_factory=Metrics)
    cost: Cost = Field(default_factory=Cost)
    timing: Timing = Field(default_factory=Timing)
    memory: Memory = Field(default_factory=Memory)
    memory_by_phase: dict[str, WindowPeaks] = Field(default_factory=dict)
    info: dict[str, Any] = Field(default_factory=dict, description="what the task says about its data")
    examples_file: str | None = None
    files: dict[str, str] = Field(default_factory=dict, description="file name → sha256 when the run ended")

    @model_validator(mode="before")
    @classmethod
    def _group(cls, data: Any) -> Any:
        """summary.json's flat keys into their groups (a dict already grouped passes as it is)."""
        if not isinstance(data, dict) or any(group in data for group in GROUPS):
            return data
        data = dict(data)
        for group, model in GROUPS.items():
            data[group] = {k: data.pop(k) for k in list(data) if k in model.model_fields}
        return data

    @model_serializer(mode="wrap")
    def _flatten(self, handler: Any) -> dict[str, Any]:
        out = handler(self)
        for group in GROUPS:
            out.update(out.pop(group, None) or {})
        return out

    @property
    def status(self) -> str:
        return self.outcome.status

    def flat(self) -> dict[str, Any]:
        """The record as summary.json holds it: only the fields that were set, groups flattened."""
        return self.model_dump(exclude_unset=True)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_record(path: Path) -> tuple[RunRecord | None, str | None]:
    """A summary.json as a RunRecord, or None and why it cannot be trusted (missing, not JSON, off-schema,
    written by a newer zobench whose record this one does not know)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, "no summary.json"
    except UnicodeDecodeError:
        return None, "summary.json is not UTF-8"
    except json.JSONDecodeError as e:
        return None, f"summary.json is not valid JSON ({e.msg} at line {e.lineno})"
    except OSError as e:
        return None, f"summary.json cannot be read ({e.strerror})"
    if not isinstance(data, dict):
        return None, f"summary.json holds a JSON {type(data).__name__}, not a run record"
    written = data.get("format", 1)
    if isinstance(written, int) and not isinstance(written, bool) and written > RECORD_FORMAT:
        return None, (f"summary.json is from a newer zobench (record format {written}; this one reads up to "
                      f"{RECORD_FORMAT}): update zobench to read it")
    try:
        record = RunRecord.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = [str(part) for part in first["loc"] if part not in GROUPS]  # the key as it is in the file
        field = ".".join(loc) or "(top level)"
        return None, f"summary.json is not a run record ({field}: {first['msg'].lower()})"
    return record, None


def damage(folder: Path, record: RunRecord) -> str | None:
    """Why the files beside a summary do not match it (missing, or changed since it was written); None if they do.

    Summaries written before checksums were recorded have no `files`: then the required files must exist."""
    files = record.files
    for name in REQUIRED if not files else ():
        if not (folder / name).is_file():
            return f"{name} is missing"
    for name, digest in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        try:
            if sha256(path) != digest:
                return f"{name} does not match its checksum in summary.json"
        except OSError as e:
            return f"{name} cannot be read ({e.strerror})"
    return None


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; results and reports are meant to be shared
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Store:
    def __init__(self, root: Path | str, suite: str) -> None:
        self.root = Path(root)
        self.dir = self.root / suite
        self._said: set[str] = set()  # damaged runs already named on stderr

    def run_dir(self, run_id: str) -> Path:
        return self.dir / run_id

    def record(self, run_id: str) -> RunRecord | None:
        """The run's record, or None when there is none or it cannot be trusted (see `is_done`)."""
        record, _ = read_record(self.run_dir(run_id) / "summary.json")
        return record

    def summary(self, run_id: str) -> dict[str, Any] | None:
        """The run's record as summary.json holds it (a plain dict: what crosses processes), or None."""
        record = self.record(run_id)
        return None if record is None else record.flat()

    def is_done(self, run_id: str, spec_hash: str) -> bool:
        """A 'done' record for this exact spec whose files are the ones it was written with.

        A damaged run (summary off-schema or unreadable, a file missing or changed) is not done: it is
        redone, and one line on stderr says so (once per run and Store)."""
        folder = self.run_dir(run_id)
        record, problem = read_record(folder / "summary.json")
        if record is not None:
            if record.status != "done" or record.spec_hash != spec_hash:
                return False
            problem = damage(folder, record)
            if problem is None:
                return True
        if (folder / "summary.json").exists() and run_id not in self._said:
            self._said.add(run_id)
            print(f"{folder}: {problem}; running it again", file=sys.stderr)
        return False

    # -- claiming: one process per run --------------------------------------------------------
    def lock(self, run_id: str) -> FileLock:
        self.run_dir(run_id).mkdir(parents=True, exist_ok=True)
        return FileLock(self.run_dir(run_id) / ".lock")

    @contextmanager
    def claim(self, run_id: str, wait: bool = False) -> Iterator[bool]:
        """Hold the run's lock for the block; yields False (at once) when another process holds it,
        unless `wait`, which blocks until that process lets go (finished or died)."""
        lock = self.lock(run_id)
        try:
            lock.acquire(timeout=-1 if wait else 0)
        except Timeout:
            yield False
            return
        try:
            yield True
        finally:
            lock.release()

    def begin(self, run_id: str) -> int:
        """Under the claim: clear what an earlier (killed or failed) attempt left and record this one.
        Returns the attempt number (1 for the first)."""
        folder = self.run_dir(run_id)
        (folder / "summary.json").unlink(missing_ok=True)  # a rerun killed midway must not look done
        (folder / "traceback.txt").unlink(missing_ok=True)
        for stale in folder.glob(".*.tmp"):  # temporaries of a process killed mid-write
            stale.unlink(missing_ok=True)
        attempts = self.attempts(run_id)
        record = {"attempt": len(attempts) + 1, "pid": os.getpid(), "host": platform.node(),
                  "started": dt.datetime.now().isoformat(timespec="seconds")}
        with (folder / "attempts.jsonl").open("a") as f:  # append-only log; we hold the lock
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return record["attempt"]

    def attempts(self, run_id: str) -> list[dict[str, Any]]:
        """Every attempt started on this run, oldest first (a line cut by a kill is skipped)."""
        path = self.run_dir(run_id) / "attempts.jsonl"
        out = []
        for line in path.read_text().splitlines() if path.exists() else []:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def discard(self, run_id: str) -> bool:
        """Forget a run's result (for --rerun) unless another process is running it right now."""
        if not (self.run_dir(run_id) / "summary.json").exists():
            return True
        with self.claim(run_id) as mine:
            if mine:
                (self.run_dir(run_id) / "summary.json").unlink(missing_ok=True)
            return mine

    def write_spec(self, run_id: str, spec: dict[str, Any]) -> None:
        atomic_write(self.run_dir(run_id) / "spec.yaml", yaml.safe_dump(spec, sort_keys=False).encode())

    def write_curve(self, run_id: str, rows: list[dict[str, Any]]) -> None:
        buf = io.BytesIO()
        pd.DataFrame(rows).to_parquet(buf, index=False)
        atomic_write(self.run_dir(run_id) / "curve.parquet", buf.getvalue())

    def write_text(self, run_id: str, name: str, text: str) -> None:
        atomic_write(self.run_dir(run_id) / name, text.encode())

    def write_record(self, run_id: str, record: RunRecord) -> bool:
        """Write summary.json last, stamped with this version's `format` and the checksum of every file beside
        it (`files`), so a file damaged or replaced later is found by `is_done`. The record is validated again
        first (a field filled with the wrong type fails here, in the run that filled it, not in the report). A
        disk that is full or read-only is said in one line, not raised: the run stays not done (run again next
        time) and the grid goes on. True when written."""
        folder = self.run_dir(run_id)
        try:
            record.format = RECORD_FORMAT
            record.files = {p.name: sha256(p) for p in sorted(folder.iterdir())
                            if p.is_file() and not p.name.startswith(".") and p.name not in UNCHECKED}
            data = RunRecord.model_validate(record.flat()).flat()
            atomic_write(folder / "summary.json", json.dumps(data, indent=2, default=str).encode())
        except OSError as e:
            why = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
            print(f"{folder}/summary.json: not written ({why}); free space or fix permissions, then run the "
                  f"suite again to redo this run", file=sys.stderr)
            return False
        return True

    # -- the suite's own settings, for the report: written by `zobench run` before its runs -------------
    def write_suite(self, suite: SuiteRecord) -> None:
        """`suite.json` beside the runs: what the report needs from the suite YAML (description, the paper
        tables it regenerates), so `zobench report` on this folder later builds the same page. Rewritten only
        when it changed."""
        path = self.dir / SUITE_FILE
        if read_suite(self.dir) != suite or not path.exists():
            atomic_write(path, (suite.model_dump_json(indent=2) + "\n").encode())


SUITE_FILE = "suite.json"


class SuiteRecord(BaseModel):
    """What a results folder says about its suite (the report's page header and the layouts it regenerates)."""

    model_config = ConfigDict(extra="allow")
    name: str = ""
    description: str = ""
    regenerates: str | None = None


def read_suite(folder: Path | str) -> SuiteRecord | None:
    """The suite.json beside a suite's runs, or None when there is none; one that cannot be read is named on
    stderr and treated as absent (the report is still built, without the description)."""
    path = Path(folder) / SUITE_FILE
    try:
        return SuiteRecord.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValidationError) as e:
        _skip(path, f"not a suite record ({type(e).__name__})")
        return None


_named: set[tuple[str, str]] = set()


def _skip(path: Path, why: str) -> None:
    """One line on stderr per unreadable file (once per process: the report reads summaries more than once)."""
    if (str(path), why) not in _named:
        _named.add((str(path), why))
        print(f"skipped {path}: {why}", file=sys.stderr)


def load_records(results: Path | str) -> list[tuple[Path, RunRecord]]:
    """Every readable run record under a suite folder (or a folder of suites), with its run's folder; each
    summary that is not readable is named on stderr and skipped."""
    out = []
    for path in sorted(Path(results).rglob("summary.json")):
        record, problem = read_record(path)
        if record is None:
            _skip(path, problem or "unreadable")
            continue
        out.append((path.parent, record))
    return out


def load_curves(results: Path | str) -> pd.DataFrame:
    """Every run's curve with its run's labels; a curve that is missing is left out, one that cannot be read
    or does not match its checksum is named on stderr and left out."""
    frames = []
    for folder, record in load_records(results):
        path = folder / "curve.parquet"
        if not path.exists():
            continue
        digest = record.files.get("curve.parquet")
        try:
            if digest is not None and sha256(path) != digest:
                _skip(path, "does not match its checksum in summary.json")
                continue
            df = pd.read_parquet(path)
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            _skip(path, f"not a readable parquet file ({type(e).__name__})")
            continue
        df["suite"], df["run_id"], df["seed"], df["status"] = record.suite, record.run_id, record.seed, record.status
        for axis in ("model", "task", "method", "scheme"):
            df[axis] = getattr(record.spec, axis).label
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
