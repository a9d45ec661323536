"""Which examples a run sees: the same as MeZO's and LM-BFF's code given the same rows in the same order.

The references here are independent transcriptions of the authors' code (princeton-nlp/MeZO large_models/
tasks.py:91-100 and run.py:468-488; LM-BFF tools/generate_k_shot_data.py:103-177), written against numpy's
global generator the way the originals use it, and compared example by example on the real files.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from zobench import registry
from zobench.cli import app
from zobench.tasks.sampling import mezo_icl_demonstrations


def mezo_reference(n_train: int, n_valid: int, num_train: int, num_dev: int, num_eval: int,
                   seed: int) -> dict[str, list[int]]:
    """MeZO's run.py with --train_set_seed: sample_subset(train, seed, num_train + num_dev), dev = its tail;
    eval = sample_subset(valid, seed, num_eval). sample_subset seeds numpy's global generator temporarily."""
    def sample_subset(n: int, set_seed: int, num: int) -> list[int]:
        state = np.random.get_state()
        np.random.seed(set_seed)
        index = np.random.permutation(n).tolist()[:num]
        np.random.set_state(state)
        return index

    train_samples = sample_subset(n_train, seed, num_train + num_dev)
    dev_samples = train_samples[-num_dev:]
    train_samples = train_samples[:-num_dev]
    return {"train": train_samples, "dev": dev_samples, "test": sample_subset(n_valid, seed, num_eval)}


def task_ids(name: str, seed: int, **params) -> tuple[dict[str, list], dict[str, list[str]]]:
    cls = registry.tasks.get(name)
    data = cls.splits(cls.Params.model_validate(params), seed)
    return data.data, data.ids


def count_lines(path, skip_header: bool) -> int:
    with path.open(encoding="utf-8") as f:
        return sum(1 for line in f if line.strip()) - int(skip_header)


@pytest.mark.parametrize("name,folder,train_file,valid_file,sizes,seed", [
    ("sst2", "sst2", "train.tsv", "dev.tsv", (1000, 500, 1000), 0),
    ("sst2", "sst2", "train.tsv", "dev.tsv", (1000, 500, 1000), 42),
    ("rte", "rte", "train.jsonl", "val.jsonl", (1000, 500, 1000), 1),
    ("cb", "cb", "train.jsonl", "val.jsonl", (1000, 100, 1000), 0),  # mezo.sh: CB DEV=100
    ("copa", "copa", "train.jsonl", "val.jsonl", (1000, 100, 1000), 0),  # mezo.sh: Copa DEV=100
    ("wsc", "wsc", "train.jsonl", "val.jsonl", (1000, 500, 1000), 0),  # 554 rows: 54 train / 500 dev
])
def test_mezo_sampling_is_mezos_example_by_example(data_dir, name, folder, train_file, valid_file, sizes, seed):
    n_train = count_lines(data_dir / folder / train_file, train_file.endswith(".tsv"))
    n_valid = count_lines(data_dir / folder / valid_file, valid_file.endswith(".tsv"))
    default = registry.tasks.get(name).Params()
    assert (default.train_size, default.dev_size, default.test_size) == sizes  # MeZO's script sizes
    ref = mezo_reference(n_train, n_valid, *sizes, seed)
    data, ids = task_ids(name, seed, data_dir=str(data_dir / folder))
    assert ids["train"] == [f"train:{i}" for i in ref["train"]]
    assert ids["dev"] == [f"train:{i}" for i in ref["dev"]]
    assert ids["test"] == [f"validation:{i}" for i in ref["test"]]
    assert [len(data[s]) for s in ("train", "dev", "test")] == [len(ref[s]) for s in ("train", "dev", "test")]
    if name == "wsc":
        assert (len(data["train"]), len(data["dev"])) == (54, 500)


def test_mezo_sampling_renders_the_rows_it_names(data_dir):
    """The ids point at the rows whose text was rendered (SST-2: MeZO's '<sentence> It was')."""
    with (data_dir / "sst2" / "train.tsv").open(encoding="utf-8", newline="") as f:
        train = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    with (data_dir / "sst2" / "dev.tsv").open(encoding="utf-8", newline="") as f:
        valid = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    ref = mezo_reference(len(train), len(valid), 1000, 500, 1000, 0)
    data, _ = task_ids("sst2", 0, data_dir=str(data_dir / "sst2"))
    for split, rows in (("train", train), ("dev", train), ("test", valid)):
        expected = [(rows[i]["sentence"].strip() + " It was", int(rows[i]["label"])) for i in ref[split]]
        assert [(e.prompt, e.label) for e in data[split]] == expected


