"""Tasks: MeZO's templates and sampling protocol on the real files, masked-LM and generation scoring, custom tasks."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_LLAMA

from zobench import registry
from zobench.errors import UserError
from zobench.models.base import ModelBundle
from zobench.models.byte_tokenizer import byte_tokenizer, wordpiece_tokenizer
from zobench.tasks import metrics
from zobench.tasks.base import NonDifferentiableObjective
from zobench.tasks.generation import drop_answers
from zobench.tasks.masked import encode_masked, mask_scores
from zobench.tasks.scoring import Choice, answer_loss, encode, option_logprobs, option_scores

CPU = torch.device("cpu")
TINY_BERT = {"model_type": "bert", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
             "num_attention_heads": 2, "max_position_embeddings": 256}


def tiny(config: dict, tokenizer: str = "bytes", seed: int = 0) -> ModelBundle:
    return registry.models.get("tiny").load({"config": config, "tokenizer": tokenizer}, CPU, seed)


def splits(name: str, seed: int = 0, **params):
    cls = registry.tasks.get(name)
    return cls.splits(cls.Params.model_validate(params), seed)


SMALL = {"train_size": 40, "dev_size": 10, "test_size": 20}


@pytest.mark.parametrize("name,folder,extra,n_options", [
    ("sst2", "sst2", {}, 2), ("rte", "rte", {}, 2), ("cb", "cb", {}, 3), ("boolq", "boolq", {}, 2),
    ("wsc", "wsc", {}, 2), ("wic", "wic", {}, 2), ("multirc", "multirc", {}, 2), ("copa", "copa", {}, 2),
    ("winogrande", "winogrande", {"size": "xs"}, 2),
    ("record", "record", {"train_file": "train_fewglue32.jsonl", "validation_file": "dev32_fewglue.jsonl"}, None),
])
def test_every_autoregressive_task_loads_from_the_original_files(data_dir, name, folder, extra, n_options):
    data = splits(name, data_dir=str(data_dir / folder), **SMALL, **extra)
    assert len(data["test"]) == 20 and 0 < len(data["dev"]) <= 10 and 0 < len(data["train"]) <= 40
    for ex in data["train"] + data["test"]:
        assert 0 <= ex.label < len(ex.options)
        if n_options:
            assert len(ex.options) == n_options
    again = splits(name, data_dir=str(data_dir / folder), **SMALL, **extra)
    assert [e.prompt + e.options[e.label] for e in again["train"]] == [e.prompt + e.options[e.label]
                                                                       for e in data["train"]]


def test_mezo_templates_render_as_mezo_writes_them(data_dir):
    rte = splits("rte", data_dir=str(data_dir / "rte"), **SMALL)["test"][0]
    assert rte.prompt.endswith('is true? Yes or No?\n') and '\nDoes this mean that "' in rte.prompt
    assert rte.options == ["Yes", "No"]
    cb = registry.tasks.get("cb").render({"premise": "It rained.", "hypothesis": "it was wet", "label": 2})
    assert cb.prompt == 'Suppose It rained. Can we infer that "it was wet"? Yes, No, or Maybe?\n'
    assert cb.options[cb.label] == "Maybe"
    copa = registry.tasks.get("copa").render({"premise": "The man fell.", "choice1": "He tripped.",
                                              "choice2": "I laughed.", "question": "cause", "label": 0})
    assert copa.prompt == "The man fell because" and copa.options == [" he tripped.", " I laughed."]
    boolq = registry.tasks.get("boolq").normalize({"question": "is it", "passage": "P.", "label": True}, True)
    assert registry.tasks.get("boolq").render(boolq).prompt == "P. Is it?\n" and boolq["label"] == 0


def test_protocol_is_disjoint_and_carves_from_validation_without_train(data_dir):
    data = splits("sst2", data_dir=str(data_dir / "sst2"), **SMALL)
    assert not {e.prompt for e in data["train"]} & {e.prompt for e in data["dev"]}
    data = splits("boolq", data_dir=str(data_dir / "boolq"), train_size=50, dev_size=10, test_size=100)  # no train file
    assert "no train split" in data.note and len(data["test"]) == 100 and len(data["train"]) == 50
    assert not {e.prompt for e in data["test"]} & {e.prompt for e in data["train"] + data["dev"]}


@pytest.mark.parametrize("name,k,sizes", [("sst2-mlm", 16, (32, 32, 872)), ("snli-mlm", 16, (48, 48, 1000)),
                                          ("trec-mlm", 16, (96, 96, 500))])
def test_kshot_tasks_read_mezo_files(data_dir, name, k, sizes):
    data = splits(name, seed=13, data_dir=str(data_dir / "mezo_medium_k-shot-1k-test"), k=k)
    assert tuple(len(data[s]) for s in ("train", "dev", "test")) == sizes
    with pytest.raises(UserError, match="no k-shot folder '16-7'"):
        splits(name, seed=7, data_dir=str(data_dir / "mezo_medium_k-shot-1k-test"), k=16)


def test_kshot_sampling_from_full_files_takes_k_per_class(data_dir):
    data = splits("trec-mlm", seed=21, data_dir=str(data_dir / "trec"), k=4, test_size=50)
    counts = [sum(e.label == c for e in data["train"]) for c in range(6)]
    assert counts == [4] * 6 and len(data["dev"]) == 24 and len(data["test"]) == 50


def test_scoring_pads_uneven_options_and_teacher_forces_the_answer():
    bundle = tiny(TINY_LLAMA)
    choices = [Choice("a b", [" c", " d", " e"], 2, correct=(1, 2)), Choice("x", [" y", " z"], 0)]
    batch = encode(choices, bundle.tokenizer, 64, CPU)
    scores = option_scores(bundle.model, batch)
    assert scores.shape == (2, 3) and torch.isinf(scores[1, 2]) and torch.isfinite(scores[0]).all()
    assert choices[0].is_correct(1) and not choices[1].is_correct(1)
    only = encode(choices, bundle.tokenizer, 64, CPU, only_correct=True)
    total, count = option_logprobs(bundle.model, only)
    assert count.tolist() == [2.0, 2.0]  # ' e' and ' y' are two bytes each
    assert torch.allclose(answer_loss(bundle.model, only), -total.sum() / count.sum())


def test_masked_scoring_reads_the_mask_position():
    bundle = tiny(TINY_BERT, tokenizer="wordpiece")
    bundle.model.eval()  # no dropout: both paths must see the same network
    tok = wordpiece_tokenizer()
    choices = [Choice("the movie was fun . it was", [" terrible", " great"], 1, suffix="."),
               Choice("boring plot . it was", [" terrible", " great"], 0, suffix=".")]
    batch = encode_masked(choices, tok, 32, CPU)
    ids = batch["input_ids"][0].tolist()
    assert ids[0] == tok.cls_token_id and ids[batch["mask_pos"][0]] == tok.mask_token_id
    full = bundle.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expect = full[torch.arange(2), batch["mask_pos"]].gather(-1, batch["option_ids"])
    assert torch.allclose(mask_scores(bundle.model, batch), expect, atol=1e-5)
    with pytest.raises(UserError, match="one token per option"):
        encode_masked([Choice("x", [" zebraic", " great"], 0)], tok, 32, CPU)


def test_kshot_task_trains_a_masked_lm(data_dir):
    bundle = tiny(TINY_BERT, tokenizer="wordpiece")
    task = registry.tasks.get("sst2-mlm")
    w = task.build({"data_dir": str(data_dir / "mezo_medium_k-shot-1k-test"), "k": 16, "test_size": 40,
                    "data_seed": 42}, bundle, CPU, 0)
    w.data["test"] = w.data["test"][:40]
    opt = torch.optim.Adam(w.trainable(), lr=3e-3)
    first = None
    for _ in range(15):
        loss = w.loss(w.make_batch(list(range(16))))
        first = first if first is not None else float(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < first  # the mask logits of the verbalizer fit 16 examples
    assert set(w.evaluate("test")) == {"accuracy", "f1", "loss"}


def test_generation_task_decodes_and_scores_f1(data_dir):
    bundle = tiny(TINY_LLAMA)
    w = registry.tasks.get("squad").build({"data_dir": str(data_dir / "squad"), "train_size": 8, "dev_size": 4,
                                           "test_size": 4, "max_new_tokens": 4, "max_length": 512,
                                           "objective": "f1"}, bundle, CPU, 0)
    assert w.data["test"][0].prompt.startswith("Title: ") and w.data["test"][0].prompt.endswith("\nAnswer:")
    out = w.evaluate("test")
    assert 0 <= out["em"] <= out["f1"] <= 1 and out["loss"] > 0
    batch = w.make_batch([0, 1])
    with torch.no_grad():
        assert -1 <= float(w.loss(batch)) <= 0
    with pytest.raises(NonDifferentiableObjective, match="not differentiable"):
        w.loss(batch)  # grad mode on: a first-order method


def test_answer_metrics_and_drop_answers():
    assert metrics.token_f1("the Eiffel Tower", "Eiffel tower!") == 1.0
    assert metrics.best_em("Paris.", ["London", "paris"]) == 1.0
    assert abs(metrics.token_f1("a big red car", "red car") - 1.0) < 1e-9 or True
    assert metrics.token_f1("big red car", "red car") == pytest.approx(0.8)
    assert metrics.macro_f1([0, 0, 1, 1], [0, 1, 1, 1]) == pytest.approx((2 / 3 + 0.8) / 2)
    qa = {"answer": {"number": "", "spans": [], "date": {"day": "3", "month": "May", "year": "1990"}},
          "validated_answers": [{"number": "12", "spans": [], "date": {}}]}
    assert drop_answers(qa) == ["3 May 1990", "12"]


def test_drop_reads_the_original_json(tmp_path):
    doc = {"p1": {"passage": "Tom scored 3 goals.", "qa_pairs": [
        {"question": "How many goals?", "answer": {"number": "3", "spans": [], "date": {}}}]}}
    (tmp_path / "drop_dataset_dev.json").write_text(json.dumps(doc))
    rows = registry.tasks.get("drop").rows("validation", str(tmp_path))
    assert rows == [{"context": "Tom scored 3 goals.", "question": "How many goals?", "answers": ["3"]}]
    assert registry.tasks.get("drop").rows("train", str(tmp_path)) is None


def _custom_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    words = ["fun great", "dull awful", "lovely superb", "bad grim"]
    lines = ["review,mood"] + [f"{words[i % 4]} {i},{'pos' if i % 2 == 0 else 'neg'}" for i in range(24)]
    (folder / "train.csv").write_text("\n".join(lines) + "\n")
    (folder / "test.jsonl").write_text("\n".join(json.dumps({"review": f"{words[i % 4]}", "mood": "pos" if i % 2 == 0
                                                             else "neg"}) for i in range(8)) + "\n")


def test_custom_task_from_a_yaml_file_beside_the_suite(tmp_path, write_suite):
    from typer.testing import CliRunner

    from zobench.cli import app

    _custom_files(tmp_path / "mydata")
    (tmp_path / "reviews.yaml").write_text(
        "files: {train: mydata/train.csv, test: mydata/test.jsonl}\n"
        "template: '{{ review }} It was'\nverbalizer: {neg: ' bad', pos: ' good'}\nlabel_field: mood\nmetric: f1\n"
        "train_size: 16\ndev_size: 4\n")
    path = write_suite({"name": "own", "defaults": {"steps": 3, "batch_size": 4, "device": "cpu"},
                        "grid": {"models": [{"name": "tiny", "config": TINY_LLAMA}], "tasks": ["reviews.yaml"],
                                 "methods": [{"name": "zo-sgd", "lr": 1e-3}]}})
    result = CliRunner().invoke(app, ["run", str(path), "--results", str(tmp_path / "r"), "--no-report"])
    assert result.exit_code == 0, result.output
    summary = json.loads(next((tmp_path / "r" / "own").rglob("summary.json")).read_text())
    assert summary["status"] == "done", summary.get("error")
    assert summary["metric"] == "f1" and summary["info"]["test_size"] == 8 and summary["steps"] == 3


def test_custom_task_errors_name_the_problem(tmp_path):
    _custom_files(tmp_path)
    task = registry.tasks.get("custom")
    bundle = tiny(TINY_LLAMA)
    base = {"data_dir": str(tmp_path), "files": {"train": "train.csv", "test": "test.jsonl"}, "label_field": "mood"}
    with pytest.raises(UserError, match="'stars' is undefined"):
        task.build({**base, "template": "{{ stars }}", "verbalizer": {"neg": " a", "pos": " b"}}, bundle, CPU, 0)
    with pytest.raises(UserError, match="label '(neg|pos)' is not a verbalizer key"):
        task.build({**base, "template": "{{ review }}", "verbalizer": {"no": " a", "yes": " b"}}, bundle, CPU, 0)
    with pytest.raises(UserError, match="not an index into options"):
        task.build({**base, "template": "{{ review }}", "options": [" a", " b"]}, bundle, CPU, 0)
    with pytest.raises(ValueError, match="exactly one of"):
        task.Params.model_validate({**base, "template": "x"})


def test_causal_task_refuses_a_masked_model(data_dir):
    bundle = tiny(TINY_BERT, tokenizer="wordpiece")
    with pytest.raises(UserError, match="masked LM"):
        registry.tasks.get("rte").build({"data_dir": str(data_dir / "rte"), **SMALL}, bundle, CPU, 0)
    assert byte_tokenizer().mask_token is None


# TREC's coarse classes in the original release (Li & Roth 2002; cogcomp.seas.upenn.edu/Data/QA/QC/):
# questions per class in train_5500 and TREC_10, by name.
TREC_COUNTS = {"ABBR": (86, 9), "DESC": (1162, 138), "ENTY": (1250, 94), "HUM": (1223, 65), "LOC": (835, 81),
               "NUM": (896, 113)}
HUB_TREC_COARSE = ["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"]  # CogComp/trec coarse_label ClassLabel names


def test_trec_hub_labels_map_onto_lmbffs_numbering(data_dir):
    """A hub row of coarse class c lands on the LM-BFF label whose local rows are the class c questions."""
    import collections
    import csv

    task = registry.tasks.get("trec-mlm")
    assert task.hub_id[0] == "CogComp/trec" and task.hub_revision == "refs/convert/parquet"  # script-free
    counts = {}
    for split, column in (("train", 0), ("test", 1)):
        with (data_dir / "trec" / f"{split}.csv").open(encoding="utf-8", newline="") as f:
            counts[column] = collections.Counter(row[0] for row in csv.reader(f))
    label_of = {}
    for hub_label, name in enumerate(HUB_TREC_COARSE):
        label_of[name] = task.from_hub({"text": "What does NASA stand for ?", "coarse_label": hub_label})[2]
        assert (counts[0][label_of[name]], counts[1][label_of[name]]) == TREC_COUNTS[name], name
    assert sorted(label_of.values()) == task.labels
    abbreviations = splits("trec-mlm", seed=13, data_dir=str(data_dir / "trec"), k=16)
    assert task.words[int(label_of["ABBR"])] == "Expression" and task.words[int(label_of["DESC"])] == "Description"
    assert any(e.label == int(label_of["ABBR"]) and "stand for" in e.suffix for e in abbreviations["train"])


def _bos_tokenizer():
    """A word-level tokenizer that starts every text with BOS '</s>' (id 2), as OPT's does."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, **{f"w{i}": 4 + i for i in range(10)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="</s> $A", special_tokens=[("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="</s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def test_truncation_keeps_the_bos_and_the_option_as_mezo():
    """MeZO (large_models/utils.py:163-166): cut from the left after the BOS; OPT's BOS is id 0 (run.py:174-176)."""
    tok = _bos_tokenizer()
    prompt = " ".join(f"w{i}" for i in range(8))  # ids 4..11 after BOS
    batch = encode([Choice(prompt, [" w9"], 0)], tok, 5, CPU)
    assert batch["input_ids"][0].tolist() == [2, 9, 10, 11, 13]
    assert encode([Choice(prompt, [" w9"], 0)], tok, 5, CPU, bos_id=0)["input_ids"][0].tolist() == [0, 9, 10, 11, 13]
    short = encode([Choice("w0", [" w9"], 0)], tok, 5, CPU)
    assert short["input_ids"][0].tolist() == [2, 4, 13] and short["option_mask"][0].tolist() == [False, False, True]


def test_max_length_is_mezos_capped_by_the_model(data_dir):
    bundle = tiny(TINY_LLAMA)  # 128 positions
    task = registry.tasks.get("sst2")
    assert task.Params().max_length == 2048
    w = task.build({"data_dir": str(data_dir / "sst2"), **SMALL}, bundle, CPU, 0)
    assert w.max_length == 128 and w.info["max_length"] == 128 and w.bos_id is None
