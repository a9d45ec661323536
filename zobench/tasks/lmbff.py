"""MeZO's medium-model tasks: LM-BFF prompts with a <mask>, k examples per class (Gao et al. 2021).

Templates and verbalizers are LM-BFF's, as MeZO's medium_models/run_fewshot.sh passes them:
  SST-2, SST-5  `*cls**sent_0*_It_was*mask*.*sep+*`          {terrible, great} / {terrible, bad, okay, good, great}
  SNLI, MNLI    `*cls**sent-_0*?*mask*,*+sentl_1**sep+*`     {contradiction: No, entailment: Yes, neutral: Maybe}
  RTE           same                                          {entailment: Yes, not_entailment: No}
  TREC          `*cls**mask*:*+sent_0**sep+*`                {Description, Entity, Expression, Human, Location, Number}
Verbalizer words carry a leading space (RoBERTa's 'Ġword', as LM-BFF maps them).

Data, first match wins:
- `data_dir` holding LM-BFF k-shot folders `<k>-<seed>/` (or `<TASK>/<k>-<seed>/`, e.g. MeZO's
  shared/data/mezo_medium_k-shot-1k-test): train/dev/test exactly as MeZO ran them;
- `data_dir` holding the full original files (SST-5 `train.tsv`/`test.tsv`, TREC `train.csv`/`test.csv`):
  k per class drawn (seeded) for train and for dev, test sampled to `test_size` (LM-BFF's k-shot-1k-test);
- the hub, sampled the same way.
The k-shot seed is `data_seed`, or the run seed when unset (MeZO's seeds: 13, 21, 42, 87, 100).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import PositiveInt

from zobench.errors import UserError
from zobench.models.base import ModelBundle
from zobench.registry import tasks
from zobench.tasks.base import ChoiceParams, ChoiceTask, Splits, choice_workload
from zobench.tasks.io import hub, read_csv, read_tsv, read_tsv_rows
from zobench.tasks.sampling import lmbff_kshot, lmbff_test_1k
from zobench.tasks.scoring import Choice


class KShotParams(ChoiceParams):
    k: PositiveInt = 16  # examples per class (MeZO: 16 or 512)
    data_seed: int | None = None  # the k-shot sample; None = the run seed
    max_length: PositiveInt = 256
    test_size: PositiveInt = 1000


def _first_lower(s: str) -> str:
    return s[:1].lower() + s[1:]


class KShotTask(ChoiceTask):
    Params = KShotParams
    masked = True
    folder: ClassVar[str] = ""  # LM-BFF's folder name
    labels: ClassVar[list[str]] = []  # LM-BFF's label list (raw label values as strings)
    words: ClassVar[list[str]] = []  # verbalizer, in label order
    hub_id: ClassVar[tuple[str, str | None, str]] = ("", None, "")  # path, config, test split
    hub_revision: ClassVar[str | None] = None
    glue_style: ClassVar[bool] = True  # GLUE tsv (test cut by a seed-42 shuffle) or csv (DataFrame.sample)

    @classmethod
    def render_text(cls, text: str, text_b: str | None) -> tuple[str, str]:
        """(text before the mask, text after it)."""
        raise NotImplementedError

    @classmethod
    def choice(cls, text: str, text_b: str | None, label: str) -> Choice:
        if label not in cls.labels:
            raise UserError(f"task '{cls.registered_name}': unknown label {label!r}; expected one of {cls.labels}")
        head, tail = cls.render_text(text, text_b)
        return Choice(prompt=head, options=[" " + w for w in cls.words], label=cls.labels.index(label), suffix=tail)

    # -- reading LM-BFF files --------------------------------------------------------------------
    @classmethod
    def read_file(cls, folder: Path, split: str) -> list[tuple[str, str | None, str]]:
        """(text, text_b, label) rows of an LM-BFF k-shot file."""
        raise NotImplementedError

    @classmethod
    def kshot_folder(cls, data_dir: Path, k: int, seed: int) -> Path | None:
        for candidate in (data_dir / f"{k}-{seed}", data_dir / cls.folder / f"{k}-{seed}"):
            if candidate.is_dir():
                return candidate
        found = sorted(p.name for p in [*data_dir.glob("*-*"), *(data_dir / cls.folder).glob("*-*")] if p.is_dir())
        if found:
            raise UserError(f"{data_dir}: no k-shot folder '{k}-{seed}' for {cls.folder}; found {', '.join(found)} "
                            f"(set k / data_seed, or the run seeds, to one of them)")
        return None

    @classmethod
    def full_rows(cls, data_dir: Path | None, split: str) -> list[tuple[str, str | None, str]]:
        """All rows of 'train' or 'test' from the original full files (data_dir) or the hub."""
        if data_dir is not None:
            return cls.read_file(data_dir, split)
        path, name, test_split = cls.hub_id
        rows = hub(path, name, "train" if split == "train" else test_split, revision=cls.hub_revision)
        return [cls.from_hub(r) for r in rows if int(r.get("label", 0)) >= 0]

    @classmethod
    def from_hub(cls, row: dict[str, Any]) -> tuple[str, str | None, str]:
        raise NotImplementedError

    @classmethod
    def sample(cls, p: KShotParams, seed: int) -> tuple[dict[str, list[tuple[str, str | None, str]]],
                                                         dict[str, list[str]]]:
        """LM-BFF's k-shot train/dev from the full train rows and MeZO's 1k test (zobench/tasks/sampling.py),
        with each example's row id in the full files."""
        data_dir = Path(p.data_dir) if p.data_dir else None
        train = cls.full_rows(data_dir, "train")
        idx = lmbff_kshot([r[2] for r in train], p.k, seed)
        test = cls.full_rows(data_dir, "test")
        idx["test"] = lmbff_test_1k(len(test), csv_style=not cls.glue_style, limit=p.test_size)
        parts = {s: [train[i] for i in idx[s]] for s in ("train", "dev")}
        parts["test"] = [test[i] for i in idx["test"]]
        ids = {s: [f"{'test' if s == 'test' else 'train'}:{i}" for i in idx[s]] for s in ("train", "dev", "test")}
        return parts, ids

    @classmethod
    def splits(cls, p: ChoiceParams, seed: int) -> Splits:
        assert isinstance(p, KShotParams)
        folder = cls.kshot_folder(Path(p.data_dir), p.k, seed) if p.data_dir else None
        if folder is not None:
            raw = {s: cls.read_file(folder, s) for s in ("train", "dev", "test")}
            ids = {s: [f"{s}:{i}" for i in range(len(rows))] for s, rows in raw.items()}
            note = f"LM-BFF k-shot files {folder.parent.name}/{folder.name}"
        else:
            raw, ids = cls.sample(p, seed)
            note = f"k={p.k} per class sampled with seed {seed} (LM-BFF tools/generate_k_shot_data.py)"
        return Splits({s: [cls.choice(*r) for r in rows] for s, rows in raw.items()}, ids, note)

    @classmethod
    def check_model(cls, bundle: ModelBundle) -> None:
        """Masked LMs score at the mask; a causal LM scores the verbalizer where the mask was (suffix dropped)."""

    @classmethod
    def build(cls, params: dict[str, Any], bundle: ModelBundle | None, device: torch.device, seed: int) -> Any:
        p = KShotParams.model_validate(params)
        if bundle is None:
            raise UserError(f"task '{cls.registered_name}' needs a model")
        data = cls.splits(p, p.data_seed if p.data_seed is not None else seed)
        return choice_workload(cls, p, data, bundle, device)


