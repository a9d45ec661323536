"""Quantized fine-tuning (QZO, arXiv 2505.13430) against float fine-tuning: weight memory, peak memory, accuracy.

Used when a suite holds qzo runs. The weight figures come from the qzo run's record (`cost.precision`, filled by
optim/qzo.py from models/quantized.weight_bytes): the 4-bit layers as held (packed codes, float32 scales and
minimums) against the same layers de-quantised to float32, and the whole model both ways (the other tensors,
embedding and norms, are float32 in both). The run table puts every run of the suite side by side: what it
trains, its optimiser state, its peak resident memory (while training and over the whole run) and its test metric.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from zobench.report.render import export
from zobench.store import RunRecord

MIB = 2**20


def _mib(n: int | None) -> float | None:
    return round(n / MIB, 1) if n is not None else None


def weights_table(records: list[tuple[Path, RunRecord]]) -> pd.DataFrame:
    """Held vs float32 bytes of the quantized layers and of the whole model, from the first qzo run's record."""
    sizes = next((r.cost.precision for _, r in records if r.spec.method.name == "qzo" and r.cost.precision
                  and "quantized_layer_bytes" in r.cost.precision), None)
    if sizes is None:
        return pd.DataFrame()
    held_layers, float_layers = sizes["quantized_layer_bytes"], sizes["dequantized_float32_layer_bytes"]
    held_model = sizes["model_weight_bytes"]
    float_model = held_model - held_layers + float_layers
    table = pd.DataFrame({"held by qzo (MiB)": [_mib(held_layers), _mib(held_model)],
                          "float32 de-quantised (MiB)": [_mib(float_layers), _mib(float_model)]},
                         index=pd.Index(["Q4_1 linear layers", "whole model"], name="weights"))
    table["ratio"] = [round(float_layers / held_layers, 2), round(float_model / held_model, 2)]
    return table


def runs_table(records: list[tuple[Path, RunRecord]]) -> pd.DataFrame:
    """One row per run: model, method, trained parameters and bytes, state, peak RSS (train, whole run), metric."""
    rows = []
    for _, r in records:
        method = r.spec.method.label or r.spec.method.name
        trained = r.cost.trainable_params if r.spec.method.name not in ("zero-shot", "icl") else 0
        train_rss = r.memory_by_phase["train"].rss if "train" in r.memory_by_phase else None
        rss = r.memory.rss
        rows.append({"model": r.spec.model.label or r.spec.model.name, "method": method,
                     "status": r.outcome.status, "steps": r.cost.steps,
                     "trained parameters": trained,
                     "trained tensors (MiB)": _mib(4 * trained) if trained is not None else None,
                     "optimiser state (MiB)": _mib(r.cost.state_bytes),
                     "peak RSS, training (MiB)": _mib(train_rss),
                     "peak RSS, run (MiB)": _mib(rss.bytes if rss else None),
                     f"test {r.metrics.metric or 'metric'}": r.metrics.test_metric})
    return pd.DataFrame(rows).sort_values(["model", "method"]).set_index(["model", "method"])


def section(records: list[tuple[Path, RunRecord]], tables_dir: Path) -> list[dict[str, Any]]:
    """Table entries for the suite page; empty when the suite has no qzo runs."""
    if not any(r.spec.method.name == "qzo" for _, r in records):
        return []
    tables: list[dict[str, Any]] = []
    weights = weights_table(records)
    if not weights.empty:
        title = "Quantized fine-tuning: weight memory of the 4-bit model as QZO holds it and as float32"
        files = export(weights, tables_dir, "qzo-weights", caption=title)
        tables.append({"title": title, "html": weights.to_html(border=0, classes="data"), "files": files,
                       "note": "Q4_1: per block of 32 weights 16 bytes of packed 4-bit codes plus a float32 scale "
                               "and minimum (GGUF keeps them in float16; QZO trains them in float32). The whole "
                               "model adds the float32 embedding (tied to the head) and norms, the same both ways."})
    table = runs_table(records)
    title = "Quantized fine-tuning: what each method trains, its memory and its accuracy"
    files = export(table, tables_dir, "qzo-runs", caption=title)
    tables.append({"title": title, "html": table.to_html(border=0, classes="data"), "files": files,
                   "note": "Trained tensors: trained parameters × 4 bytes (float32). Peak RSS: the process's "
                           "resident high-water mark (Linux VmHWM) during the training window and over the whole "
                           "run (loading, evaluations); each run in its own process when the suite uses the "
                           "subprocess executor. qzo trains only the quantization scales of the 4-bit layers; "
                           "zo-sgd (MeZO) and fo-adam train every weight of the float32 de-quantised model."})
    return tables
