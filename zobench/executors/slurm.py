"""`slurm`: one Slurm array job for the grid, through submitit; one array task per run.

Each task runs `zobench.worker.run_spec_json`, which writes through the store, so the results folder
must be on a filesystem the nodes share. Preempted or timed-out tasks are requeued (`requeue`) and start
the run again: the store never holds half a run. `cluster: local` runs the same code path on this
machine through submitit's local executor (tests, a workstation), at most `array_parallelism` at once.

A run with `parallel: {data: N}` is a job with N tasks on one node (`tasks_per_node`, and N × `gpus` GPUs,
`gpus_per_node` being the GPUs of a one-process run): each task exports the torch.distributed environment from
Slurm's (submitit's `TorchDistributedEnvironment`: MASTER_ADDR is the job's first host, RANK its global task id)
and joins the group through env:// (`zobench.parallel.workers.run_spec_distributed`). Runs of one shape share an
array job; each shape is an array of its own (an array's tasks all get the same resources).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt

from zobench.errors import UserError
from zobench.executors.fanout import FanoutExecutor, board, check_user_error, gpus_needed, lost_run, workers
from zobench.executors.local import ExecutorOptions
from zobench.executors.pool import cpu_count, visible_gpus
from zobench.grid import RunSpec
from zobench.registry import executors
from zobench.store import Store
from zobench.worker import run_spec_json


class SlurmOptions(ExecutorOptions):
    cluster: Literal["slurm", "local"] = "slurm"
    folder: str | None = Field(None, description="submitit's folder (scripts, logs); default RESULTS/.submitit/<suite>")
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    gpus_per_node: NonNegativeInt = 1
    cpus_per_task: PositiveInt | None = None
    mem_gb: PositiveFloat | None = None
    timeout_min: PositiveInt = 60
    array_parallelism: PositiveInt = 64
    requeue: bool = True
    max_requeues: NonNegativeInt = 3
    setup: list[str] = Field(default_factory=list, description="shell lines run before each task (module load ...)")
    sbatch: dict[str, Any] = Field(default_factory=dict, description="further sbatch options, e.g. {exclusive: true}")
    wait: bool = True
    poll_s: PositiveFloat = 5.0


class Run:
    """The callable each array task runs. Checkpointable: on preemption or timeout submitit requeues
    it with the same arguments (the run starts again; its folder has no summary yet)."""

    def __init__(self, requeue: bool) -> None:
        self.requeue = requeue

    def __call__(self, spec_json: str, results: str, threads: int | None, wait: bool) -> dict[str, Any]:
        from zobench.grid import RunSpec

        if workers(RunSpec.model_validate_json(spec_json)) > 1:  # one of the job's N tasks
            import submitit

            from zobench.parallel.workers import run_spec_distributed

            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
            return run_spec_distributed(spec_json, results, threads, wait)
        return run_spec_json(spec_json, results, threads, wait)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs) if self.requeue else None


@executors.register("slurm")
class SlurmExecutor(FanoutExecutor):
    """Slurm job arrays through submitit (partition, GPUs, time limit, parallelism, requeue)."""

    Options = SlurmOptions
    options: SlurmOptions

    def executor(self, folder: Path) -> Any:
        try:
            import submitit
        except ImportError:
            raise UserError("executor 'slurm' needs submitit: pip install 'zobench[cluster]'") from None
        o = self.options
        missing = [c for c in ("sbatch", "srun") if shutil.which(c) is None] if o.cluster == "slurm" else []
        if missing:
            raise UserError(f"executor 'slurm': no {' or '.join(missing)} on PATH; run from a Slurm login node, or "
                            f"set executor.slurm.cluster: local to run the array on this machine")
        ex = submitit.AutoExecutor(folder=folder, cluster=o.cluster, slurm_max_num_timeout=o.max_requeues,
                                   local_max_num_timeout=o.max_requeues)
        params: dict[str, Any] = {"name": "zobench", "timeout_min": o.timeout_min}
        if o.gpus_per_node:  # no --gpus-per-node=0: clusters without GPU resources reject it
            params["gpus_per_node"] = o.gpus_per_node
        if o.cpus_per_task is not None:
            params["cpus_per_task"] = o.cpus_per_task
        if o.mem_gb is not None:
            params["mem_gb"] = o.mem_gb
        if o.cluster == "slurm":
            params["slurm_array_parallelism"] = o.array_parallelism
            for key in ("partition", "account", "qos", "constraint"):
                if getattr(o, key) is not None:
                    params[f"slurm_{key}"] = getattr(o, key)
            extra = dict(o.sbatch)
            if o.requeue:
                extra.setdefault("requeue", True)  # node failures too, not only preemption
            if extra:
                params["slurm_additional_parameters"] = extra
            if o.setup:
                params["slurm_setup"] = list(o.setup)
        elif o.setup:
            params["local_setup"] = list(o.setup)
        ex.update_parameters(**params)
        return ex

    def resources(self, spec: RunSpec) -> dict[str, int]:
        """What one run's job asks for: a task per worker, and its GPUs (none on a cluster without GPUs)."""
        gpus = gpus_needed(spec, self.options.gpus_per_node) if self.options.gpus_per_node else 0
        return {"tasks_per_node": workers(spec), "gpus_per_node": gpus}

    def threads(self) -> int | None:
        o = self.options
        if o.threads or o.cpus_per_task:
            return o.threads or o.cpus_per_task
        return 1 if o.cluster == "local" else None  # on Slurm: torch sees the job's CPUs

    def fan(self, specs: list[RunSpec], store: Store, wait: bool) -> list[dict[str, Any]]:
        o = self.options
        folder = Path(o.folder) if o.folder else Path(store.root) / ".submitit" / store.dir.name
        ex = self.executor(folder)
        root, threads, fn = str(Path(store.root).resolve()), self.threads(), Run(o.requeue)
        args = [(s.model_dump_json(), root, threads, wait) for s in specs]
        if o.cluster == "slurm":
            shapes: dict[tuple, list[int]] = {}
            for i, spec in enumerate(specs):
                shapes.setdefault(tuple(sorted(self.resources(spec).items())), []).append(i)
            jobs: dict[int, Any] = {}
            for shape, index in shapes.items():
                ex.update_parameters(**{k: v for k, v in shape if v or k != "gpus_per_node"})
                with ex.batch():
                    submitted = [ex.submit(fn, *args[i]) for i in index]
                jobs.update(zip(index, submitted, strict=True))
                shown = ", ".join(f"{k}={v}" for k, v in shape if v)
                self.console.print(f"submitted array job {submitted[0].job_id.split('_')[0]}: {len(submitted)} runs "
                                   f"({shown}), at most {o.array_parallelism} at once; logs in {folder}/",
                                   highlight=False)
            if not o.wait:
                self.console.print(f"not waiting (wait: false); when it ends: zobench report {store.dir}",
                                   highlight=False)
                return []
            return self._collect(specs, store, jobs, [], ex, folder)
        return self._collect(specs, store, {}, args, ex, folder)

    def _local_slots(self) -> list[tuple[int, ...]]:
        """On `cluster: local`, what each concurrent job gets: a group of GPUs, or nothing (CPU)."""
        o = self.options
        gpus = [int(g) for g in visible_gpus() if g.isdigit()]
        if o.gpus_per_node and gpus:
            groups = [tuple(gpus[i:i + o.gpus_per_node]) for i in range(0, len(gpus), o.gpus_per_node)]
            groups = [g for g in groups if len(g) == o.gpus_per_node][: o.array_parallelism]
            if not groups:
                raise UserError(f"executor 'slurm' (cluster: local): each run asks for {o.gpus_per_node} GPUs but "
                                f"{len(gpus)} are visible; lower executor.slurm.gpus_per_node")
            return groups
        return [()] * min(o.array_parallelism, max(1, cpu_count() // (self.threads() or 1)))

    def _collect(self, specs: list[RunSpec], store: Store, jobs: dict[int, Any], args: list[tuple],
                 ex: Any, folder: Path) -> list[dict[str, Any]]:
        """Wait for the jobs (submitting local ones as slots free up) and gather their summaries."""
        o = self.options
        results: dict[int, dict[str, Any]] = {}
        local = bool(args)
        free = self._local_slots() if local else []
        held: dict[int, tuple[int, ...]] = {}
        queued = list(range(len(args)))
        title = (f"submitit local: {len(free)} at once" if local else "slurm array") + f", {len(specs)} runs"
        with board(self.console, len(specs), title, store) as b:
            try:
                while queued or jobs:
                    while queued and free:
                        i, slot = queued.pop(0), free.pop(0)
                        ex.update_parameters(gpus_per_node=len(slot), tasks_per_node=workers(specs[i]),
                                             **({"local_visible_gpus": slot} if slot else {}))
                        jobs[i], held[i] = ex.submit(Run(o.requeue), *args[i]), slot
                        b.started()
                    for i, job in list(jobs.items()):
                        if not job.done():
                            continue
                        del jobs[i]
                        if i in held:
                            free.append(held.pop(i))
                        results[i] = self._result(specs[i], store, job, folder)
                        b.finished(specs[i], results[i], f"job {job.job_id}")
                    b.tick(specs[i] for i in jobs)  # step lines, where the console is not a terminal
                    if queued or jobs:
                        time.sleep(min(o.poll_s, 1.0) if local else o.poll_s)
            except BaseException:
                if local:
                    for job in jobs.values():
                        job.cancel(check=False)
                else:
                    ids = sorted({j.job_id.split("_")[0] for j in jobs.values()})
                    self.console.print(f"interrupted: the Slurm jobs keep running and write to {store.dir}; "
                                       f"cancel them with: scancel {' '.join(ids)}", highlight=False)
                raise
        return [results[i] for i in sorted(results)]

    def _result(self, spec: RunSpec, store: Store, job: Any, folder: Path) -> dict[str, Any]:
        try:
            return check_user_error(job.results()[0])  # a job of N tasks: rank 0's, which wrote the run
        except UserError:
            raise
        except Exception as e:  # job failed, was cancelled or timed out past its requeues
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            return lost_run(spec, store, f"submitit job {job.job_id} did not finish: {first[:300]}; "
                                         f"logs in {folder}/")
