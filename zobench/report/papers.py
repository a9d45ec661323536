"""The papers' tables, with our runs placed in them and the published numbers beside ours.

Each `Layout` names a baselines/*.csv file (one row per paper row, the table's own columns) and says how
one of our runs lands in it: which paper row (from method and scheme), which column (task, model size or
tuning scheme), which block (k for RoBERTa), and which quantity (test metric, peak memory, seconds per
step). Runs that land outside the paper's rows or columns are added as rows/columns of our own, marked
as such; the mapping is documented in baselines/README.md.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from zobench.report.frame import SOURCE_NAMES, describe, memory_source, scale_for

Run = pd.Series  # one row of runs_frame


def baselines_dir() -> Path:
    """$ZOBENCH_BASELINES, else the tables shipped with zobench (zobench/bundled.py), else ./baselines."""
    from zobench.bundled import baselines_dir as shipped

    env = os.environ.get("ZOBENCH_BASELINES")
    if env:
        return Path(env)
    return shipped() or Path("baselines")


@lru_cache(maxsize=32)
def load_published(csv: str, root: str | None = None) -> pd.DataFrame:
    return pd.read_csv((Path(root) if root else baselines_dir()) / csv, dtype={"k": "string"}, keep_default_na=True)


# --------------------------------------------------------------------------- vocabulary
def _text(value: object) -> str:
    """A frame cell as text: '' for None and NaN (a column that is empty for some runs)."""
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def _norm(text: object) -> str:
    return re.sub(r"[^a-z0-9]", "", _text(text).lower())


TASK_COLUMNS = {"sst2": "SST-2", "sst5": "SST-5", "snli": "SNLI", "mnli": "MNLI", "rte": "RTE", "trec": "TREC",
                "cb": "CB", "boolq": "BoolQ", "wsc": "WSC", "wic": "WIC", "multirc": "MultiRC", "copa": "COPA",
                "record": "ReCoRD", "squad": "SQuAD", "drop": "DROP"}


def task_column(run: Run) -> str | None:
    """The paper's column for a task: sst2 and sst2-mlm (the masked-LM prompt) are both SST-2."""
    for name in (run.get("task_name"), run.get("task")):
        key = _norm(name)
        key = key[:-3] if key.endswith("mlm") else key
        if key in TASK_COLUMNS:
            return TASK_COLUMNS[key]
    return None


def scheme_kind(run: Run) -> str:
    """full | lora | prefix | prompt | <other name>."""
    name = _norm(run.get("scheme_name") or run.get("scheme"))
    for kind in ("lora", "prefix", "prompt"):
        if kind in name:
            return kind
    return "full" if name in ("", "full", "ft", "fullparameter") else name


def method_kind(run: Run) -> str:
    """A normalised method family: zo-sgd → 'mezo', fo-adam → 'adam', zero-shot → 'zeroshot', ..."""
    name = _norm(run.get("method_name") or run.get("method"))
    aliases = {"zosgd": "mezo", "mezo": "mezo", "zoadamu": "zoadamu", "zoadam": "zoadam", "mezoadam": "zoadam",
               "foadam": "adam", "foadamw": "adam", "fosgd": "sgd", "zeroshot": "zeroshot", "none": "zeroshot",
               "icl": "icl", "incontext": "icl", "lp": "lp", "linearprobe": "lp", "linearprobing": "lp",
               "zosgdsign": "zosgdsign", "zosignsgd": "zosgdsign", "zosgdmmt": "zosgdmmt", "zomomentum": "zosgdmmt",
               "zosgdcons": "zosgdcons", "forwardgrad": "forwardgrad"}
    return aliases.get(name, name)


def paper_model(run: Run) -> str | None:
    """OPT-13B / RoBERTa-large from a hub id, else None (a model of our own)."""
    ident = (_text(run.get("model_id")) or _text(run.get("model"))).lower()
    m = re.search(r"opt-(\d+(?:\.\d+)?)b", ident)
    if m:
        return f"OPT-{m.group(1)}B"
    if "roberta-large" in ident:
        return "RoBERTa-large"
    return None


def _ours(run: Run) -> str:
    return f"{run['method']} / {run['scheme']} (ours only)"


