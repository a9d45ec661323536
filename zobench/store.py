"""The results folder: results/<suite>/<run_id>/{spec.yaml, curve.parquet, summary.json}.

Every file is written to a temporary name and renamed, and summary.json is written last, so a run
killed at any point leaves no summary and is simply run again.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

STATUSES = ("done", "diverged", "oom", "failed")


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
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

    def write_spec(self, run_id: str, spec: dict[str, Any]) -> None:
        atomic_write(self.run_dir(run_id) / "spec.yaml", yaml.safe_dump(spec, sort_keys=False).encode())

    def write_curve(self, run_id: str, rows: list[dict[str, Any]]) -> None:
        path = self.run_dir(run_id) / "curve.parquet"
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".curve.", suffix=".tmp")
        os.close(fd)
        try:
            pd.DataFrame(rows).to_parquet(tmp, index=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

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
