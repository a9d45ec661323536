"""`synthetic-sentiment`: a sentiment task generated in code, so a demo needs no download.

Sentences mix positive, negative and neutral words; the label says whether positive words
outnumber negative ones. Scored through the same prompt-and-options path as SST-2.
"""

from __future__ import annotations

import random
from typing import Any

from pydantic import PositiveInt

from zobench.registry import tasks
from zobench.tasks.base import ChoiceParams, ChoiceTask, Splits
from zobench.tasks.scoring import Choice

POSITIVE = ["good", "great", "fine", "lovely", "superb", "warm", "bright", "fun", "sweet", "happy"]
NEGATIVE = ["bad", "awful", "dull", "poor", "grim", "cold", "weak", "sad", "ugly", "boring"]
NEUTRAL = ["the", "film", "plot", "cast", "was", "and", "very", "quite", "a", "story", "music", "ending"]


class SyntheticParams(ChoiceParams):
    train_size: PositiveInt = 1000
    dev_size: PositiveInt = 200
    test_size: PositiveInt = 500
    max_length: PositiveInt = 96
    data_seed: int = 1234  # the data set is fixed; run seeds only change sampling and initialisation


@tasks.register("synthetic-sentiment")
class SyntheticSentiment(ChoiceTask):
    """Generated two-class sentiment; '<sentence> It was' + {' bad', ' good'}."""

    Params = SyntheticParams
    options = [" bad", " good"]

    @classmethod
    def generate(cls, n: int, rng: random.Random) -> list[dict[str, Any]]:
        rows = []
        while len(rows) < n:
            pos, neg = rng.randint(0, 3), rng.randint(0, 3)
            if pos == neg:
                continue
            words = rng.choices(POSITIVE, k=pos) + rng.choices(NEGATIVE, k=neg) + rng.choices(NEUTRAL, k=4)
            rng.shuffle(words)
            rows.append({"sentence": " ".join(words), "label": int(pos > neg)})
        return rows

    @classmethod
    def splits(cls, p: ChoiceParams, seed: int) -> Splits:
        assert isinstance(p, SyntheticParams)
        rng = random.Random(p.data_seed)
        pool = cls.generate(p.train_size + p.dev_size + p.test_size, rng)
        random.Random(seed).shuffle(train_dev := pool[: p.train_size + p.dev_size])
        parts = {"train": train_dev[: p.train_size], "dev": train_dev[p.train_size:],
                 "test": pool[p.train_size + p.dev_size:]}
        return Splits({k: [cls.render(r) for r in v] for k, v in parts.items()})

    @classmethod
    def render(cls, row: dict[str, Any]) -> Choice:
        return Choice(prompt=f"{row['sentence']} It was", options=cls.options, label=row["label"])


@tasks.register("synthetic-sentiment-mlm")
class SyntheticSentimentMasked(SyntheticSentiment):
    """The generated sentiment task as an LM-BFF prompt for a masked LM: '<sentence> It was <mask>.' → {bad, good}
    (the quickstart's MiniLM; same rows as synthetic-sentiment)."""

    masked = True

    @classmethod
    def render(cls, row: dict[str, Any]) -> Choice:
        return Choice(prompt=f"{row['sentence']} It was", options=cls.options, label=row["label"], suffix=".")
