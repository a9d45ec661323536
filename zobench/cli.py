"""The `zobench` command: thin verbs over the library. User errors exit 2 with one message."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

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


RUNS_NOT_DONE = 1  # `zobench run`: some runs failed, diverged or ran out of memory
BAD_INPUT = 2
SUITE_HELP = "a suite file, or the name of a bundled suite (`zobench suites` lists them); a local file wins"


def fail(e: Exception) -> None:
    err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
    raise typer.Exit(BAD_INPUT)


def writable_folder(path: Path, option: str) -> None:
    """Refuse, before anything runs, an output folder that is a file or cannot be written."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: is a file; {option} takes a folder (it is created when missing)")
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{existing}: cannot be written (read-only?); give {option} a folder you can write to")


def os_error(e: OSError, fix: str) -> UserError:
    """One line for what the operating system refused: the path, its reason, the fix."""
    return UserError(f"{e.filename or ''}: {e.strerror or e}; {fix}")


def plan(suite_file: Path, data_dir: str | None = None, executor: str | None = None) -> tuple[object, list[RunSpec]]:
    """Load, validate and expand a suite; every user error surfaces here, before anything is written."""
    from zobench.bundled import find_suite

    suite_file = find_suite(suite_file)  # a local path wins; else a bundled suite by name
    suite, lines = load_suite(suite_file)
    if suite.regenerates:
        from zobench.config import where
        from zobench.report.papers import LAYOUTS, layout_keys

        if not layout_keys(suite.regenerates):
            raise UserError(f"{where(suite_file, lines, ('regenerates',))}: unknown paper table "
                            f"'{suite.regenerates}'; known: {', '.join(LAYOUTS)}")
    try:
        specs = expand(suite, suite_file, lines, data_dir=data_dir, executor=executor)
    except UserError as e:
        from zobench.bundled import shipped

        if data_dir or not shipped(suite_file) or "data_dir" not in str(e):
            raise
        raise UserError(f"{e}; this suite ships inside zobench, where its relative data_dir finds no data: give "
                        f"the folder the suite's data_dir names with --data-dir DIR") from None
    for spec in specs:  # a run's folder is named by its id: most file systems stop at 255 bytes a name
        if len(spec.run_id.encode()) > 200:
            raise UserError(f"{suite_file}: run '{spec.run_id[:60]}...' has a {len(spec.run_id.encode())}-byte id "
                            f"(over 200, too long for a folder name); give its components shorter 'label's")
    return suite, specs


@app.command()
def validate(
    suite_file: Annotated[Path, typer.Argument(help=SUITE_HELP)],
    data_dir: Annotated[str | None, typer.Option(help="local data folder for every task (overrides the suite)")] = None,
) -> None:
    """Check a suite file without running anything: every custom task's data is opened and checked."""
    try:
        suite, specs = plan(suite_file, data_dir)
    except UserError as e:
        fail(e)
    out.print(f"{suite_file}: ok — suite '{suite.name}', {len(specs)} runs")


@app.command(name="run")
def run_cmd(
    suite_file: Annotated[Path, typer.Argument(help=SUITE_HELP)],
    results: Annotated[Path, typer.Option(help="results root; runs land in RESULTS/<suite>/")] = Path("results"),
    reports: Annotated[Path, typer.Option(help="reports root; the page lands in REPORTS/<suite>/")] = Path("reports"),
    data_dir: Annotated[str | None, typer.Option(help="local data folder for every task (overrides the suite)")] = None,
    rerun: Annotated[bool, typer.Option(help="run again even runs already done")] = False,
    report: Annotated[bool, typer.Option(help="build the HTML report at the end")] = True,
    executor: Annotated[str | None, typer.Option(help="local | subprocess | slurm | ray (overrides the suite's "
                                                      "executor.name; options from its executor.<NAME> section)")
                        ] = None,
) -> None:
    """Run every cell of a suite's grid (skipping runs already done), then build its report.

    Exit codes: 0 every run done; 1 some runs failed, diverged or ran out of memory; 2 bad input.
    """
    from zobench.registry import executors

    try:
        suite, specs = plan(suite_file, data_dir, executor)
        engine = executor or suite.executor.name
        executors.get(engine)  # an unknown name is refused here; its options were checked with the suite (file:line)
        writable_folder(results, "--results")
        if report:
            writable_folder(reports, "--reports")
    except UserError as e:
        fail(e)
    try:
        _run_and_report(suite, specs, results, reports, rerun, report, engine)
    except UserError as e:
        fail(e)
    except OSError as e:
        fail(os_error(e, "check that the results and reports folders can be written and have space"))


