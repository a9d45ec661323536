"""Paper panels and plain tables as HTML, Markdown, LaTeX and CSV."""

from __future__ import annotations

import html
import math
from pathlib import Path

import pandas as pd

from zobench.report.papers import Panel
from zobench.store import atomic_write


def _num(value: float, unit: str) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.1f}" if unit == "%" else f"{value:.3g}"


def _signed(value: float, unit: str) -> str:
    text = _num(abs(value), unit)
    return ("+" if value >= 0 else "−") + text


def _cell(panel: Panel, block: str, row: str, col: str) -> pd.Series | None:
    c = panel.cells
    hit = c[(c["block"] == block) & (c["row"] == row) & (c["column"] == col)]
    return hit.iloc[0] if len(hit) else None


def _parts(panel: Panel, cell: pd.Series | None) -> tuple[str, str, str]:
    """(ours, paper, delta) as text; empty strings where absent."""
    unit = panel.layout.unit
    if cell is None:
        return "", "", ""
    ours = ""
    if pd.notna(cell.get("ours_mean")):
        ours = _num(cell["ours_mean"], unit)
        if pd.notna(cell.get("ours_std")):
            ours += f" ± {_num(cell['ours_std'], unit)}"
    paper = ""
    if pd.notna(cell.get("paper")):
        paper = _num(cell["paper"], unit)
    if pd.notna(cell.get("paper_std")):  # a std, or (Tables 22-23) a GPU count, which may stand alone
        paper = (paper + " " if paper else "") + f"({_num(cell['paper_std'], unit)})"
    delta = _signed(cell["delta"], unit) if pd.notna(cell.get("delta")) else ""
    return ours, paper, delta


def panel_html(panel: Panel) -> str:
    """The paper's layout; a cell shows ours (bold, mean ± std) over the paper's number and Δ."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in panel.columns)
    blocks = {b for b, _ in panel.rows}
    body = []
    current = None
    for block, row in panel.rows:
        if block != current and len(blocks) > 1 or (block and block != current):
            body.append(f'<tr class="block"><th colspan="{len(panel.columns) + 1}">{html.escape(block)}</th></tr>')
        current = block
        kind = "sub" if " ← " in row else ("ours-only" if "(ours only)" in row else "")
        cells = []
        for col in panel.columns:
            cell = _cell(panel, block, row, col)
            ours, paper, delta = _parts(panel, cell)
            inner = f'<span class="ours">{html.escape(ours)}</span>' if ours else ""
            if paper:
                pub = f"paper {paper}" if ours else paper
                inner += f'<span class="paper">{pub}</span>' if ours else f'<span class="paper only">{pub}</span>'
                if delta:
                    cls = "up" if cell["delta"] >= 0 else "down"
                    inner += f'<span class="paper {cls}">Δ {html.escape(delta)}</span>'
            ci = ""
            if cell is not None and pd.notna(cell.get("ours_ci95_low")):
                ci = (f' title="n={int(cell["ours_n"])}, bootstrap 95% CI '
                      f'[{_num(cell["ours_ci95_low"], panel.layout.unit)}, '
                      f'{_num(cell["ours_ci95_high"], panel.layout.unit)}]"')
            cells.append(f"<td{ci}>{inner}</td>")
        body.append(f'<tr class="{kind}"><th>{html.escape(row)}</th>{"".join(cells)}</tr>')
    return (f'<table class="paper-table"><thead><tr><th></th>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def panel_text(panel: Panel) -> pd.DataFrame:
    """Wide text table for Markdown/LaTeX: 'ours / paper (Δ)' per cell."""
    index = pd.MultiIndex.from_tuples(panel.rows, names=["block", "row"]) if any(b for b, _ in panel.rows) \
        else pd.Index([r for _, r in panel.rows], name="row")
    data = []
    for block, row in panel.rows:
        line = []
        for col in panel.columns:
            ours, paper, delta = _parts(panel, _cell(panel, block, row, col))
            text = f"{ours or '—'} / {paper or '—'}" + (f" (Δ {delta})" if delta else "")
            line.append("" if not ours and not paper else text)
        data.append(line)
    return pd.DataFrame(data, index=index, columns=panel.columns)


def panel_csv(panel: Panel) -> pd.DataFrame:
    """Tidy: one row per cell, ours and the paper's numbers, with the layout and unit."""
    cols = ["block", "row", "column", "ours_n", "ours_mean", "ours_std", "ours_ci95_low", "ours_ci95_high",
            "paper", "paper_std", "delta"]
    out = panel.cells.reindex(columns=cols).copy()
    out.insert(0, "ours_model", panel.ours_model)
    out.insert(0, "table", panel.layout.key)
    out["unit"] = panel.layout.unit
    order = {key: i for i, key in enumerate(panel.rows)}
    out["_order"] = [order.get((b, r), len(order)) for b, r in zip(out["block"], out["row"], strict=True)]
    out["_col"] = [panel.columns.index(c) if c in panel.columns else len(panel.columns) for c in out["column"]]
    return out.sort_values(["_order", "_col"]).drop(columns=["_order", "_col"]).reset_index(drop=True)


def export(table: pd.DataFrame, folder: Path, name: str, csv: pd.DataFrame | None = None,
           caption: str = "") -> dict[str, str]:
    """Write name.csv (tidy where given), name.md and name.tex; return {format: file name}."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"csv": f"{name}.csv", "md": f"{name}.md", "tex": f"{name}.tex"}
    atomic_write(folder / files["csv"], (csv if csv is not None else table).to_csv(index=csv is None).encode())
    flat = table.reset_index() if isinstance(table.index, pd.MultiIndex) else table
    md = (f"{caption}\n\n" if caption else "") + flat.to_markdown(index=flat is table) + "\n"
    atomic_write(folder / files["md"], md.encode())
    tex = table.to_latex(caption=caption or None, label=f"tab:{name}", na_rep="—", escape=True, float_format="%.3g")
    atomic_write(folder / files["tex"], tex.encode())
    return files
