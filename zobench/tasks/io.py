"""Reading task data: local files in their original formats, or a hub dataset, with errors that say what to do."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

from zobench.errors import UserError

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # MultiRC/SNLI rows carry long fields


def need(path: Path, hint: str = "") -> Path:
    if not path.exists():
        extra = f" ({hint})" if hint else ""
        raise UserError(f"{path}: data file not found{extra}; point data_dir at the folder holding it, "
                        f"or drop data_dir to load the task from the hub")
    return path


def read_tsv(path: Path, header: bool = True) -> list[dict[str, Any]] | list[list[str]]:
    """GLUE-style TSV (no quoting). With a header: dicts; without: lists of fields."""
    with need(path).open(newline="", encoding="utf-8") as f:
        if header:
            return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        return [row for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if row]


def read_tsv_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a TSV whose rows may carry more fields than the header (MNLI's label1..5)."""
    with need(path).open(newline="", encoding="utf-8") as f:
        rows = [row for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if row]
    if not rows:
        raise UserError(f"{path}: the file is empty")
    return rows[0], rows[1:]


def read_csv(path: Path, header: bool = True) -> list[dict[str, Any]] | list[list[str]]:
    with need(path).open(newline="", encoding="utf-8") as f:
        if header:
            return list(csv.DictReader(f))
        return [row for row in csv.reader(f) if row]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with need(path).open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{n}: not valid JSON ({e.msg}); each line must be one JSON object") \
                        from None
    return rows


def read_json(path: Path) -> Any:
    try:
        return json.loads(need(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None


def hub(path: str, name: str | None, split: str, revision: str | None = None) -> list[dict[str, Any]]:
    """A split of a hub dataset as a list of dicts; offline or unreachable → one clear message."""
    from datasets import load_dataset

    try:
        return list(load_dataset(path, name, split=split, revision=revision))
    except Exception as e:  # datasets raises many kinds when offline or when the id is wrong
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        where = f"{path}" + (f"/{name}" if name else "")
        raise UserError(f"hub dataset '{where}' split '{split}' could not be loaded ({first}); set the task's "
                        f"data_dir to a local copy in the original format (see the task's docstring)") from None
