"""`subprocess`: a fresh Python process per run, a pool of slots sized to the visible GPUs.

Each run gets a clean CUDA context and its own NVML figures. A GPU slot pins its run with
CUDA_VISIBLE_DEVICES; without a GPU the slots are CPU slots and each run gets `threads` CPU threads
(OMP/MKL variables and torch), so two workers on two cores do not oversubscribe. The pool is
`concurrent.futures`; the scheduling is the operating system's.

A run that needs several devices takes several slots at once and waits until they are free: `gpus: 2` (a model
spread over two GPUs by device_map) gets both in CUDA_VISIBLE_DEVICES; `parallel: {data: N}` is started through
torchrun (`torch.distributed.run --standalone`, a free port per run) with N local processes, one GPU each (NCCL),
or on CPU slots N gloo processes sharing the slots' threads.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import PositiveInt

from zobench.errors import UserError
from zobench.executors.fanout import FanoutExecutor, board, gpus_needed, lost_run, workers
from zobench.executors.local import ExecutorOptions
from zobench.grid import RunSpec
from zobench.registry import executors
from zobench.store import Store
from zobench.worker import HELD_ELSEWHERE, thread_env


def cpu_count() -> int:
    """CPUs this process may use (the container's or the job's share, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """GPU ids this process may hand out: CUDA_VISIBLE_DEVICES when set, else every device NVML sees.

    NVML, not torch.cuda, so the parent never creates a CUDA context of its own.
    """
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return [str(i) for i in range(pynvml.nvmlDeviceGetCount())]
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no library: no GPU to hand out
        return []


@dataclass
class Slot:
    """Where one run goes: its label for the display and the environment it gets."""

    label: str
    env: dict[str, str] = field(default_factory=dict)
    threads: int = 1
    device: str = ""  # the GPU id ("" for a CPU slot)


def joined(slots: list[Slot], processes: int) -> Slot:
    """One slot made of several: every GPU visible to the run, the slots' threads shared by its processes."""
    if len(slots) == 1:
        return slots[0]
    threads = max(1, sum(s.threads for s in slots) // processes)
    gpus = sorted((s.device for s in slots if s.device), key=lambda d: (len(d), d))  # rank r gets the r-th
    kind = f"gpu {','.join(gpus)}" if gpus else f"cpu slots {','.join(s.label.split()[-1] for s in slots)}"
    return Slot(kind, {**slots[0].env, "CUDA_VISIBLE_DEVICES": ",".join(gpus), **thread_env(threads)}, threads,
                ",".join(gpus))


class Slots:
    """The pool's free slots; a run takes all it needs at once (on distinct GPUs), waiting until they are free.
    Runs are served in the order they asked: a 2-GPU run is not starved by 1-GPU runs taking each GPU freed."""

    def __init__(self, slots: list[Slot]) -> None:
        self.free, self.total = list(slots), len(slots)
        self.gpus = len({s.device for s in slots if s.device})
        self.changed = threading.Condition()
        self.waiting: list[object] = []

    def _pick(self, n: int) -> list[Slot] | None:
        picked: list[Slot] = []
        for slot in self.free:
            if len(picked) < n and (not slot.device or slot.device not in {p.device for p in picked}):
                picked.append(slot)
        return picked if len(picked) == n else None

    def take(self, n: int) -> list[Slot]:
        turn = object()
        with self.changed:
            self.waiting.append(turn)
            self.changed.wait_for(lambda: self.waiting[0] is turn and self._pick(n) is not None)
            self.waiting.pop(0)
            picked = self._pick(n) or []
            self.free = [s for s in self.free if all(s is not p for p in picked)]  # equal slots: by identity
            self.changed.notify_all()  # the next in line may fit in what is left
            return picked

    def give(self, slots: list[Slot]) -> None:
        with self.changed:
            self.free.extend(slots)
            self.changed.notify_all()


class PoolOptions(ExecutorOptions):
    workers: PositiveInt | None = None  # runs at once; default: one per GPU slot, else CPUs // threads
    gpus: list[str] | None = None  # GPU ids to use (default: all visible); [] forces CPU slots
    runs_per_gpu: PositiveInt = 1  # small models can share a GPU
    python: str | None = None  # interpreter for the workers (default: this one)


@executors.register("subprocess")
class SubprocessExecutor(FanoutExecutor):
    """A fresh process per run; a pool sized to the visible GPUs (pinned), or CPU slots."""

    Options = PoolOptions
    options: PoolOptions

    def slots(self) -> list[Slot]:
        o, cpus = self.options, cpu_count()
        gpus = visible_gpus() if o.gpus is None else o.gpus
        if gpus:
            ids = [g for g in gpus for _ in range(o.runs_per_gpu)]
            if o.workers is not None:
                ids = ids[: o.workers]
            threads = o.threads or max(1, cpus // len(ids))
            return [Slot(f"gpu {g}", {"CUDA_VISIBLE_DEVICES": g, **thread_env(threads)}, threads, g) for g in ids]
        if o.workers is None:
            threads = o.threads or 1
            workers = max(1, cpus // threads)
        else:
            workers, threads = o.workers, o.threads or max(1, cpus // o.workers)
        return [Slot(f"cpu slot {i}", {"CUDA_VISIBLE_DEVICES": "", **thread_env(threads)}, threads)
                for i in range(workers)]

    def fan(self, specs: list[RunSpec], store: Store, wait: bool) -> list[dict[str, Any]]:
        slots = self.slots()
        free = Slots(slots)
        gpu = bool(slots[0].device)
        need = {s.run_id: gpus_needed(s) if gpu else min(workers(s), len(slots)) for s in specs}
        results: dict[str, dict[str, Any]] = {}
        for s in [s for s in specs if gpu and need[s.run_id] > free.gpus]:  # recorded, and the grid goes on
            results[s.run_id] = lost_run(s, store, f"the run needs {need[s.run_id]} GPUs (gpus: {s.settings.gpus or 1}"
                                                   f" × parallel.data: {workers(s)}) but the subprocess pool has "
                                                   f"{free.gpus}; run it where more GPUs are visible "
                                                   f"(CUDA_VISIBLE_DEVICES, executor.subprocess.gpus)")
        for run_id in results:
            why = results[run_id].get("error") or "held by another process"
            self.console.print(f"  {run_id[:70]}: {why}", markup=False, highlight=False)
        specs_to_run = [s for s in specs if s.run_id not in results]
        self._procs: dict[str, subprocess.Popen] = {}
        kind = slots[0].label.split()[0]
        title = f"subprocess pool: {len(slots)} {kind} slots, {slots[0].threads} thread(s) per run"
        with board(self.console, len(specs), title, store) as b, cf.ThreadPoolExecutor(len(slots)) as pool:

            def one(spec: RunSpec) -> tuple[dict[str, Any], str]:
                taken = free.take(need[spec.run_id])
                try:
                    b.started()
                    slot = joined(taken, workers(spec))
                    return self._run_one(spec, store, slot, wait), slot.label
                finally:
                    free.give(taken)

            futures: dict[cf.Future, RunSpec] = {pool.submit(one, spec): spec for spec in specs_to_run}
            try:
                todo = set(futures)
                while todo:
                    finished, todo = cf.wait(todo, timeout=1.0, return_when=cf.FIRST_COMPLETED)
                    b.tick(futures[f] for f in todo)  # step lines, where the console is not a terminal
                    for fut in finished:
                        summary, where = fut.result()
                        spec = futures[fut]
                        if "user_error" in summary:
                            raise UserError(f"run {spec.run_id}: {summary['user_error']}")
                        results[spec.run_id] = summary
                        b.finished(spec, summary, where)
            except BaseException:
                for fut in futures:
                    fut.cancel()
                for proc in list(self._procs.values()):
                    proc.kill()  # our own children, by handle
                raise
        return [results[s.run_id] for s in specs if s.run_id in results]

    def _run_one(self, spec: RunSpec, store: Store, slot: Slot, wait: bool) -> dict[str, Any]:
        """Start `python -m zobench.worker` for one spec; its output goes to the run's worker.log."""
        root = str(Path(store.root).resolve())
        env = {**os.environ, **slot.env}
        package_parent = str(Path(__file__).resolve().parents[2])  # works from a plain checkout too
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
        log = store.run_dir(spec.run_id) / "worker.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        if workers(spec) > 1:
            return self._run_workers(spec, store, slot, wait, env, log)
        cmd = [self.options.python or sys.executable, "-m", "zobench.worker", "-", "--results", root,
               "--threads", str(slot.threads), *(["--wait"] if wait else [])]
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, env=env)
            self._procs[spec.run_id] = proc
            try:
                proc.communicate(spec.model_dump_json().encode())
            finally:
                self._procs.pop(spec.run_id, None)
        if proc.returncode == HELD_ELSEWHERE:
            return {"held_elsewhere": True, "run_id": spec.run_id}
        if proc.returncode == 2:
            lines = log.read_text(errors="replace").splitlines()
            message = next((ln[len("error: "):] for ln in reversed(lines) if ln.startswith("error: ")), None)
            if message:
                return {"user_error": message}
        if proc.returncode != 0:
            how = (f"killed by signal {-proc.returncode}" if proc.returncode < 0
                   else f"exited with code {proc.returncode}")
            return lost_run(spec, store, f"worker process {how} on {slot.label}; see {log}")
        summary = store.summary(spec.run_id)
        if summary is None or summary.get("spec_hash") != spec.spec_hash:
            return lost_run(spec, store, f"worker exited cleanly but wrote no summary; see {log}")
        return summary

    def _run_workers(self, spec: RunSpec, store: Store, slot: Slot, wait: bool, env: dict[str, str],
                     log: Path) -> dict[str, Any]:
        """A `parallel: {data: N}` run: torchrun starts N local workers (zobench.parallel.launch --spec), on a
        free port of its own; rank 0 writes the run's summary, and what it returned to a file read here."""
        n = workers(spec)
        with tempfile.TemporaryDirectory(prefix="zobench-launch-") as tmp:
            spec_file, out_file = Path(tmp) / "spec.json", Path(tmp) / "result.json"
            spec_file.write_text(spec.model_dump_json())
            cmd = [self.options.python or sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc-per-node", str(n), "-m", "zobench.parallel.launch", "--spec", str(spec_file),
                   "--results", str(Path(store.root).resolve()), "--out", str(out_file),
                   "--threads", str(slot.threads), *(["--wait"] if wait else [])]
            with log.open("wb") as out:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
                self._procs[spec.run_id] = proc
                try:
                    proc.wait()
                finally:
                    self._procs.pop(spec.run_id, None)
            try:
                result = json.loads(out_file.read_text())
            except (OSError, ValueError):
                result = None
        if result is not None and ("user_error" in result or result.get("held_elsewhere")):
            return result
        if proc.returncode != 0 or result is None:
            code = proc.returncode
            how = f"exited with code {code}" if code >= 0 else f"killed by signal {-code}"
            return lost_run(spec, store, f"torchrun with {n} workers {how} on {slot.label}; see {log}")
        summary = store.summary(spec.run_id)
        if summary is None or summary.get("spec_hash") != spec.spec_hash:
            return lost_run(spec, store, f"torchrun's {n} workers exited cleanly but wrote no summary; see {log}")
        return summary
