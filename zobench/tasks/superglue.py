"""SuperGLUE classification tasks with MeZO's templates (large_models/templates.py; PromptSource-derived).

Each task reads the hub (`aps/super_glue`, `google/boolq`) by default, or with `data_dir` the original
SuperGLUE JSONL files (`train.jsonl`, `val.jsonl`; WiC's train also from the original WiC package). Labels
are indices into the verbalizer options, in MeZO's candidate order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import PositiveInt

from zobench.registry import tasks
from zobench.tasks.base import ChoiceParams, ChoiceTask
from zobench.tasks.io import hub, read_jsonl
from zobench.tasks.scoring import Choice

SUPERGLUE = "aps/super_glue"


class SuperGLUETask(ChoiceTask):
    """Shared loading: the hub config `hub_name`, or `train.jsonl` / `val.jsonl` under data_dir."""

    hub_path = SUPERGLUE
    hub_name = ""
    data_files: tuple[str, ...] = ("val.jsonl",)  # + train.jsonl where the task cannot carve train from validation

    @classmethod
    def local_file(cls, split: str) -> str:
        return "train.jsonl" if split == "train" else "val.jsonl"

    @classmethod
    def rows(cls, split: str, data_dir: str | None, seed: int) -> list[dict[str, Any]] | None:
        if data_dir:
            path = Path(data_dir) / cls.local_file(split)
            if split == "train" and not path.exists():
                return None  # a partial local copy: the protocol carves train/dev from validation
            return [cls.normalize(r, local=True) for r in read_jsonl(path)]
        return [cls.normalize(r, local=False) for r in hub(cls.hub_path, cls.hub_name or None, split)]

    @classmethod
    def normalize(cls, row: dict[str, Any], local: bool) -> dict[str, Any]:
        return row


def _label(value: Any, names: list[str]) -> int:
    """A label from the hub (an int) or from SuperGLUE's JSONL (a string or a bool)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        return names.index(value)
    return int(value)


@tasks.register("rte")
class RTE(SuperGLUETask):
    """RTE: '<premise>\\nDoes this mean that "<hypothesis>" is true? Yes or No?\\n' + {Yes, No}."""

    hub_name = "rte"
    data_files = ("train.jsonl", "val.jsonl")

    @classmethod
    def normalize(cls, row: dict[str, Any], local: bool) -> dict[str, Any]:
        return {**row, "label": _label(row["label"], ["entailment", "not_entailment"])}

    @classmethod
    def render(cls, row: dict[str, Any]) -> Choice:
        return Choice(prompt=f"{row['premise']}\nDoes this mean that \"{row['hypothesis']}\" is true? Yes or No?\n",
                      options=["Yes", "No"], label=row["label"])


@tasks.register("cb")
class CB(SuperGLUETask):
    """CommitmentBank: 'Suppose <premise> Can we infer that "<hypothesis>"? Yes, No, or Maybe?\\n'."""

    hub_name = "cb"
    data_files = ("train.jsonl", "val.jsonl")

    class Params(ChoiceParams):
        dev_size: PositiveInt = 100  # MeZO's mezo.sh / finetune.sh: CB has < 1000 train examples, DEV=100

    @classmethod
    def normalize(cls, row: dict[str, Any], local: bool) -> dict[str, Any]:
        return {**row, "label": _label(row["label"], ["entailment", "contradiction", "neutral"])}

    @classmethod
    def render(cls, row: dict[str, Any]) -> Choice:
        return Choice(prompt=f"Suppose {row['premise']} Can we infer that \"{row['hypothesis']}\"? Yes, No, or "
                             f"Maybe?\n", options=["Yes", "No", "Maybe"], label=row["label"])


@tasks.register("boolq")
class BoolQ(SuperGLUETask):
    """BoolQ (MeZO's template v3): '<passage> <Question>?\\n' + {Yes, No}. Hub: google/boolq.

    The local copy in shared/data has only validation (+32-example FewGLUE subsets): train and dev are then
    carved from validation, disjoint from test, and the run's info says so."""

    hub_path, hub_name = "google/boolq", ""

    @classmethod
    def normalize(cls, row: dict[str, Any], local: bool) -> dict[str, Any]:
        answer = row["label"] if "label" in row else row["answer"]
        return {"passage": row["passage"], "question": row["question"], "label": 0 if answer in (True, 1) else 1}

    @classmethod
    def render(cls, row: dict[str, Any]) -> Choice:
        question = row["question"] if row["question"].endswith("?") else row["question"] + "?"
        question = question[0].upper() + question[1:]
        return Choice(prompt=f"{row['passage']} {question}\n", options=["Yes", "No"], label=row["label"])