def _run_and_report(suite: Any, specs: list[RunSpec], results: Path, reports: Path, rerun: bool, report: bool,
                    engine: str) -> None:
    from zobench.executors import run_specs
    from zobench.report import build_report
    from zobench.store import Store

    store = Store(results, suite.name)
    run_specs(suite, specs, store, engine, rerun=rerun, console=err)
    from zobench.report.frame import method_task_table, runs_frame

    frame = runs_frame(store.dir)
    frame = frame[frame["run_id"].isin({s.run_id for s in specs})] if not frame.empty else frame
    waited = suite.executor.options_for(engine).get("wait", True) is not False  # slurm's wait: false submits only
    unrecorded = len(specs) - len(frame) if waited else 0  # runs that left no summary (a full disk, ...)
    if not waited and frame.empty:
        out.print(f"no finished runs yet in {store.dir}/; when they end: zobench report {store.dir}")
        return
    if unrecorded:
        out.print(f"{unrecorded} of {len(specs)} runs left no summary in {store.dir}/ (see the messages above); "
                  f"run the suite again to redo them")
        if frame.empty:
            raise typer.Exit(RUNS_NOT_DONE)
    from zobench.report.selection import select

    out.print(method_task_table(select(frame).chosen).to_string())  # swept cells: the configuration chosen on dev
    bad = frame[frame["status"] != "done"]
    if not bad.empty:
        out.print(f"{len(bad)} runs did not finish: " + ", ".join(f"{r.run_id} ({r.status})" for r in bad.itertuples()))
    out.print(f"results: {store.dir}/")
    if report:
        page = build_report(store.dir, reports)  # the suite's settings: from suite.json, written before the runs
        out.print(f"report:  {page}")
    if not bad.empty or unrecorded:
        raise typer.Exit(RUNS_NOT_DONE)  # scripts and CI see it; the report is still built


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
    reason: Annotated[str | None, typer.Option(help="why the reference is rewritten (required with --update; "
                                                     "recorded in it)")] = None,
) -> None:
    """Regression check: run the suite and compare each run with a stored reference; exit 1 on drift only
    (2 for bad input: suite, reference file, folders)."""
    from zobench.check import run_check

    try:
        suite, specs = plan(suite_file)
        if results is not None and run:
            writable_folder(results, "--results")
        code = run_check(suite, specs, against, results=results, update=update, timing=timing, run=run,
                         threads=threads, out=out, err=err, reason=reason)
    except UserError as e:
        fail(e)
    except OSError as e:
        fail(os_error(e, "check the --against file and the --results folder (they must be readable, writable)"))
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
        what = "is a file, not a results folder" if results_dir.exists() else "no such results folder"
        fail(UserError(f"{results_dir}: {what}; run a suite first or give results/<suite>"))
    unknown = [name for name in layout or [] if name not in LAYOUTS]
    if unknown:
        fail(UserError(f"--layout {unknown[0]}: unknown paper table; known: {', '.join(LAYOUTS)}"))
    if select not in ("best-dev", "last"):
        fail(UserError(f"--select {select}: unknown selection; use best-dev or last"))
    try:
        writable_folder(reports, "--reports")
        out.print(f"report: {build_report(results_dir, reports, layouts=tuple(layout or ()), select_by=select)}")
    except UserError as e:
        fail(e)
    except OSError as e:
        fail(os_error(e, "give --reports a folder you can write to, with space"))


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


@app.command(name="suites")
def suites_cmd() -> None:
    """The suites that ship with zobench: run one by name from any folder (`zobench run quickstart`)."""
    from zobench.bundled import bundled_suites, describe, suites_dir

    suites = bundled_suites()
    if not suites:
        fail(UserError("no suites are bundled with this installation; reinstall zobench from its wheel"))
    out.print(f"bundled suites in {suites_dir()}/ (a local file of the same path wins):", highlight=False,
              soft_wrap=True)
    for name, path in suites.items():
        text = describe(path)
        out.print(f"{name:26s} {text[:90] + ('…' if len(text) > 90 else '')}", highlight=False, soft_wrap=True,
                  markup=False)


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


@app.command(name="data")
def data_cmd(
    task: Annotated[str, typer.Argument(help="a task name (zobench list tasks)")],
    seed: Annotated[int, typer.Option(help="the run's seed (LM-BFF tasks: the k-shot seed unless data_seed)")] = 0,
    split: Annotated[str, typer.Option(help="train | dev | test")] = "train",
    data_dir: Annotated[str | None, typer.Option(help="the task's local files; default: the hub")] = None,
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="a task parameter, KEY=VALUE "
                                                    "(YAML value), e.g. -p train_size=1000")] = None,
) -> None:
    """The exact examples a run with this seed uses, in sampling order, as JSONL: rendered text, label, row id."""
    import json

    import yaml

    from zobench.tasks.export import examples

    try:
        params: dict[str, object] = {"data_dir": data_dir} if data_dir else {}
        for item in param or []:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise UserError(f"--param '{item}': expected KEY=VALUE, e.g. --param train_size=1000")
            params[key.strip()] = yaml.safe_load(value)
        rows = examples(task, seed, split, params)
    except UserError as e:
        fail(e)
    for row in rows:
        sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:  # pragma: no cover
    sys.exit(app())
