"""The `zobench` command: thin verbs over the library. User errors exit 2 with one message."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from zobench import registry
from zobench.config import load_suite
from zobench.errors import UserError
from zobench.grid import RunSpec, expand

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_enable=False)
out = Console()
err = Console(stderr=True)


def fail(e: Exception) -> None:
    err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def plan(suite_file: Path, data_dir: str | None = None) -> tuple[object, list[RunSpec]]:
    """Load, validate and expand a suite; every user error surfaces here, before anything is written."""
    from zobench.runner import resolve_device

    suite, lines = load_suite(suite_file)
    if suite.regenerates:
        from zobench.config import where
        from zobench.report.papers import LAYOUTS, layout_keys

        if not layout_keys(suite.regenerates):
            raise UserError(f"{where(suite_file, lines, ('regenerates',))}: unknown paper table "
                            f"'{suite.regenerates}'; known: {', '.join(LAYOUTS)}")
    specs = expand(suite, suite_file, lines, data_dir=data_dir)
    for spec in specs:
        try:
            resolve_device(spec.settings.device)
        except UserError as e:
            raise UserError(f"{suite_file}: defaults.device (or a component's settings.device): {e}") from None
    return suite, specs


@app.command()
def validate(suite_file: Path) -> None:
    """Check a suite file without running anything."""
    try:
        suite, specs = plan(suite_file)
    except UserError as e:
        fail(e)
    out.print(f"{suite_file}: ok — suite '{suite.name}', {len(specs)} runs")


@app.command(name="run")
def run_cmd(
    suite_file: Path,
    results: Annotated[Path, typer.Option(help="results root; runs land in RESULTS/<suite>/")] = Path("results"),
    reports: Annotated[Path, typer.Option(help="reports root; the page lands in REPORTS/<suite>/")] = Path("reports"),
    data_dir: Annotated[str | None, typer.Option(help="local data folder for every task (overrides the suite)")] = None,
    rerun: Annotated[bool, typer.Option(help="run again even runs already done")] = False,
    report: Annotated[bool, typer.Option(help="build the HTML report at the end")] = True,
    executor: Annotated[str | None, typer.Option(help="local | subprocess | slurm | ray (overrides the suite's "
                                                      "executor.name; options from its executor.<NAME> section)")
                        ] = None,
) -> None:
    """Run every cell of a suite's grid (skipping runs already done), then build its report."""
    from zobench.executors import pending
    from zobench.registry import executors
    from zobench.report import build_report
    from zobench.store import Store

    try:
        suite, specs = plan(suite_file, data_dir)
        engine = executor or suite.executor.name
        executor_cls = executors.get(engine)  # its options were checked with the suite (file:line)
    except UserError as e:
        fail(e)
    store = Store(results, suite.name)
    if rerun:  # forget their results (a run another process is running right now is left to it)
        for spec in specs:
            store.discard(spec.run_id)
    todo = pending(specs, store)
    err.print(f"suite [bold]{suite.name}[/]: {len(specs)} runs, {len(specs) - len(todo)} already done, "
              f"{len(todo)} to run")
    try:
        executor_cls(suite.executor.options_for(engine), console=err).run(todo, store)
    except UserError as e:
        fail(e)
    from zobench.report.frame import method_task_table, runs_frame

    frame = runs_frame(store.dir)
    if frame.empty:  # nothing finished yet (e.g. jobs submitted without waiting)
        out.print(f"no finished runs yet in {store.dir}/; when they end: zobench report {store.dir}")
        return
    frame = frame[frame["run_id"].isin({s.run_id for s in specs})]
    from zobench.report.selection import select

    out.print(method_task_table(select(frame).chosen).to_string())  # swept cells: the configuration chosen on dev
    bad = frame[frame["status"] != "done"]
    if not bad.empty:
        out.print(f"{len(bad)} runs did not finish: " + ", ".join(f"{r.run_id} ({r.status})" for r in bad.itertuples()))
    out.print(f"results: {store.dir}/")
    if report:
        page = build_report(store.dir, reports, description=suite.description, regenerates=suite.regenerates)
        out.print(f"report:  {page}")