@tasks.register("wsc")
class WSC(SuperGLUETask):
    """WSC: '<text>\\nIn the previous sentence, does the pronoun "<span2>" refer to <span1>? Yes or No?\\n'.

    Hub: wsc.fixed (as MeZO); local: SuperGLUE's WSC JSONL (without HF's span-index fix, which the prompt
    does not use)."""

    hub_name = "wsc.fixed"
    data_files = ("train.jsonl", "val.jsonl")

    @classmethod
    def normalize(cls, row: dict[str, Any], local: bool) -> dict[str, Any]:
        target = row.get("target", row)
        return {"text": row["text"], "span1_text": target["span1_text"], "span2_text": target["span2_text"],
                "label": _label(row["label"], ["False", "True"])}

    @classmethod
    def render(cls, row: dict[str, Any]) -> Choice:
        return Choice(prompt=f"{row['text']}\nIn the previous sentence, does the pronoun \"{row['span2_text'].lower()}"
                             f"\" refer to {row['span1_text']}? Yes or No?\n", options=["No", "Yes"],
                      label=row["label"])


@tasks.register("wic")
class WiC(SuperGLUETask):
    """WiC: 'Does the word "<w>" have the same meaning in these two sentences? Yes, No?\\n<s1>\\n<s2>\\n'.

    Local: `val.jsonl` (SuperGLUE) for validation; train from `train.jsonl` or, failing that, the original
    WiC package's `train.data.txt` + `train.gold.txt` (tokenized sentences, the source of SuperGLUE's train)."""

    hub_name = "wic"

    @classmethod
    def rows(cls, split: str, data_dir: str | None, seed: int) -> list[dict[str, Any]] | None:
        if data_dir and split == "train" and not (Path(data_dir) / "train.jsonl").exists() \
                and (Path(data_dir) / "train.data.txt").exists():
            data = (Path(data_dir) / "train.data.txt").read_text(encoding="utf-8").splitlines()
            gold = (Path(data_dir) / "train.gold.txt").read_text(encoding="utf-8").split()
            rows = []
            for line, g in zip(data, gold, strict=True):
                word, _pos, _idx, s1, s2 = line.split("\t")
                rows.append({"word": word, "sentence1": s1, "sentence2": s2, "label": int(g == "T")})
            return rows
        return super().rows(split, data_dir, seed)

    @classmethod
    def normalize(cls, row: dict[str, Any], local: bool) -> dict[str, Any]:
        return {"word": row["word"], "sentence1": row["sentence1"], "sentence2": row["sentence2"],
                "label": _label(row["label"], ["False", "True"])}

    @classmethod
    def render(cls, row: dict[str, Any]) -> Choice:
        return Choice(prompt=f"Does the word \"{row['word']}\" have the same meaning in these two sentences? Yes, "
                             f"No?\n{row['sentence1']}\n{row['sentence2']}\n", options=["No", "Yes"],
                      label=row["label"])


@tasks.register("multirc")
class MultiRC(SuperGLUETask):
    """MultiRC, one example per (paragraph, question, answer):
    '<paragraph>\\nQuestion: <q>\\nI found this answer "<a>". Is that correct? Yes or No?\\n' + {No, Yes}.

    Local: SuperGLUE's nested JSONL (passage → questions → answers), flattened as the hub's rows are."""

    hub_name = "multirc"
    data_files = ("train.jsonl", "val.jsonl")

    @classmethod
    def rows(cls, split: str, data_dir: str | None, seed: int) -> list[dict[str, Any]] | None:
        if not data_dir:
            return super().rows(split, data_dir, seed)
        path = Path(data_dir) / cls.local_file(split)
        if split == "train" and not path.exists():
            return None
        flat = []
        for doc in read_jsonl(path):
            for q in doc["passage"]["questions"]:
                for a in q["answers"]:
                    flat.append({"paragraph": doc["passage"]["text"], "question": q["question"],
                                 "answer": a["text"], "label": int(a["label"])})
        return flat

    @classmethod
    def render(cls, row: dict[str, Any]) -> Choice:
        return Choice(prompt=f"{row['paragraph']}\nQuestion: {row['question']}\nI found this answer \"{row['answer']}"
                             f"\". Is that correct? Yes or No?\n", options=["No", "Yes"], label=int(row["label"]))