def _by_scheme(names: dict[str, str]) -> Callable[[Run], str | None]:
    """Row from (method family, scheme): `names` maps 'family' or 'family:scheme' to the paper's row; a run
    with no such row gets one of its own, '<method> / <scheme> (ours only)'."""

    def row(run: Run) -> str:
        fam, kind = method_kind(run), scheme_kind(run)
        return names.get(f"{fam}:{kind}") or (names.get(fam) if kind == "full" else None) or _ours(run)

    return row


# --------------------------------------------------------------------------- layouts
@dataclass(frozen=True)
class Layout:
    key: str
    csv: str
    title: str
    paper_model: str
    row_field: str  # CSV column that names the paper's rows
    columns: tuple[str, ...]  # value columns, in the paper's order
    row_of: Callable[[Run], str | None]
    col_of: Callable[[Run], str | None]
    quantity: str = "metric"  # metric | memory | step_time
    block_field: str | None = None  # CSV column that splits rows into blocks (k)
    block_of: Callable[[Run], str | None] = lambda run: None
    accept: Callable[[Run], bool] = lambda run: True
    unit: str = "%"
    std_suffix: str | None = None  # "SST-2 std" holds SST-2's published std
    model_axis: bool = False  # the model is a row/column: one panel for all our models
    notes: tuple[str, ...] = field(default_factory=tuple)


def _k_block(run: Run) -> str:
    params = run.get("task_params") or {}
    for key in ("k", "k_shot", "shots", "num_per_class"):
        if params.get(key) is not None:
            return str(params[key])
    return "not recorded"


def _objective(run: Run) -> bool:
    params = {**(run.get("task_params") or {}), **(run.get("method_params") or {})}
    return str(params.get("objective", "loss")).lower() in ("accuracy", "f1")


MEZO_T1_ROWS = {"zeroshot": "Zero-shot", "icl": "ICL", "lp": "LP", "mezo": "MeZO", "mezo:lora": "MeZO (LoRA)",
                "mezo:prefix": "MeZO (prefix)", "adam": "FT (12× memory)"}
ADAMU_T1_ROWS = {"zeroshot": "Zero-shot", "icl": "In-context", "lp": "linear probing", "mezo": "MeZO",
                 "mezo:lora": "MeZO (LoRA)", "mezo:prefix": "MeZO (prefix)", "zoadamu": "ZO-AdaMU (2×)",
                 "zoadamu:lora": "ZO-AdaMU (LoRA)", "zoadamu:prefix": "ZO-AdaMU (prefix)",
                 "adam": "Adam (FT) (12×)"}
T18_ROWS = {"zeroshot": "Zero-shot", "mezo": "MeZO", "mezo:lora": "MeZO (LoRA)", "mezo:prefix": "MeZO (prefix)",
            "zoadam": "MeZO-Adam", "adam": "FT", "lp": "LP"}
ADAMU_T2_ROWS = {"zeroshot": "Zero-shot", "adam": "Adam", "adam:lora": "Adam (LoRA)", "adam:prefix": "Adam (prefix)",
                 "lp": "LP", "mezo": "MeZO", "mezo:lora": "MeZO (LoRA)", "mezo:prefix": "MeZO (prefix)",
                 "zoadam": "MeZO-Adam", "zoadamu": "ZO-AdaMU", "zoadamu:lora": "ZO-AdaMU (LoRA)",
                 "zoadamu:prefix": "ZO-AdaMU (prefix)"}
ZOBENCH_ROWS = {"sgd": "FO-SGD", "adam": "FO-Adam", "mezo": "ZO-SGD", "zosgdsign": "ZO-SGD-Sign", "zoadam": "ZO-Adam",
                "zosgdmmt": "ZO-SGD-MMT", "zosgdcons": "ZO-SGD-Cons", "forwardgrad": "Forward-Grad"}
T1_COLUMNS = ("SST-2", "RTE", "CB", "BoolQ", "WSC", "WIC", "MultiRC", "COPA", "ReCoRD", "SQuAD", "DROP")
ROBERTA_COLUMNS = ("SST-2", "SST-5", "SNLI", "MNLI", "RTE", "TREC")
OPT_SIZES = ("OPT-1.3B", "OPT-2.7B", "OPT-6.7B", "OPT-13B", "OPT-30B", "OPT-66B")


def _t22_column(run: Run) -> str | None:
    fam, kind = method_kind(run), scheme_kind(run)
    if fam in ("mezo", "zeroshot") and kind == "full":
        return "zero-shot / MeZO"
    if fam == "icl":
        return "ICL"
    if fam == "adam":
        return {"full": "full FT", "prefix": "prefix FT"}.get(kind)
    return None