class SentimentKShot(KShotTask):
    @classmethod
    def render_text(cls, text: str, text_b: str | None) -> tuple[str, str]:
        return f"{text.strip()} It was", "."


class PairKShot(KShotTask):
    @classmethod
    def render_text(cls, text: str, text_b: str | None) -> tuple[str, str]:
        text = text.strip()
        return f"{text[:-1]}?", f", {_first_lower((text_b or '').strip())}"

    @classmethod
    def read_file(cls, folder: Path, split: str) -> list[tuple[str, str | None, str]]:
        name = {"dev": "dev_matched.tsv", "test": "test_matched.tsv"}.get(split, "train.tsv") \
            if cls.folder == "MNLI" else f"{split}.tsv"
        header, rows = read_tsv_rows(folder / name)
        a, b = header.index("sentence1"), header.index("sentence2")
        return [(r[a], r[b], r[-1]) for r in rows]

    @classmethod
    def from_hub(cls, row: dict[str, Any]) -> tuple[str, str | None, str]:
        text = row.get("premise", row.get("sentence1"))
        text_b = row.get("hypothesis", row.get("sentence2"))
        return text, text_b, cls.hub_labels[int(row["label"])]

    hub_labels: ClassVar[list[str]] = []


@tasks.register("sst2-mlm")
class SST2KShot(SentimentKShot):
    """SST-2 (GLUE), LM-BFF prompt '<s> It was <mask>.' → {terrible, great}. Hub: nyu-mll/glue sst2 (test = dev)."""

    folder, labels, words = "SST-2", ["0", "1"], ["terrible", "great"]
    hub_id = ("nyu-mll/glue", "sst2", "validation")

    @classmethod
    def read_file(cls, folder: Path, split: str) -> list[tuple[str, str | None, str]]:
        name = f"{split}.tsv"
        if split == "test" and not (folder / name).exists():  # GLUE's own folder: test = dev, as in MeZO's files
            name = "dev.tsv"
        return [(r["sentence"], None, r["label"]) for r in read_tsv(folder / name)]  # type: ignore[index]

    @classmethod
    def from_hub(cls, row: dict[str, Any]) -> tuple[str, str | None, str]:
        return row["sentence"], None, str(row["label"])


