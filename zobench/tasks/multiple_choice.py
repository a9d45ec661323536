"""Multiple-choice tasks with MeZO's templates: COPA, ReCoRD, WinoGrande.

MeZO trains these by teacher forcing on the correct candidate only (no `--train_as_classification`) and
predicts the candidate with the highest mean token log-likelihood. A trailing space of a template moves to
the start of each option, so the option's tokens are the ones MeZO scores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import PositiveInt

from zobench.registry import tasks
from zobench.tasks.base import ChoiceParams
from zobench.tasks.io import hub, read_jsonl
from zobench.tasks.scoring import Choice
from zobench.tasks.superglue import SuperGLUETask


@tasks.register("copa")
class COPA(SuperGLUETask):
    """COPA: '<premise without its period> because|so' + ' <choice, first word lower-cased unless "I">'."""

    hub_name = "copa"
    data_files = ("train.jsonl", "val.jsonl")
    train_as_classification = False

    class Params(ChoiceParams):
        dev_size: PositiveInt = 100  # MeZO's mezo.sh / finetune.sh: Copa has < 1000 train examples, DEV=100

    @staticmethod
    def capitalize(choice: str) -> str:
        words = choice.split(" ")
        if words[0] != "I":
            words[0] = words[0].lower()
        return " ".join(words)

    @classmethod
    def render(cls, row: dict[str, Any]) -> Choice:
        premise = row["premise"].rstrip()
        premise = premise[:-1] if premise.endswith(".") else premise
        conj = {"effect": " so", "cause": " because"}[row["question"]]
        return Choice(prompt=premise + conj, options=[" " + cls.capitalize(row["choice1"]),
                                                      " " + cls.capitalize(row["choice2"])], label=int(row["label"]))


@tasks.register("record")
class ReCoRD(SuperGLUETask):
    """ReCoRD (MeZO's GPT-3-style template): '<passage, @highlight → "- ">\\n-' + ' <query with the entity>'.

    Candidates are the passage's entities; any of the gold answers counts as correct. Local: SuperGLUE JSONL
    (`train.jsonl`, `val.jsonl`); shared/data holds only FewGLUE's 32-example files, so pass
    `train_file`/`validation_file` to use them."""

    hub_name = "record"
    data_files = ()  # file names are parameters
    train_as_classification = False

    class Params(ChoiceParams):
        train_file: str = "train.jsonl"
        validation_file: str = "val.jsonl"
        max_length: int = 1024

    @classmethod
    def load(cls, p: Any, split: str, seed: int) -> list[dict[str, Any]] | None:
        if not p.data_dir:
            return super().rows(split, None, seed)
        path = Path(p.data_dir) / (p.train_file if split == "train" else p.validation_file)
        if split == "train" and not path.exists():
            return None
        flat = []
        for doc in read_jsonl(path):
            text = doc["passage"]["text"]
            entities = [text[e["start"]:e["end"] + 1] for e in doc["passage"]["entities"]]  # SuperGLUE: end inclusive
            for qa in doc["qas"]:
                flat.append({"passage": text, "query": qa["query"], "entities": entities,
                             "answers": [a["text"] for a in qa.get("answers", [])]})
        return flat

    @classmethod
    def render(cls, row: dict[str, Any]) -> Choice:
        candidates = list(dict.fromkeys(row["entities"]))
        for answer in row["answers"]:
            if answer not in candidates:
                candidates.append(answer)
        correct = tuple(i for i, c in enumerate(candidates) if c in row["answers"])
        passage = row["passage"].replace("@highlight\n", "- ")
        options = [" " + row["query"].replace("@placeholder", c) for c in candidates]
        return Choice(prompt=f"{passage}\n-", options=options, label=correct[0] if correct else 0, correct=correct)


@tasks.register("winogrande")
class WinoGrande(SuperGLUETask):
    """WinoGrande (MeZO's template, from GPT-3): no prompt; each option is the sentence with '_' filled in.

    Hub: allenai/winogrande, config winogrande_<size> (MeZO: debiased). Local: the official
    `train_<size>.jsonl` and `dev.jsonl` (shared/data has xs, s, m, l)."""

    hub_path = "allenai/winogrande"
    data_files = ("dev.jsonl",)
    train_as_classification = False

    class Params(ChoiceParams):
        size: Literal["xs", "s", "m", "l", "xl", "debiased"] = "debiased"

    @classmethod
    def load(cls, p: Any, split: str, seed: int) -> list[dict[str, Any]] | None:
        if p.data_dir:
            name = f"train_{p.size}.jsonl" if split == "train" else "dev.jsonl"
            return read_jsonl(_need_size(Path(p.data_dir) / name, p.size))
        return hub(cls.hub_path, f"winogrande_{p.size}", split)

    @classmethod
    def render(cls, row: dict[str, Any]) -> Choice:
        options = [row["sentence"].replace("_", row["option1"]), row["sentence"].replace("_", row["option2"])]
        return Choice(prompt="", options=options, label=int(row["answer"]) - 1)


def _need_size(path: Path, size: str) -> Path:
    if not path.exists():
        from zobench.errors import UserError

        raise UserError(f"{path}: not found; WinoGrande size '{size}' needs train_{size}.jsonl in data_dir "
                        f"(shared/data has xs, s, m, l: set the task's size)")
    return path