def test_lmbff_kshot_sampling_reproduces_mezos_kshot_files(data_dir):
    """Sampled from the full original files, the k-shot sets equal MeZO's k-shot-1k-test files, row by row."""
    files = data_dir / "mezo_medium_k-shot-1k-test"
    for name, full, k, seed in (("sst2-mlm", "sst2", 16, 13), ("sst2-mlm", "sst2", 512, 42),
                                ("trec-mlm", "trec", 16, 87), ("trec-mlm", "trec", 512, 100)):
        sampled, _ = task_ids(name, seed, data_dir=str(data_dir / full), k=k)
        stored, _ = task_ids(name, seed, data_dir=str(files), k=k)
        for split in ("train", "dev", "test"):
            got = [(e.prompt, e.suffix, e.label) for e in sampled[split]]
            assert got == [(e.prompt, e.suffix, e.label) for e in stored[split]], (name, k, seed, split)


def test_mezo_icl_demonstrations_follow_mezos_per_example_seeds():
    """icl.sh without --train_set_seed: example i's demonstrations come from seed randint(0, 10000)[i] under seed 0."""
    state = np.random.get_state()
    np.random.seed(0)
    seeds = np.random.randint(0, 10000, 5)
    np.random.set_state(state)
    expected = []
    for s in seeds:
        np.random.seed(int(s))
        expected.append(np.random.permutation(67349).tolist()[:32])
    assert mezo_icl_demonstrations(67349, 32, 5) == expected


def test_data_verb_prints_the_examples_a_run_sees(data_dir):
    args = ["data", "sst2", "--seed", "0", "--split", "dev", "--data-dir", str(data_dir / "sst2"),
            "-p", "train_size=20", "-p", "dev_size=5"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    ref = mezo_reference(67349, 872, 20, 5, 1000, 0)
    assert [r["id"] for r in rows] == [f"train:{i}" for i in ref["dev"]]
    assert all(r["text"] == r["prompt"] + r["options"][r["label"]] for r in rows)
    assert [r["position"] for r in rows] == list(range(5))
    bad = CliRunner().invoke(app, ["data", "sst2", "--split", "dev", "-p", "dev_size=0"])
    assert bad.exit_code == 2 and "dev_size" in bad.output


def test_a_run_records_its_example_ids(data_dir, tmp_path, write_suite):
    from conftest import TINY_LLAMA

    task = {"name": "sst2", "data_dir": str(data_dir / "sst2"), "train_size": 8, "dev_size": 4, "test_size": 6,
            "max_length": 32}
    path = write_suite({"name": "ids", "defaults": {"steps": 1, "batch_size": 2, "device": "cpu"},
                        "grid": {"models": [{"name": "tiny", "config": TINY_LLAMA}], "tasks": [task], "seeds": [3],
                                 "methods": [{"name": "zo-sgd", "lr": 1e-3}]}})
    result = CliRunner().invoke(app, ["run", str(path), "--results", str(tmp_path / "r"), "--no-report"])
    assert result.exit_code == 0, result.output
    summary_path = next((tmp_path / "r" / "ids").rglob("summary.json"))
    summary = json.loads(summary_path.read_text())
    assert summary["status"] == "done", summary.get("error")
    recorded = json.loads((summary_path.parent / summary["examples_file"]).read_text())
    ref = mezo_reference(67349, 872, 8, 4, 6, 3)
    assert recorded["train"] == [f"train:{i}" for i in ref["train"]]
    assert recorded["test"] == [f"validation:{i}" for i in ref["test"]]


def test_icl_gives_each_evaluated_example_mezos_demonstrations(data_dir):
    """MeZO's ICL prompt for test example i: its own k demonstrations from the whole train split, each
    '<sentence> It was <word>', joined by a blank line, then the example's prompt (utils.py:124-141)."""
    from conftest import TINY_LLAMA

    from zobench.training_free import ICL

    bundle = registry.models.get("tiny").load({"config": TINY_LLAMA}, torch_cpu(), 0)
    w = registry.tasks.get("sst2").build({"data_dir": str(data_dir / "sst2"), "train_size": 8, "dev_size": 4,
                                          "test_size": 5}, bundle, torch_cpu(), 0)
    ICL(w.trainable(), ICL.Params(k=3), 0).prepare(w)
    with (data_dir / "sst2" / "train.tsv").open(encoding="utf-8", newline="") as f:
        train = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    state = np.random.get_state()
    np.random.seed(0)
    seeds = np.random.randint(0, 10000, 5)
    np.random.set_state(state)
    shown = w.eval_examples("test")
    for i, s in enumerate(seeds):
        np.random.seed(int(s))
        demos = [train[j] for j in np.random.permutation(len(train)).tolist()[:3]]
        text = "\n\n".join(f"{d['sentence'].strip()} It was {['terrible', 'great'][int(d['label'])]}" for d in demos)
        assert shown[i].prompt == text + "\n\n" + w.data["test"][i].prompt
    assert w.info["icl_draw"].startswith("per-example") and w.info["icl_demonstrations"] == 3


def torch_cpu():
    import torch

    return torch.device("cpu")
