"""Training-free baselines (zero-shot, ICL, linear probing) through the one runner; non-differentiable objectives."""

from __future__ import annotations

import json

import numpy as np
import torch
from conftest import TINY_LLAMA
from typer.testing import CliRunner

from zobench import registry
from zobench.cli import app
from zobench.training_free import ICL, LinearProbe, probe_features

CPU = torch.device("cpu")
TASK = {"name": "synthetic-sentiment", "train_size": 32, "dev_size": 8, "test_size": 16}


def run_suite(write_suite, tmp_path, methods, task=None, steps=4):
    path = write_suite({"name": "free", "defaults": {"steps": steps, "batch_size": 8, "device": "cpu"},
                        "grid": {"models": [{"name": "tiny", "config": TINY_LLAMA}], "tasks": [task or TASK],
                                 "methods": methods}})
    result = CliRunner().invoke(app, ["run", str(path), "--results", str(tmp_path / "r"), "--no-report"])
    summaries = {}
    for f in (tmp_path / "r" / "free").rglob("summary.json"):
        s = json.loads(f.read_text())
        summaries[s["spec"]["method"]["label"]] = s
    return result, summaries


def test_training_free_methods_take_no_steps(write_suite, tmp_path):
    result, runs = run_suite(write_suite, tmp_path, ["zero-shot", {"name": "icl", "k": 4},
                                                     {"name": "linear-probe", "cv_folds": 0}])
    assert result.exit_code == 0, result.output
    for name in ("zero-shot", "icl", "linear-probe"):
        s = runs[name]
        assert s["status"] == "done", s.get("error")
        assert s["steps"] == 0 and s["backward_passes"] == 0 and 0 <= s["test_metric"] <= 1
    assert runs["icl"]["info"]["icl_demonstrations"] == 4
    assert runs["linear-probe"]["info"]["probe_classes"] >= 2  # byte tokens of ' bad' and ' good'


def workload(seed=0, tokenizer="bytes"):
    bundle = registry.models.get("tiny").load({"config": TINY_LLAMA, "tokenizer": tokenizer}, CPU, seed)
    return registry.tasks.get("synthetic-sentiment").build({k: v for k, v in TASK.items() if k != "name"},
                                                           bundle, CPU, seed)


def test_icl_prepends_demonstrations_from_train():
    w = workload()
    method = ICL(w.trainable(), ICL.Params(k=3, demo_seed=5), 0)
    method.prepare(w)
    shown = w.eval_examples("test")
    demos = w.demonstrations.split("\n\n")[:3]
    train_answers = {e.answer_text() for e in w.data["train"]}
    assert all(d in train_answers for d in demos)
    assert all(e.prompt == w.demonstrations + raw.prompt for e, raw in zip(shown, w.data["test"], strict=True))
    assert w.eval_examples("test")[0].options == w.data["test"][0].options


def test_linear_probe_writes_the_fitted_classifier_into_the_head():
    w = workload(tokenizer="wordpiece")  # ' bad' and ' good' are one token each: the probe decides alone
    embed_before = w.module.get_input_embeddings().weight.detach().clone()
    method = LinearProbe(w.trainable(), LinearProbe.Params(cv_folds=0, C=10.0), 0)
    method.prepare(w)
    head = w.module.get_output_embeddings()
    assert head.weight is not w.module.get_input_embeddings().weight  # untied before writing
    assert torch.equal(w.module.get_input_embeddings().weight, embed_before)
    features, targets = probe_features(w, head, 16)
    # the head's logits for the two option tokens now are the probe's decision: its accuracy on train is the
    # option scoring's accuracy on train (single-token options)
    from sklearn.linear_model import LogisticRegression

    reg = LogisticRegression(C=10.0, max_iter=1000, fit_intercept=False, random_state=0).fit(features, targets)
    w.data["dev"] = w.data["train"]
    assert abs(w.evaluate("dev")["accuracy"] - reg.score(features, targets)) < 1e-9
    assert w.info["probe_train_accuracy"] == reg.score(features, targets) > 0.6
    assert set(np.unique(targets)) == {w.tokenizer(" bad", add_special_tokens=False)["input_ids"][0],
                                       w.tokenizer(" good", add_special_tokens=False)["input_ids"][0]}


def test_accuracy_objective_trains_zo_and_refuses_first_order_at_planning(write_suite, tmp_path):
    task = {**TASK, "objective": "accuracy"}
    result, runs = run_suite(write_suite, tmp_path, [{"name": "zo-sgd", "lr": 1e-3}], task=task)
    zo = runs["zo-sgd"]
    assert zo["status"] == "done", zo.get("error")
    assert -1 <= zo["final_train_loss"] <= 0 and zo["info"]["objective"] == "accuracy"
    result, runs = run_suite(write_suite, tmp_path / "fo", [{"name": "zo-sgd", "lr": 1e-3}, {"name": "fo-adam"}],
                             task=task)
    assert result.exit_code == 2 and not runs  # refused before anything ran, with the fix in the message
    assert "objective is 'accuracy'" in result.output and "exclude" in result.output