def _t23_row(run: Run) -> str | None:
    fam, bs = method_kind(run), run.get("batch_size")
    if scheme_kind(run) != "full" or bs is None:
        return None
    if fam == "mezo":
        return f"MeZO bsz {int(bs)}"
    return f"FT bsz {int(bs)}" if fam == "adam" else None


LAYOUTS: dict[str, Layout] = {lay.key: lay for lay in [
    Layout("mezo-table1", "mezo-table1.csv", "MeZO Table 1 — OPT-13B, 1000 examples (accuracy / F1, %)",
           "OPT-13B", "method", T1_COLUMNS, _by_scheme(MEZO_T1_ROWS), task_column,
           notes=("Rows marked [ZO-AdaMU copy] are ZO-AdaMU's reprint of the MeZO rows, where the "
                  "LoRA/prefix COPA and ReCoRD numbers are swapped (MeZO issue #28 suspects the same swap).",)),
    Layout("mezo-table18", "mezo-table18.csv", "MeZO Table 18 — RoBERTa-large, k examples per class (accuracy, %)",
           "RoBERTa-large", "method", ROBERTA_COLUMNS, _by_scheme(T18_ROWS), task_column,
           block_field="k", block_of=_k_block),
    Layout("mezo-table22", "mezo-table22.csv", "MeZO Table 22 — peak memory by model size (GB)",
           "OPT-1.3B … 66B", "model", ("zero-shot / MeZO", "ICL", "prefix FT", "full FT"),
           lambda r: paper_model(r) or str(r["model"]), _t22_column, quantity="memory", unit="GB",
           model_axis=True, std_suffix=" A100s",
           notes=("In parentheses: the number of A100-80GB GPUs the paper needed. The paper measured GPU memory "
                  "on MultiRC; ours is whatever task ran, peak of the training window (a training-free method: "
                  "its forward-only probe), source named above.",)),
    Layout("mezo-table23", "mezo-table23.csv", "MeZO Table 23 — seconds per step by model size",
           "OPT-1.3B … 66B", "setting", OPT_SIZES[:2] + OPT_SIZES[3:], _t23_row,
           lambda r: paper_model(r) or str(r["model"]), quantity="step_time", unit="s", model_axis=True,
           std_suffix=" A100s", notes=("In parentheses: the number of A100 GPUs the paper used. Ours: median "
                                       "seconds per training step on this run's device.",)),
    Layout("zo2-memory", "zo2-memory.csv", "ZO2 — GPU memory of MeZO-SGD with CPU offload by OPT size (GB)",
           "OPT-1.3B … 175B", "model", ("GPU memory (GB)",), lambda r: paper_model(r) or str(r["model"]),
           lambda r: "GPU memory (GB)" if method_kind(r) == "mezo" and scheme_kind(r) == "full" else None,
           quantity="memory", unit="GB", model_axis=True,
           notes=("ZO2's README figure: fp16 OPT of each shape, batch 1 × 2048 random tokens, NVML's used memory "
                  "(test/mezo_sgd/hf_opt/test_memory.py, utils.py:get_args). Ours: the suite's task, peak of the "
                  "training window, source named above.",)),
    Layout("zo-bench-table2", "zo-bench-table2.csv", "ZO-Bench Table 2 — OPT-1.3B on SST-2 (accuracy, %)",
           "OPT-1.3B", "method", ("FT", "LoRA", "prefix", "prompt"),
           lambda r: ZOBENCH_ROWS.get(method_kind(r), _ours(r).replace(f" / {r['scheme']}", "")),
           lambda r: {"full": "FT", "lora": "LoRA", "prefix": "prefix", "prompt": "prompt"}.get(scheme_kind(r)),
           accept=lambda r: task_column(r) == "SST-2"),
    Layout("zo-adamu-table1", "zo-adamu-table1.csv", "ZO-AdaMU Table 1 — OPT-13B, 1000 examples (accuracy / F1, %)",
           "OPT-13B", "method", T1_COLUMNS, _by_scheme(ADAMU_T1_ROWS), task_column),
    Layout("zo-adamu-table2", "zo-adamu-table2.csv", "ZO-AdaMU Table 2 — RoBERTa-large, k = 512 (accuracy, %)",
           "RoBERTa-large", "method", ROBERTA_COLUMNS, _by_scheme(ADAMU_T2_ROWS), task_column, std_suffix=" std"),
    Layout("zo-adamu-table4", "zo-adamu-table4.csv",
           "ZO-AdaMU Table 4 — non-differentiable objectives (accuracy / F1 as the objective, %)",
           "RoBERTa-large / OPT-13B", "method", ("SST-2", "SST-5", "SNLI", "TREC", "SQuAD"),
           _by_scheme({"zeroshot": "Zero-shot", "mezo": "MeZO", "mezo:prefix": "MeZO", "zoadamu": "ZO-AdaMU",
                       "zoadamu:prefix": "ZO-AdaMU"}), task_column, accept=_objective,
           notes=("Only runs whose task or method parameters set objective: accuracy or f1 land here.",)),
]}
ALIASES = {"table1": "mezo-table1", "mezo-t1": "mezo-table1", "table18": "mezo-table18", "table22": "mezo-table22",
           "table23": "mezo-table23", "mezo-tables22-23": "mezo-table22", "zo-bench": "zo-bench-table2",
           "zobench-table2": "zo-bench-table2"}