@app.command(name="check")
def check_cmd(
    suite_file: Path,
    against: Annotated[Path, typer.Option(help="the stored reference (JSON) to compare with")],
    results: Annotated[Path | None, typer.Option(help="reuse this results root (runs only what is not done); "
                                                      "default: a fresh temporary folder")] = None,
    update: Annotated[bool, typer.Option(help="rewrite the reference from these runs, on purpose")] = False,
    timing: Annotated[bool | None, typer.Option(help="also compare wall-clock (default: the suite's check.timing)")
                      ] = None,
    run: Annotated[bool, typer.Option(help="run what is not done; --no-run only reads --results")] = True,
    threads: Annotated[int, typer.Option(min=1, help="torch CPU threads (pinned so sums repeat)")] = 1,
) -> None:
    """Regression check: run the suite and compare each run with a stored reference; exit 1 on drift."""
    from zobench.check import run_check

    try:
        suite, specs = plan(suite_file)
        code = run_check(suite, specs, against, results=results, update=update, timing=timing, run=run,
                         threads=threads, out=out, err=err)
    except UserError as e:
        fail(e)
    raise typer.Exit(code)


@app.command(name="report")
def report_cmd(
    results_dir: Path,
    reports: Annotated[Path, typer.Option(help="reports root")] = Path("reports"),
    layout: Annotated[list[str] | None, typer.Option(help="also lay the runs out as this paper table "
                                                          "(repeatable), e.g. mezo-table1")] = None,
    select: Annotated[str, typer.Option(help="choose each cell's swept configuration by the mean over seeds of "
                                             "each run's best dev evaluation (best-dev) or its last (last)")
                      ] = "best-dev",
) -> None:
    """Rebuild the HTML report (tables, figures) from a results folder."""
    from zobench.report import build_report
    from zobench.report.papers import LAYOUTS

    if not results_dir.is_dir():
        fail(UserError(f"{results_dir}: no such results folder; run a suite first or give results/<suite>"))
    unknown = [name for name in layout or [] if name not in LAYOUTS]
    if unknown:
        fail(UserError(f"--layout {unknown[0]}: unknown paper table; known: {', '.join(LAYOUTS)}"))
    if select not in ("best-dev", "last"):
        fail(UserError(f"--select {select}: unknown selection; use best-dev or last"))
    out.print(f"report: {build_report(results_dir, reports, layouts=tuple(layout or ()), select_by=select)}")


@app.command(name="bench")
def bench_cmd(
    model: Annotated[list[str], typer.Option(help="tiny-opt | minilm | smollm2 | opt-1.3b (repeatable)")] = None,
    batch: Annotated[int, typer.Option(min=2, help="sequences per forward pass")] = 16,
    seq: Annotated[int, typer.Option(min=8, help="tokens per sequence")] = 64,
    repeats: Annotated[int, typer.Option(min=1, help="timed rounds (medians are reported)")] = 5,
    threads: Annotated[int | None, typer.Option(min=1, help="torch CPU threads (default: torch's)")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32 | bfloat16 | float16")] = "float32",
    memory: Annotated[bool, typer.Option(help="peak memory per mode, one fresh process each")] = True,
    compile: Annotated[bool, typer.Option(help="every mode through the model blocks compiled by torch.compile "
                                                "(as `compile: true` runs); virtual-engine modes left out")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the results here")] = None,
) -> None:
    """Cost of a ZO step against a forward pass F, MeZO's reference step and Adam; peak memory per mode."""
    import json

    from zobench.bench import bench, format_table

    results = []
    for name in model or ["tiny-opt"]:
        try:
            result = bench(name, batch=batch, seq=seq, repeats=repeats, threads=threads, device=device,
                           dtype=dtype, memory=memory, compile=compile)
        except UserError as e:
            fail(e)
        out.print(format_table(result), highlight=False, soft_wrap=True, markup=False)
        results.append(result)
    if json_out is not None:
        json_out.write_text(json.dumps(results, indent=2))


@app.command(name="list")
def list_cmd(what: Annotated[str, typer.Argument(help="methods | tasks | models | schemes | executors")]) -> None:
    """What the registries hold, with the first line of each entry's docstring."""
    reg = registry.REGISTRIES.get(what) or registry.REGISTRIES.get(what + "s")
    if what == "optimizers":
        reg = registry.methods
    if reg is None:
        fail(UserError(f"unknown registry '{what}'; allowed: {', '.join(registry.REGISTRIES)}"))
    for name, entry in reg.items():
        doc = (entry.__doc__ or "").strip().splitlines()
        out.print(f"{name:24s} {doc[0] if doc else ''}", highlight=False, soft_wrap=True)


def main() -> None:  # pragma: no cover
    sys.exit(app())
