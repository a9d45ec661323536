"""Custom tasks on the user's own data: every format `datasets` reads, headerless files, hub-style datasets, and
planning (`zobench validate`, `zobench run`) refusing a wrong field before any model loads."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from conftest import TINY_LLAMA
from typer.testing import CliRunner

from zobench import registry
from zobench.cli import app
from zobench.errors import FieldError, UserError
from zobench.tasks.custom import CustomParams, CustomTask, open_split, template_fields

TOPICS = {1: "World", 2: "Sports", 3: "Business", 4: "Sci/Tech"}
VERBALIZER = {k: f" {v}" for k, v in TOPICS.items()}  # int keys, as YAML reads `1: World`


def ag_rows(n: int, offset: int = 0) -> list[dict]:
    """AG News's columns (class index 1..4, title, description); texts with commas, quotes and a text 'NA'."""
    return [{"class": 1 + i % 4, "title": f'"Quoted" title {i + offset}, with a comma',
             "description": "NA" if i == 1 else f'He said "no" on day {i + offset}.'} for i in range(n)]


def write(folder: Path, name: str, rows: list[dict], header: bool = True) -> Path:
    """`rows` in the format `name`'s extension says, as other tools write it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    suffix = path.suffix
    if suffix in (".csv", ".tsv"):
        with path.open("w", newline="", encoding="utf-8") as f:
            if suffix == ".csv":  # AG News quotes every field
                out = csv.writer(f, quoting=csv.QUOTE_ALL)
            else:  # GLUE-style: tabs, no quoting, quotes are text
                out = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, quotechar=None, escapechar=None)
            if header:
                out.writerow(rows[0])
            out.writerows([list(r.values()) for r in rows])
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == ".json":
        path.write_text(json.dumps({"data": rows}))
    elif suffix == ".parquet":
        import pandas as pd

        pd.DataFrame(rows).to_parquet(path)
    return path


def params(folder: Path, **extra) -> CustomParams:
    base = {"data_dir": str(folder), "files": {"train": "train.csv", "test": "test.csv"},
            "template": "{{ title }}. {{ description }} Topic:", "verbalizer": VERBALIZER, "label_field": "class",
            "train_size": 16, "dev_size": 2}
    return CustomParams.model_validate({**base, **extra})


@pytest.mark.parametrize("name,header", [("x.csv", False), ("x.csv", True), ("x.tsv", False), ("x.tsv", True),
                                         ("x.jsonl", True), ("x.json", True), ("x.parquet", True)])
def test_every_format_reads_the_same_rows(tmp_path, name, header):
    """The rows come back as written, whatever the format: quotes and commas inside fields, a text 'NA'
    kept as text, the class as a number; a headerless file takes its columns from column_names."""
    rows = ag_rows(6)
    write(tmp_path, name, rows, header)
    names = None if header else ["class", "title", "description"]
    p = params(tmp_path, files={"train": name, "test": name}, column_names=names)
    got = open_split(p, "train").to_list()
    typed = name.endswith((".json", ".jsonl", ".parquet"))  # csv/tsv fields are text, exactly as written
    assert got == (rows if typed else [{k: str(v) for k, v in r.items()} for r in rows])
    CustomTask.check(p.model_dump(mode="json"))  # the template, label and verbalizer fit


def test_csv_fields_stay_the_text_written(tmp_path):
    """What the template renders is what the file says: no number parsing, no missing-value guessing."""
    (tmp_path / "train.csv").write_text('label,text\n007,3.50\n1,NA\n2,\n3,"1e5"\n')
    (tmp_path / "test.tsv").write_text('"x"\t"quoted"\n')
    p = params(tmp_path, files={"train": "train.csv", "test": "test.tsv"})
    assert open_split(p, "train").to_list() == [{"label": "007", "text": "3.50"}, {"label": "1", "text": "NA"},
                                                {"label": "2", "text": ""}, {"label": "3", "text": "1e5"}]
    assert open_split(p.model_copy(update={"column_names": ["a", "b"]}), "test").to_list() == [
        {"a": '"x"', "b": '"quoted"'}]  # tsv: quotes are text
    (tmp_path / "twice.csv").write_text("a,a\n1,2\n")
    with pytest.raises(UserError, match="header row names a column twice"):
        open_split(params(tmp_path, files={"train": "twice.csv", "test": "test.tsv"}), "train")


def test_an_answer_field_the_data_lacks_is_refused(tmp_path):
    write(tmp_path, "train.jsonl", [{"question": f"q{i}", "answers": [f"a{i}"]} for i in range(4)])
    base = {"data_dir": str(tmp_path), "files": {"train": "train.jsonl", "test": "train.jsonl"},
            "template": "{{ question }}", "dev_size": 2}
    CustomTask.check({**base, "answer": "answers"})
    CustomTask.check({**base, "answer": "{{ answers[0] }}"})
    with pytest.raises(FieldError, match="'answer' is undefined: the answer uses it"):
        CustomTask.check({**base, "answer": "answer"})


def test_a_headerless_csv_without_column_names_is_refused_with_the_fix(tmp_path):
    """AG News's own train.csv read as if it had a header: its first row becomes the field names."""
    write(tmp_path, "train.csv", ag_rows(8), header=False)
    write(tmp_path, "test.csv", ag_rows(4), header=False)
    with pytest.raises(FieldError, match=r"'description' is undefined") as e:
        CustomTask.check(params(tmp_path).model_dump(mode="json"))
    message = str(e.value)
    assert e.value.field == "template" and str(tmp_path / "train.csv") in message
    assert "'\"Quoted\" title 0, with a comma'" in message and "column_names" in message  # the fields it has, the fix


