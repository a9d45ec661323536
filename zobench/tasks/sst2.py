"""SST-2 with MeZO's prompt: '<sentence> It was' + {' terrible', ' great'}."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zobench.registry import tasks
from zobench.tasks.base import ChoiceTask
from zobench.tasks.io import hub, read_tsv
from zobench.tasks.scoring import Choice

__all__ = ["SST2", "read_tsv"]


@tasks.register("sst2")
class SST2(ChoiceTask):
    """GLUE SST-2 (Socher et al. 2013). Hub: nyu-mll/glue sst2. data_dir: GLUE's train.tsv and dev.tsv."""

    options = [" terrible", " great"]
    data_files = ("train.tsv", "dev.tsv")

    @classmethod
    def rows(cls, split: str, data_dir: str | None, seed: int) -> list[dict[str, Any]]:
        if data_dir:
            name = "train.tsv" if split == "train" else "dev.tsv"
            return [{"sentence": r["sentence"], "label": int(r["label"])}  # type: ignore[index]
                    for r in read_tsv(Path(data_dir) / name)]
        return hub("nyu-mll/glue", "sst2", split)

    @classmethod
    def render(cls, row: dict[str, Any]) -> Choice:
        return Choice(prompt=f"{row['sentence'].strip()} It was", options=cls.options, label=int(row["label"]))