def layout_keys(regenerates: str | None) -> list[str]:
    """Layouts a suite's `regenerates` names (comma-separated allowed; 22 brings 23 and back)."""
    keys: list[str] = []
    for part in (regenerates or "").replace(" ", "").split(","):
        if not part:
            continue
        key = ALIASES.get(part.lower(), part.lower())
        if key in LAYOUTS:
            keys.append(key)
            if key in ("mezo-table22", "mezo-table23"):
                keys.append("mezo-table23" if key == "mezo-table22" else "mezo-table22")
    return list(dict.fromkeys(keys))


# --------------------------------------------------------------------------- placing runs
def _number(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")


def _quantity(run: Run, lay: Layout, source: str | None) -> float:
    """The number a run puts in the table (NaN where the run did not record it)."""
    if lay.quantity == "metric":
        return _number(run.get("test_metric")) * scale_for(run.get("metric"))
    if lay.quantity == "step_time":
        return _number(run.get("median_step_s"))
    trained = _number(run.get("steps")) > 0  # zero-shot / ICL: no training steps, so their inference probe
    value = _number(run.get(f"mem_{'train' if trained else 'inference'}_{source}_bytes"))
    if np.isnan(value):
        value = _number(run.get(f"peak_{source}_bytes"))
    return value / 1e9


def _published(lay: Layout, root: str | None = None) -> pd.DataFrame:
    """The paper's numbers, long: block, row, column, paper, paper_std, note."""
    pub = load_published(lay.csv, root)
    rows = []
    for _, r in pub.iterrows():
        row = str(r[lay.row_field])
        variant = r.get("variant")
        if isinstance(variant, str) and variant and variant != "published":
            row = f"{row} [{variant}]"
        block = r.get(lay.block_field) if lay.block_field else None
        block = "" if block is None or pd.isna(block) else f"{lay.block_field} = {block}"
        for col in lay.columns:
            std = r.get(f"{col}{lay.std_suffix}") if lay.std_suffix else None
            rows.append({"block": block, "row": row, "column": col,
                         "paper": float(r[col]) if pd.notna(r[col]) else np.nan,
                         "paper_std": float(std) if std is not None and pd.notna(std) else np.nan,
                         "note": r.get("note") if isinstance(r.get("note"), str) else ""})
    return pd.DataFrame(rows)


@dataclass
class Panel:
    """One rendered table: the paper's layout for one of our models (or for all, where model is an axis)."""

    layout: Layout
    ours_model: str
    cells: pd.DataFrame  # block, row, column, ours_mean/std/n/ci95_low/ci95_high, paper, paper_std, delta
    rows: list[tuple[str, str]]  # (block, row) in display order; block "" where the table has none
    columns: list[str]
    note: str
    source: str | None = None


def place(frame: pd.DataFrame, lay: Layout, root: str | None = None) -> list[Panel]:
    """Our finished runs placed in `lay`, one panel per model of ours (one in all where model is an axis)."""
    done = frame[frame["status"] == "done"] if not frame.empty else frame
    source = memory_source(done) if lay.quantity == "memory" else None
    pub = _published(lay, root)
    placed = []
    for _, run in done.iterrows():
        if not lay.accept(run):
            continue
        row, col = lay.row_of(run), lay.col_of(run)
        if row is None or col is None or (col not in lay.columns and not lay.model_axis):
            continue
        value = _quantity(run, lay, source)
        if not np.isfinite(value):
            continue
        block = lay.block_of(run)
        block = f"{lay.block_field} = {block}" if block is not None and lay.block_field else ""
        placed.append({"model": "all models" if lay.model_axis else str(run["model"]), "block": block,
                       "row": row, "column": col, "value": value, "label": f"{run['method']}/{run['scheme']}",
                       "paper_model": paper_model(run)})
    ours = pd.DataFrame(placed, columns=["model", "block", "row", "column", "value", "label", "paper_model"])
    panels = []
    for model, group in ours.groupby("model", sort=False):
        panels.append(_panel(lay, str(model), group, pub, source))
    if not panels:  # the paper alone, so the page still shows what a run would be compared with
        panels.append(_panel(lay, "", ours, pub, source))
    return panels


def _panel(lay: Layout, model: str, ours: pd.DataFrame, pub: pd.DataFrame, source: str | None) -> Panel:
    # two of our methods landing on one paper row (fo-adam and fo-adamw on FT) become two sub-rows
    per_cell = ours.groupby(["block", "row", "column"])["label"].unique()
    split = {(b, r, lab) for (b, r, _), labs in per_cell.items() if len(labs) > 1 for lab in labs}
    ours = ours.copy()
    ours["base"] = ours["row"]
    ours["row"] = [f"{r.row} ← {r.label}" if (r.block, r.row, r.label) in split else r.row
                   for r in ours.itertuples()]
    stats = []
    for (block, row, base, col), g in ours.groupby(["block", "row", "base", "column"], sort=False):
        d = describe(g["value"])
        stats.append({"block": block, "row": row, "base": base, "column": col,
                      **{f"ours_{k}": v for k, v in d.items()}})
    stats_df = pd.DataFrame(stats, columns=["block", "row", "base", "column", "ours_n", "ours_mean", "ours_std",
                                            "ours_median", "ours_ci95_low", "ours_ci95_high"])
    blocks = list(dict.fromkeys([b for b in pub["block"] if b] + [b for b in stats_df["block"] if b])) or [""]
    # paper rows with no block (zero-shot in Table 18) belong to every block
    pub = pd.concat([pub[pub["block"] == ""].assign(block=b) for b in blocks]
                    + [pub[pub["block"] != ""]], ignore_index=True)
    paper = pub.rename(columns={"row": "base"})[["block", "base", "column", "paper", "paper_std"]]
    cells = stats_df.merge(paper, on=["block", "base", "column"], how="left")
    alone = pub[["block", "row", "column", "paper", "paper_std"]]
    alone = alone[~alone.set_index(["block", "row", "column"]).index.isin(
        cells.set_index(["block", "row", "column"]).index)]
    cells = pd.concat([cells, alone.assign(base=alone["row"])], ignore_index=True)
    cells["delta"] = cells["ours_mean"] - cells["paper"]
    rows: list[tuple[str, str]] = []
    for b in blocks:
        in_block = stats_df[stats_df["block"] == b]
        paper_rows = list(dict.fromkeys(pub.loc[pub["block"] == b, "row"]))
        for r in paper_rows:
            rows.append((b, r))
            rows.extend((b, x) for x in sorted(set(in_block.loc[in_block["base"] == r, "row"]) - {r}))
        rows.extend((b, x) for x in dict.fromkeys(in_block.loc[~in_block["base"].isin(paper_rows), "row"]))
    columns = list(lay.columns) + [c for c in dict.fromkeys(stats_df["column"]) if c not in lay.columns]
    return Panel(lay, model, cells, list(dict.fromkeys(rows)), columns, _note(lay, model, ours, source), source)


def _note(lay: Layout, model: str, ours: pd.DataFrame, source: str | None) -> str:
    parts = [f"Paper: {lay.paper_model}."]
    if ours.empty:
        parts.append("None of these runs lands in this table: the paper's numbers alone.")
    elif lay.model_axis:
        parts.append("Ours: every model of these runs, placed by size (a model of ours that is not the paper's "
                     "gets a row or column of its own).")
    else:
        parts.append(f"Ours: {model}, mean ± std over seeds; Δ = ours − paper.")
        if not (ours["paper_model"] == lay.paper_model).all():
            parts.append(f"{model} is not {lay.paper_model}: Δ compares different models.")
    if source:
        parts.append(f"Memory source: {SOURCE_NAMES.get(source, source)}.")
    parts.extend(lay.notes)
    return " ".join(parts)
