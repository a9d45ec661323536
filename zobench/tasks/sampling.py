"""Which examples a run sees: MeZO's and LM-BFF's sampling, transcribed so that the same source rows in the
same order give the same examples, in the same order, as the authors' code.

MeZO, large models (princeton-nlp/MeZO @ 552cb1b, large_models/):
- tasks.py:91-100 `sample_subset`: under `temp_seed(seed)` (utils.py:332-338, a temporary global numpy seed)
  take `np.random.permutation(len(split))[:num]`.
- tasks.py:80-81: the train set is `sample_subset("train", seed, num_train + num_dev)`; when the split is
  shorter, the permutation is simply cut short (tasks.py:82-83 only warns).
- run.py:479-480: the test set is `sample_subset("valid", seed, num_eval)` with the same seed.
- run.py:485-488: dev is the *last* num_dev of the sampled train rows, train the rest (so WSC, 554 rows with
  1000 + 500 asked, trains on 54 and develops on 500).
- Sizes (mezo.sh, finetune.sh): TRAIN 1000, DEV 500, EVAL 1000; CB and Copa DEV 100.
- ICL without a train-set seed (icl.sh; run.py:514-521, tasks.py:67-72): test is `sample_subset("valid", 0,
  num_eval)`; evaluated example i gets its own demonstrations, `sample_subset("train", s_i, num_train)` with
  `s_i = np.random.randint(0, 10000, num_eval)[i]` drawn under `temp_seed(0)`.

LM-BFF k-shot (princeton-nlp/LM-BFF @ c282f52, tools/generate_k_shot_data.py; MeZO's copy in
medium_models/tools/generate_k_shot_data.py adds the `k-shot-1k-test` mode):
- 103-114: `np.random.seed(seed)`, then `np.random.shuffle` of the train rows (header removed);
- 138-144, 150-177: rows grouped by label in order of first appearance in the shuffled list; train is each
  group's first k, dev its next k, written group after group;
- MeZO 129-134, 143-145: a test split over 1000 rows is cut to 1000: GLUE files by `np.random.seed(42)` and
  a shuffle, csv files by `DataFrame.sample(n=1000, random_state=42)` (the same test set for every seed).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np


@contextmanager
def temp_seed(seed: int) -> Iterator[None]:
    """Seed numpy's global generator for a block and restore its state after it (MeZO's utils.temp_seed)."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def mezo_subset(n_rows: int, seed: int, num: int) -> list[int]:
    """Row indices MeZO's `sample_subset` picks from a split of `n_rows` rows, in its order."""
    with temp_seed(seed):
        return np.random.permutation(n_rows).tolist()[:num]


def mezo_indices(n_train: int, n_valid: int, num_train: int, num_dev: int, num_eval: int,
                 seed: int) -> dict[str, list[int]]:
    """Indices of MeZO's train and dev (into the train split) and test (into the validation split)."""
    sampled = mezo_subset(n_train, seed, num_train + num_dev)
    return {"train": sampled[:-num_dev] if num_dev else sampled, "dev": sampled[-num_dev:] if num_dev else [],
            "test": mezo_subset(n_valid, seed, num_eval)}


def mezo_icl_demonstrations(n_train: int, num_demos: int, num_eval: int) -> list[list[int]]:
    """Per evaluated example, the train-split indices of its demonstrations (MeZO's ICL runs)."""
    with temp_seed(0):
        seeds = np.random.randint(0, 10000, num_eval)
    return [mezo_subset(n_train, int(s), num_demos) for s in seeds]


def lmbff_kshot(labels: Sequence[Hashable], k: int, seed: int) -> dict[str, list[int]]:
    """Indices of LM-BFF's k-shot train and dev from the full train split's labels (in file order)."""
    order = list(range(len(labels)))
    with temp_seed(seed):  # LM-BFF seeds the global generator itself, right before this shuffle
        np.random.shuffle(order)
    groups: dict[Hashable, list[int]] = {}
    for i in order:
        groups.setdefault(labels[i], []).append(i)
    return {"train": [i for g in groups.values() for i in g[:k]],
            "dev": [i for g in groups.values() for i in g[k:2 * k]]}


def lmbff_test_1k(n_rows: int, csv_style: bool, limit: int = 1000) -> list[int]:
    """Indices of MeZO's `k-shot-1k-test` test split: all rows, or `limit` of them drawn with seed 42."""
    if n_rows <= limit:
        return list(range(n_rows))
    if csv_style:
        import pandas as pd

        return pd.RangeIndex(n_rows).to_series().sample(n=limit, random_state=42).tolist()
    order = list(range(n_rows))
    with temp_seed(42):
        np.random.shuffle(order)
    return order[:limit]
