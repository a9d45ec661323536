"""The results folder: results/<suite>/<run_id>/{spec.yaml, curve.parquet, summary.json}.

Every file is written to a temporary name and renamed, and summary.json is written last, so a run
killed at any point leaves no summary and is simply run again. A run is claimed under a per-run file
lock (`<run>/.lock`, fcntl: the kernel drops it when its process dies, even by SIGKILL), so two
`zobench run` processes on one results folder never run the same run twice.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import platform
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from filelock import FileLock, Timeout

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

    def run_dir(self, run_id: str) -> Path:
        return self.dir / run_id

    def summary(self, run_id: str) -> dict[str, Any] | None:
        path = self.run_dir(run_id) / "summary.json"
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def is_done(self, run_id: str, spec_hash: str) -> bool:
        s = self.summary(run_id)
        return bool(s and s.get("status") == "done" and s.get("spec_hash") == spec_hash)

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

    def write_summary(self, run_id: str, summary: dict[str, Any]) -> None:
        atomic_write(self.run_dir(run_id) / "summary.json", json.dumps(summary, indent=2, default=str).encode())


def load_summaries(results: Path | str) -> list[dict[str, Any]]:
    """Every run summary under a suite folder (or a folder of suites)."""
    root = Path(results)
    out = []
    for path in sorted(root.rglob("summary.json")):
        try:
            out.append(json.loads(path.read_text()) | {"_dir": str(path.parent)})
        except json.JSONDecodeError:
            continue
    return out


def load_curves(results: Path | str) -> pd.DataFrame:
    frames = []
    for s in load_summaries(results):
        path = Path(s["_dir"]) / "curve.parquet"
        if path.exists():
            df = pd.read_parquet(path)
            for key in ("suite", "run_id", "seed", "status"):
                df[key] = s.get(key)
            for axis in ("model", "task", "method", "scheme"):
                df[axis] = s["spec"][axis]["label"]
            frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
