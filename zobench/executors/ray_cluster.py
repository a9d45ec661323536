"""`ray`: one Ray task per run on an existing cluster (`address`), or on a local one started for the
suite and stopped after it.

A task asks for `num_gpus` (default: 1 when the cluster has GPUs) and `num_cpus`; Ray pins the GPU
with CUDA_VISIBLE_DEVICES. Tasks write through the store, so on a multi-node cluster the results
folder must be on a filesystem the nodes share (else copy each node's results/<suite>/ together:
`zobench report` merges whatever summaries it finds).

A run with `parallel: {data: N}` gets a placement group of N bundles ({CPU: num_cpus, GPU: gpus} each,
strategy PACK: one node where it fits) and N tasks, one per bundle, that meet through a file:// rendezvous in
the results folder (shared by the nodes already) and train as torch.distributed ranks; rank 0 writes the run.
Ray Train's TorchTrainer would do the same rendezvous but writes its own checkpoints and results; the runs
here already have a store.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from zobench.errors import UserError
from zobench.executors.fanout import FanoutExecutor, board, check_user_error, lost_run, workers
from zobench.executors.local import ExecutorOptions
from zobench.grid import RunSpec
from zobench.registry import executors
from zobench.store import Store
from zobench.worker import run_spec_json


class RayOptions(ExecutorOptions):
    address: str | None = Field(None, description="'auto', 'host:port' or 'ray://host:port'; None: start a local one")
    num_cpus: PositiveFloat = 1.0  # per run; also its torch threads unless `threads` is given
    num_gpus: NonNegativeFloat | None = None  # per run; None: 1 when the cluster has GPUs, else 0
    max_retries: NonNegativeInt = 1  # a run whose worker or node died is run again (from the start)
    local_cpus: PositiveInt | None = None  # CPUs of a local cluster (default: all)
    local_gpus: NonNegativeInt | None = None
    runtime_env: dict[str, Any] | None = None  # passed to ray.init (env_vars, working_dir, pip, ...)


def distributed_worker(spec_json: str, results: str, threads: int, wait: bool, rank: int, world: int,
                       init: str) -> dict[str, Any]:
    """One Ray task of a `parallel: {data: N}` run: rank `rank` of `world`, meeting the others at `init`."""
    from zobench.parallel.workers import run_spec_distributed

    return run_spec_distributed(spec_json, results, threads, wait, init=init, rank=rank, world=world)


def placement(spec: RunSpec, num_cpus: float, gpus: float) -> dict[str, Any]:
    """The placement group a run asks for: a bundle per worker (gpus: the run's `gpus` per worker where the
    cluster has GPUs), packed onto one node where it fits."""
    per_worker = (spec.settings.gpus or 1) * gpus if gpus else 0.0
    bundle = {"CPU": num_cpus, **({"GPU": per_worker} if per_worker else {})}
    return {"bundles": [dict(bundle) for _ in range(workers(spec))], "strategy": "PACK"}


@executors.register("ray")
class RayExecutor(FanoutExecutor):
    """One Ray task per run (num_gpus=1) on an existing cluster, or a local one."""

    Options = RayOptions
    options: RayOptions

    def connect(self) -> tuple[Any, bool]:
        """(ray module, whether we started it and must stop it)."""
        try:
            import ray
        except ImportError:
            raise UserError("executor 'ray' needs ray: pip install 'zobench[cluster]'") from None
        o = self.options
        if ray.is_initialized():
            return ray, False
        kwargs: dict[str, Any] = {"log_to_driver": False, "runtime_env": o.runtime_env}
        if o.address in (None, "local"):
            kwargs.update(address="local", num_cpus=o.local_cpus, num_gpus=o.local_gpus, include_dashboard=False,
                          _node_ip_address="127.0.0.1")
        else:
            kwargs["address"] = o.address
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = "a local cluster" if kwargs["address"] == "local" else f"the cluster at '{o.address}'"
            raise UserError(f"executor 'ray': could not start or reach {where}: {e}; check executor.ray.address "
                            f"(e.g. 'auto' on a node of a running cluster)") from None
        return ray, True

    def run(self, specs: list[RunSpec], store: Store) -> list[dict[str, Any]]:
        if not specs:
            return []
        self._ray, started = self.connect()
        try:
            return super().run(specs, store)
        finally:
            if started:
                self._ray.shutdown()

    def fan(self, specs: list[RunSpec], store: Store, wait: bool) -> list[dict[str, Any]]:
        ray = self._ray
        o = self.options
        resources = ray.cluster_resources()
        gpus = o.num_gpus if o.num_gpus is not None else (1.0 if resources.get("GPU", 0) > 0 else 0.0)
        if gpus > resources.get("GPU", 0) or o.num_cpus > resources.get("CPU", 0):
            raise UserError(f"executor 'ray': each run asks for {o.num_cpus:g} CPU and {gpus:g} GPU but the cluster "
                            f"has {resources.get('CPU', 0):g} CPU and {resources.get('GPU', 0):g} GPU; "
                            f"lower executor.ray.num_cpus/num_gpus")
        for spec in specs:  # a run that can never be placed would wait forever
            need = placement(spec, o.num_cpus, gpus)["bundles"]
            if (sum(b["CPU"] for b in need) > resources.get("CPU", 0)
                    or sum(b.get("GPU", 0) for b in need) > resources.get("GPU", 0)):
                raise UserError(f"executor 'ray': run {spec.run_id} needs {len(need)} worker(s) of {need[0]} but the "
                                f"cluster has {resources.get('CPU', 0):g} CPU and {resources.get('GPU', 0):g} GPU; "
                                f"lower parallel.data, gpus or executor.ray.num_cpus/num_gpus")
        threads = o.threads or max(1, int(o.num_cpus))
        task = ray.remote(run_spec_json)
        root = str(Path(store.root).resolve())
        refs, self._groups = {}, []
        for i, s in enumerate(specs):
            if workers(s) > 1:
                refs[self._submit_workers(ray, s, root, threads, wait, gpus, store)] = i
            else:
                per_run = task.options(num_cpus=o.num_cpus, max_retries=o.max_retries,
                                       num_gpus=placement(s, o.num_cpus, gpus)["bundles"][0].get("GPU", 0))
                refs[per_run.remote(s.model_dump_json(), root, threads, wait)] = i
        at_once = int(min(resources.get("CPU", 0) // o.num_cpus, resources.get("GPU", 0) // gpus if gpus else 1e9))
        title = (f"ray: {resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU; per run {o.num_cpus:g} CPU, "
                 f"{gpus:g} GPU, {threads} thread(s): up to {at_once} at once")
        results: dict[int, dict[str, Any]] = {}
        with board(self.console, len(specs), title, store) as b:
            for _ in range(min(at_once, len(specs))):
                b.started()
            pending = list(refs)
            try:
                while pending:
                    done, pending = ray.wait(pending, num_returns=1, timeout=1.0)  # timeout: Ctrl-C gets through
                    b.tick(specs[refs[ref]] for ref in pending)  # step lines, where the console is not a terminal
                    for ref in done:
                        i = refs[ref]
                        results[i] = self._result(ray, ref, specs[i], store)
                        b.finished(specs[i], results[i], results[i].get("env", {}).get("host", ""))
                        if len(pending) >= at_once:
                            b.started()
            except BaseException:
                for ref in pending + [r for _, refs_, _ in self._groups for r in refs_]:
                    ray.cancel(ref, force=True)
                raise
            finally:
                for group, _, rendezvous in self._groups:
                    ray.util.remove_placement_group(group)
                    rendezvous.unlink(missing_ok=True)
        return [results[i] for i in sorted(results)]

    def _submit_workers(self, ray: Any, spec: RunSpec, root: str, threads: int, wait: bool, gpus: float,
                        store: Store) -> Any:
        """N tasks in a placement group of N bundles, rank r in bundle r; returns rank 0's ref (the run's)."""
        try:
            from ray.util import placement_group
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
        except ImportError:
            raise UserError(f"executor 'ray': run {spec.run_id} asks for parallel: {{data: {workers(spec)}}}, which "
                            f"needs Ray's placement groups (ray >= 2.0; this is ray {ray.__version__}); upgrade ray, "
                            f"or run it with the subprocess or slurm executor") from None
        o, shape = self.options, placement(spec, self.options.num_cpus, gpus)
        group = placement_group(shape["bundles"], strategy=shape["strategy"])
        rendezvous = (store.run_dir(spec.run_id) / f".rendezvous-{uuid.uuid4().hex}").resolve()
        rendezvous.parent.mkdir(parents=True, exist_ok=True)
        task, world = ray.remote(distributed_worker), len(shape["bundles"])
        refs = []
        for r, bundle in enumerate(shape["bundles"]):  # a worker lost is the run lost: no retry of one rank alone
            where = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=r)
            refs.append(task.options(num_cpus=o.num_cpus, num_gpus=bundle.get("GPU", 0), max_retries=0,
                                     scheduling_strategy=where)
                        .remote(spec.model_dump_json(), root, threads, wait, r, world, f"file://{rendezvous}"))
        self._groups.append((group, refs[1:], rendezvous))
        return refs[0]

    @staticmethod
    def _result(ray: Any, ref: Any, spec: RunSpec, store: Store) -> dict[str, Any]:
        try:
            return check_user_error(ray.get(ref))
        except UserError:
            raise
        except ray.exceptions.RayError as e:  # the task died (worker or node lost) past its retries
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            return lost_run(spec, store, f"ray task did not finish: {first[:300]}")
