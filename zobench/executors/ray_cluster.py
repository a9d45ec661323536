"""`ray`: one Ray task per run on an existing cluster (`address`), or on a local one started for the
suite and stopped after it.

A task asks for `num_gpus` (default: 1 when the cluster has GPUs) and `num_cpus`; Ray pins the GPU
with CUDA_VISIBLE_DEVICES. Tasks write through the store, so on a multi-node cluster the results
folder must be on a filesystem the nodes share (else copy each node's results/<suite>/ together:
`zobench report` merges whatever summaries it finds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from zobench.errors import UserError
from zobench.executors.fanout import FanoutExecutor, board, check_user_error, lost_run
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
        threads = o.threads or max(1, int(o.num_cpus))
        task = ray.remote(run_spec_json).options(num_cpus=o.num_cpus, num_gpus=gpus, max_retries=o.max_retries)
        root = str(Path(store.root).resolve())
        refs = {task.remote(s.model_dump_json(), root, threads, wait): i for i, s in enumerate(specs)}
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
                for ref in pending:
                    ray.cancel(ref, force=True)
                raise
        return [results[i] for i in sorted(results)]

    @staticmethod
    def _result(ray: Any, ref: Any, spec: RunSpec, store: Store) -> dict[str, Any]:
        try:
            return check_user_error(ray.get(ref))
        except UserError:
            raise
        except ray.exceptions.RayError as e:  # the task died (worker or node lost) past its retries
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            return lost_run(spec, store, f"ray task did not finish: {first[:300]}")
