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
from pydantic import BaseModel, ConfigDict, Field, ValidationError

# written after (or beside) the checksums, never checksummed; run.log is a log, appended while the run ends
UNCHECKED = ("summary.json", "attempts.jsonl", "run.log")
REQUIRED = ("spec.yaml", "curve.parquet")  # every finished run has them; a record without them is damaged


class AxisRecord(BaseModel):
    """One grid axis of a run (model, task, method or scheme) as its summary records it."""

    model_config = ConfigDict(extra="allow")
    name: str
    label: str


class SpecRecord(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: AxisRecord
    task: AxisRecord
    method: AxisRecord
    scheme: AxisRecord


class RunRecord(BaseModel):
    """The fields of summary.json that `run`, `report` and `check` rely on; anything else is kept as it is.

    A summary that fails this schema (hand-written, truncated, another program's JSON) is damaged: the run
    is redone and the report skips it, naming it, instead of failing later on a missing key.
    """

    model_config = ConfigDict(extra="allow")
    run_id: str
    spec_hash: str
    suite: str
    seed: int
    status: Literal["done", "diverged", "oom", "failed"]
    spec: SpecRecord
    files: dict[str, str] = Field(default_factory=dict, description="file name → sha256 when the run ended")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_record(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """A summary.json as a dict, or None and why it cannot be trusted (missing, not JSON, off-schema)."""
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
    try:
        RunRecord.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(map(str, first["loc"])) or "(top level)"
        return None, f"summary.json is not a run record ({field}: {first['msg'].lower()})"
    return data, None


def damage(folder: Path, record: dict[str, Any]) -> str | None:
    """Why the files beside a summary do not match it (missing, or changed since it was written); None if they do.

    Summaries written before checksums were recorded have no `files`: then the required files must exist."""
    files: dict[str, str] = record.get("files") or {}
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

    def summary(self, run_id: str) -> dict[str, Any] | None:
        """The run's record, or None when there is none or it cannot be trusted (see `is_done`)."""
        record, _ = read_record(self.run_dir(run_id) / "summary.json")
        return record

    def is_done(self, run_id: str, spec_hash: str) -> bool:
        """A 'done' record for this exact spec whose files are the ones it was written with.

        A damaged run (summary off-schema or unreadable, a file missing or changed) is not done: it is
        redone, and one line on stderr says so (once per run and Store)."""
        folder = self.run_dir(run_id)
        record, problem = read_record(folder / "summary.json")
        if record is not None:
            if record.get("status") != "done" or record.get("spec_hash") != spec_hash:
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

    def write_summary(self, run_id: str, summary: dict[str, Any]) -> bool:
        """Write summary.json last, with the checksum of every file beside it (`files`), so a file damaged or
        replaced later is found by `is_done`. A disk that is full or read-only is said in one line, not
        raised: the run stays not done (run again next time) and the grid goes on. True when written."""
        folder = self.run_dir(run_id)
        try:
            summary["files"] = {p.name: sha256(p) for p in sorted(folder.iterdir())
                                if p.is_file() and not p.name.startswith(".") and p.name not in UNCHECKED}
            atomic_write(folder / "summary.json", json.dumps(summary, indent=2, default=str).encode())
        except OSError as e:
            why = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
            print(f"{folder}/summary.json: not written ({why}); free space or fix permissions, then run the "
                  f"suite again to redo this run", file=sys.stderr)
            return False
        return True


_named: set[tuple[str, str]] = set()


def _skip(path: Path, why: str) -> None:
    """One line on stderr per unreadable file (once per process: the report reads summaries more than once)."""
    if (str(path), why) not in _named:
        _named.add((str(path), why))
        print(f"skipped {path}: {why}", file=sys.stderr)


def load_summaries(results: Path | str) -> list[dict[str, Any]]:
    """Every readable run record under a suite folder (or a folder of suites); each one that is not is
    named on stderr and skipped."""
    root = Path(results)
    out = []
    for path in sorted(root.rglob("summary.json")):
        record, problem = read_record(path)
        if record is None:
            _skip(path, problem or "unreadable")
            continue
        out.append(record | {"_dir": str(path.parent)})
    return out


def load_curves(results: Path | str) -> pd.DataFrame:
    """Every run's curve with its run's labels; a curve that is missing is left out, one that cannot be read
    or does not match its checksum is named on stderr and left out."""
    frames = []
    for s in load_summaries(results):
        path = Path(s["_dir"]) / "curve.parquet"
        if not path.exists():
            continue
        digest = (s.get("files") or {}).get("curve.parquet")
        try:
            if digest is not None and sha256(path) != digest:
                _skip(path, "does not match its checksum in summary.json")
                continue
            df = pd.read_parquet(path)
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            _skip(path, f"not a readable parquet file ({type(e).__name__})")
            continue
        for key in ("suite", "run_id", "seed", "status"):
            df[key] = s.get(key)
        for axis in ("model", "task", "method", "scheme"):
            df[axis] = s["spec"][axis]["label"]
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