def test_column_names_must_fit_the_file(tmp_path):
    write(tmp_path, "train.csv", ag_rows(4), header=False)
    write(tmp_path, "test.jsonl", ag_rows(4))
    with pytest.raises(UserError, match="first row has 3 fields but column_names names 2"):
        open_split(params(tmp_path, column_names=["class", "title"]), "train")
    p = params(tmp_path, files={"train": "train.csv", "test": "test.jsonl"}, column_names=["class", "title",
                                                                                           "description"])
    with pytest.raises(UserError, match="column_names is for headerless .csv/.tsv files"):
        open_split(p, "test")
    with pytest.raises(ValueError, match="distinct name"):
        params(tmp_path, column_names=["a", "a"])


def test_a_field_used_only_under_a_condition_is_checked(tmp_path):
    """Rendering the first row would not reach `{{ summary }}`; the template's own text names it."""
    write(tmp_path, "train.csv", ag_rows(4))
    write(tmp_path, "test.csv", ag_rows(4))
    template = "{% if class == 0 %}{{ summary }}{% endif %}{{ title }}{% set x = 1 %}{{ x }}{{ mask }}"
    assert template_fields(template) == {"class", "summary", "title"}
    with pytest.raises(FieldError, match="'summary' is undefined"):
        CustomTask.check(params(tmp_path, template=template).model_dump(mode="json"))


def test_labels_without_an_option_are_refused_naming_the_row(tmp_path):
    rows = ag_rows(6)
    rows[4]["class"] = 5
    write(tmp_path, "train.csv", rows)
    write(tmp_path, "test.csv", ag_rows(4))
    with pytest.raises(FieldError, match=r"train.csv: row 5: label '5' is not a verbalizer key") as e:
        CustomTask.check(params(tmp_path).model_dump(mode="json"))
    assert e.value.field == "verbalizer"
    with pytest.raises(FieldError, match="label 4 is out of range for 4 options"):
        CustomTask.check(params(tmp_path, verbalizer=None, options=list(TOPICS.values())).model_dump(mode="json"))


def test_a_train_file_dev_would_empty_is_refused(tmp_path):
    """MeZO's protocol draws dev from train: a train file of dev_size rows or fewer would leave nothing to train
    on (the run would fail after loading the model)."""
    write(tmp_path, "train.csv", ag_rows(8))
    write(tmp_path, "test.csv", ag_rows(4))
    with pytest.raises(FieldError, match=r"has 8 rows and dev takes dev_size=8 of them") as e:
        CustomTask.check(params(tmp_path, dev_size=8).model_dump(mode="json"))
    assert e.value.field == "dev_size"
    CustomTask.check(params(tmp_path, dev_size=7).model_dump(mode="json"))
    CustomTask.check(params(tmp_path, dev_size=8, files={"train": "train.csv", "dev": "test.csv",
                                                         "test": "test.csv"}).model_dump(mode="json"))


def test_an_edited_file_is_read_again(tmp_path):
    write(tmp_path, "train.csv", ag_rows(4))
    p = params(tmp_path)
    assert len(open_split(p, "train")) == 4
    write(tmp_path, "train.csv", ag_rows(7))
    assert len(open_split(p, "train")) == 7