@tasks.register("sst5-mlm")
class SST5KShot(SentimentKShot):
    """SST-5: '<s> It was <mask>.' → {terrible, bad, okay, good, great}. Files: LM-BFF csv (label,sentence) or the
    original tsv (label<TAB>sentence, no header). Hub: SetFit/sst5."""

    folder, labels, words = "sst-5", ["0", "1", "2", "3", "4"], ["terrible", "bad", "okay", "good", "great"]
    hub_id = ("SetFit/sst5", None, "test")
    glue_style = False

    @classmethod
    def read_file(cls, folder: Path, split: str) -> list[tuple[str, str | None, str]]:
        if (folder / f"{split}.csv").exists():
            return [(r[1], None, r[0]) for r in read_csv(folder / f"{split}.csv", header=False)]
        return [(r[1], None, r[0]) for r in read_tsv(folder / f"{split}.tsv", header=False)]

    @classmethod
    def from_hub(cls, row: dict[str, Any]) -> tuple[str, str | None, str]:
        return row["text"], None, str(row["label"])


@tasks.register("trec-mlm")
class TRECKShot(KShotTask):
    """TREC (coarse): '<mask>: <question>' → {Description, Entity, Expression, Human, Location, Number}.

    Files: LM-BFF csv (label,question), LM-BFF's numbering (0 DESC, 1 ENTY, 2 ABBR, 3 HUM, 4 LOC, 5 NUM; its
    verbalizer, LM-BFF tools/generate_template.py:277, says 'Expression' for ABBR). Hub: CogComp/trec's parquet
    conversion (the main branch is a loading script, which datasets >= 4 refuses), whose `coarse_label` names
    are ABBR, ENTY, DESC, HUM, LOC, NUM: hub 0 and 2 swap places in LM-BFF's numbering."""

    folder, labels = "trec", ["0", "1", "2", "3", "4", "5"]
    words = ["Description", "Entity", "Expression", "Human", "Location", "Number"]
    hub_id = ("CogComp/trec", None, "test")
    hub_revision = "refs/convert/parquet"
    glue_style = False
    hub_coarse_names: ClassVar[list[str]] = ["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"]  # hub coarse_label order
    lmbff_names: ClassVar[list[str]] = ["DESC", "ENTY", "ABBR", "HUM", "LOC", "NUM"]  # LM-BFF's label order

    @classmethod
    def render_text(cls, text: str, text_b: str | None) -> tuple[str, str]:
        return "", f": {text.strip()}"

    @classmethod
    def read_file(cls, folder: Path, split: str) -> list[tuple[str, str | None, str]]:
        return [(r[1], None, r[0]) for r in read_csv(folder / f"{split}.csv", header=False)]

    @classmethod
    def from_hub(cls, row: dict[str, Any]) -> tuple[str, str | None, str]:
        name = cls.hub_coarse_names[int(row["coarse_label"])]
        return row["text"], None, str(cls.lmbff_names.index(name))


@tasks.register("snli-mlm")
class SNLIKShot(PairKShot):
    """SNLI: '<premise w/o last char>? <mask>, <hypothesis>' → {No, Yes, Maybe}. Hub: stanfordnlp/snli."""

    folder, labels, words = "SNLI", ["contradiction", "entailment", "neutral"], ["No", "Yes", "Maybe"]
    hub_id = ("stanfordnlp/snli", None, "test")
    hub_labels = ["entailment", "neutral", "contradiction"]


@tasks.register("mnli-mlm")
class MNLIKShot(PairKShot):
    """MNLI (matched): as SNLI. Hub: nyu-mll/glue mnli, test = validation_matched."""

    folder, labels, words = "MNLI", ["contradiction", "entailment", "neutral"], ["No", "Yes", "Maybe"]
    hub_id = ("nyu-mll/glue", "mnli", "validation_matched")
    hub_labels = ["entailment", "neutral", "contradiction"]


@tasks.register("rte-mlm")
class RTEKShot(PairKShot):
    """RTE (GLUE): '<premise w/o last char>? <mask>, <hypothesis>' → {Yes, No}. Hub: nyu-mll/glue rte."""

    folder, labels, words = "RTE", ["entailment", "not_entailment"], ["Yes", "No"]
    hub_id = ("nyu-mll/glue", "rte", "validation")
    hub_labels = ["entailment", "not_entailment"]
