"""Tasks. Importing this package registers every task.

MeZO's autoregressive setting: sst2, rte, cb, boolq, wsc, wic, multirc (classification), copa, record,
winogrande (multiple choice), squad, drop (generation). MeZO's masked-LM setting (LM-BFF prompts, k-shot):
sst2-mlm, sst5-mlm, snli-mlm, mnli-mlm, rte-mlm, trec-mlm. A user's own: custom. Demos: synthetic-sentiment.
"""

from zobench.tasks import custom, generation, lmbff, multiple_choice, sst2, superglue, synthetic  # noqa: F401
from zobench.tasks.base import ChoiceTask, PromptWorkload, Task

__all__ = ["ChoiceTask", "PromptWorkload", "Task"]
