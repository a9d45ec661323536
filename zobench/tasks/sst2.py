"""SST-2 with MeZO's prompt: '<sentence> It was' + {' terrible', ' great'}."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from zobench.errors import UserError
from zobench.registry import tasks
from zobench.tasks.base import ChoiceTask
from zobench.tasks.scoring import Choice


def read_tsv(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise UserError(f"{path}: data file not found; point data_dir at a folder holding it")
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


@tasks.register("sst2")
class SST2(ChoiceTask):
    """GLUE SST-2 (Socher et al. 2013). Hub: glue/sst2. data_dir: GLUE's train.tsv and dev.tsv."""

    options = [" terrible", " great"]
    data_files = ("train.tsv", "dev.tsv")

    @classmethod
    def rows(cls, split: str, data_dir: str | None, seed: int) -> list[dict[str, Any]]:
        if data_dir:
            name = "train.tsv" if split == "train" else "dev.tsv"
            return [{"sentence": r["sentence"], "label": int(r["label"])} for r in read_tsv(Path(data_dir) / name)]
        from datasets import load_dataset

        return list(load_dataset("glue", "sst2", split=split))

    @classmethod
    def render(cls, row: dict[str, Any]) -> Choice:
        return Choice(prompt=f"{row['sentence'].strip()} It was", options=cls.options, label=int(row["label"]))