def hub_layout(folder: Path) -> Path:
    """A dataset folder as the hub lays one out (data/<split>-*.parquet), which load_dataset reads by path."""
    from datasets import Dataset

    for split, n in (("train", 24), ("test", 8)):
        (folder / "data").mkdir(parents=True, exist_ok=True)
        Dataset.from_list(ag_rows(n, offset=100 if split == "test" else 0)).to_parquet(
            folder / "data" / f"{split}-00000-of-00001.parquet")
    return folder


def test_a_hub_style_dataset_by_id_and_split(tmp_path):
    """`{hub: ...}` goes through `load_dataset(hub, config, split=...)`: here a hub-layout folder (offline);
    `split` defaults to the key and may select another split or a slice."""
    hub_layout(tmp_path / "ag_news")
    p = params(tmp_path, files={"train": {"hub": "ag_news"}, "test": {"hub": "ag_news", "split": "test[:5]"}})
    assert open_split(p, "train").to_list() == ag_rows(24)
    assert open_split(p, "test").to_list() == ag_rows(5, offset=100)
    CustomTask.check(p.model_dump(mode="json"))
    with pytest.raises(FieldError, match=r"files.test: dataset 'ag_news', split 'validation' could not be loaded"):
        CustomTask.check(params(tmp_path, files={"train": {"hub": "ag_news"},
                                                 "test": {"hub": "ag_news", "split": "validation"}}
                                ).model_dump(mode="json"))


def test_a_dataset_saved_to_disk_and_an_unreachable_hub_id(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list(ag_rows(12)), "test": Dataset.from_list(ag_rows(4))}).save_to_disk(
        str(tmp_path / "saved"))
    p = params(tmp_path, files={"train": {"hub": "saved"}, "test": {"hub": str(tmp_path / "saved")}})
    assert open_split(p, "test").to_list() == ag_rows(4)
    with pytest.raises(UserError, match=r"has no split 'dev'; its splits: \['test', 'train'\]"):
        open_split(params(tmp_path, files={"train": {"hub": "saved", "split": "dev"}, "test": "x.csv"}), "train")
    # HF_DATASETS_OFFLINE=1 (conftest): an id not in the cache fails at once, with the fix
    with pytest.raises(UserError, match=r"dataset 'no-such-user/no-such-set', config 'x', split 'train' could not"):
        open_split(params(tmp_path, files={"train": {"hub": "no-such-user/no-such-set", "config": "x"},
                                           "test": "x.csv"}), "train")


def suite(tmp_path: Path, task: str | dict, **defaults) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({
        "name": "own", "defaults": {"steps": 3, "batch_size": 4, "device": "cpu", **defaults},
        "grid": {"models": [{"name": "tiny", "config": TINY_LLAMA}], "tasks": [task],
                 "methods": [{"name": "zo-sgd", "lr": 1e-3}]}}, sort_keys=False))
    return path


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("task_file", [
    {"files": {"train": "data/train.csv", "test": "data/test.csv"}, "column_names": ["class", "title", "description"]},
    {"files": {"train": {"hub": "ag_news"}, "test": {"hub": "ag_news", "split": "test"}}},
], ids=["headerless-csv", "hub-style"])
def test_validate_and_run_stop_a_wrong_field_before_any_model_loads(tmp_path, monkeypatch, task_file):
    """The task file names a field its data lacks: validate and run exit 2 with the task file and line, the
    field, the data and the fields it has; no model is loaded, nothing is written."""
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "data", "train.csv", ag_rows(24), header=False)
    write(tmp_path / "data", "test.csv", ag_rows(8), header=False)
    hub_layout(tmp_path / "ag_news")
    (tmp_path / "agnews.yaml").write_text(yaml.safe_dump({
        **task_file, "template": "{{ title }}. {{ summary }} Topic:", "verbalizer": VERBALIZER,
        "label_field": "class"}, sort_keys=False))
    suite(tmp_path, "agnews.yaml")
    loaded = []
    monkeypatch.setattr(registry.models.get("tiny"), "load", classmethod(lambda cls, *a: loaded.append(a)))
    before = tree(tmp_path)
    data = "data/train.csv" if "column_names" in task_file else "dataset 'ag_news', split 'train'"
    for args in (["validate", "suite.yaml"], ["run", "suite.yaml", "--results", "r", "--reports", "p"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        message = " ".join(result.output.split())
        assert f"{tmp_path / 'agnews.yaml'}:" in message and ": template: 'summary' is undefined" in message
        assert data in message and "its fields: ['class', 'title', 'description']" in message, message
    assert loaded == [] and tree(tmp_path) == before


def test_a_headerless_csv_task_runs_end_to_end(tmp_path):
    """AG News's layout, declared in YAML with column_names and YAML's int verbalizer keys: a real run on the
    tiny model, four options, the given test file."""
    write(tmp_path / "data", "train.csv", ag_rows(40), header=False)
    write(tmp_path / "data", "test.csv", ag_rows(8, offset=40), header=False)
    (tmp_path / "agnews.yaml").write_text(
        "files: {train: data/train.csv, test: data/test.csv}\n"
        "column_names: [class, title, description]\n"
        "template: '{{ title }}. {{ description }} Topic:'\n"
        "verbalizer: {1: ' World', 2: ' Sports', 3: ' Business', 4: ' Sci/Tech'}\n"
        "label_field: class\ntrain_size: 16\ndev_size: 8\n")
    result = CliRunner().invoke(app, ["run", str(suite(tmp_path, "agnews.yaml")), "--results",
                                      str(tmp_path / "r"), "--no-report"])
    assert result.exit_code == 0, result.output
    summary = json.loads(next((tmp_path / "r" / "own").rglob("summary.json")).read_text())
    assert summary["status"] == "done", summary.get("error")
    assert summary["metric"] == "accuracy" and summary["info"]["test_size"] == 8 and summary["steps"] == 3
    assert 0.0 <= summary["test"]["accuracy"] <= 1.0 and summary["test"]["loss"] > 0


def test_a_shipped_suite_reads_data_dir_from_its_own_folder_and_asks_for_data_dir_where_none_is(tmp_path,
                                                                                                 monkeypatch):
    """A suite run by name from another folder resolves its relative data_dir from the suite file; inside a
    wheel, where that folder holds no data, the error says to give --data-dir, and --data-dir then works."""
    from zobench import bundled

    shipped = tmp_path / "site" / "zobench" / "_bundled"
    monkeypatch.setattr(bundled, "BUNDLED", shipped)
    write(shipped / "data", "train.csv", ag_rows(24), header=False)
    write(shipped / "data", "test.csv", ag_rows(8), header=False)
    task = {"name": "custom", "files": {"train": "train.csv", "test": "test.csv"},
            "column_names": ["class", "title", "description"], "template": "{{ title }} Topic:",
            "verbalizer": VERBALIZER, "label_field": "class", "train_size": 16, "dev_size": 4}
    body = yaml.safe_load(suite(tmp_path, task).read_text())
    (shipped / "suites").mkdir()
    (shipped / "suites" / "ag.yaml").write_text(yaml.safe_dump({**body, "data_dir": "../data"}))
    (shipped / "suites" / "elsewhere.yaml").write_text(yaml.safe_dump({**body, "data_dir": "../../../data"}))
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    result = CliRunner().invoke(app, ["validate", "ag"])
    assert result.exit_code == 0 and "suite 'own', 1 runs" in result.output, result.output
    result = CliRunner().invoke(app, ["validate", "elsewhere"])
    assert result.exit_code == 2 and f"'{tmp_path / 'site' / 'data'}' does not exist" in result.output
    assert "give the folder the suite's data_dir names with --data-dir DIR" in " ".join(result.output.split())
    result = CliRunner().invoke(app, ["validate", "elsewhere", "--data-dir", str(shipped / "data")])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("file,column_names,rows,labels", [
    ("trec/train.csv", ["label", "question"], 5452, {0: 1162, 1: 1250, 2: 86, 3: 1223, 4: 835, 5: 896}),
    ("sst5/train.tsv", ["label", "sentence"], 8544, {0: 1092, 1: 2218, 2: 1624, 3: 2322, 4: 1288}),
])
def test_real_headerless_files_read_as_their_sources_count_them(data_dir, file, column_names, rows, labels):
    """LM-BFF's TREC (headerless csv, quoted questions) and SST-5 (headerless tsv, PTB quotes): row and label
    counts as ../shared/data/SOURCES.md lists them."""
    from collections import Counter

    p = params(data_dir, files={"train": file, "test": file}, column_names=column_names,
               template="{{ " + column_names[1] + " }}", verbalizer={str(k): f" {k}" for k in labels},
               label_field="label")
    ds = open_split(p, "train")
    assert ds.column_names == column_names and len(ds) == rows
    assert dict(Counter(ds["label"])) == {str(k): n for k, n in labels.items()}
    CustomTask.check(p.model_dump(mode="json"))
