"""One RunSpec → one result. The only training loop in zobench.

Builds model, scheme, task workload and method; steps with a fixed batch size; evaluates on dev on a
schedule; reports the test metric at the best dev evaluation; records a curve row per logged step and
a summary. A run that diverges, runs out of memory or crashes is recorded with that status.
"""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import random
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zobench import registry
from zobench.errors import UserError
from zobench.grid import RunSpec
from zobench.measure import Clock, PeakMemory, environment, inference_probe, timed
from zobench.models.base import compile_blocks
from zobench.optim.base import Method
from zobench.store import Cost, Metrics, Outcome, RunRecord, Store, Timing
from zobench.workload import Workload

BEST_STATE = ".best-dev.pt"  # the parameters at the best dev evaluation, while the run trains


class Diverged(Exception):
    def __init__(self, step: int, loss: float) -> None:
        super().__init__(f"loss became {loss} at step {step}")
        self.step = step


def resolve_device(name: str) -> torch.device:
    """The device a run trains on, decided where it executes (a login node submitting a Slurm or Ray grid
    has no GPU; its jobs do)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device 'cuda' was asked for but no GPU is visible on {platform.node()} "
                        f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
                        f"run it where a GPU is, or use device: auto or cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


_FALLBACK_SAID: set[str] = set()  # results folders whose suite was told about device: auto's fallback


def device_fallback(name: str, device: torch.device) -> str | None:
    """Why an `auto` run is on the CPU, said loudly: an OPT-13B grid would otherwise crawl for days unnoticed.
    (The host and CUDA_VISIBLE_DEVICES are in the printed warning and the summary's env.)"""
    if name != "auto" or device.type != "cpu":
        return None
    return "device: auto found no GPU (torch.cuda.is_available() is False): running on the CPU"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Batches:
    """Shuffled epochs of example indices, seeded; fixed batch size (the last partial batch is dropped)."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size = n, min(batch_size, n) if n else batch_size
        self.rng = np.random.default_rng(seed)
        self.order: list[int] = []

    def next(self) -> list[int]:
        if self.n == 0:
            return []
        if len(self.order) < self.batch_size:
            self.order = [int(i) for i in self.rng.permutation(self.n)]
        batch, self.order = self.order[: self.batch_size], self.order[self.batch_size:]
        return batch


@dataclass
class Trained:
    """What training and the final evaluation produced, for the record and for examples.json."""

    metrics: Metrics
    cost: Cost
    timing: Timing


def run(spec: RunSpec, store: Store, progress: Any = None) -> RunRecord:
    """Train and evaluate one run; write its folder; return its record. Never raises for a bad run."""
    run_id = spec.run_id
    store.write_spec(run_id, spec.model_dump(mode="json"))
    try:
        device, device_error = resolve_device(spec.settings.device), None
    except UserError as e:  # device: cuda where none is visible: this run fails, saying where it ran
        device, device_error = torch.device("cpu"), str(e)
    fallback = device_fallback(spec.settings.device, device)
    if fallback and str(store.dir.resolve()) not in _FALLBACK_SAID:  # once per suite and process, not per run
        _FALLBACK_SAID.add(str(store.dir.resolve()))
        print(f"WARNING [{run_id}]: {fallback} on {platform.node()}, CUDA_VISIBLE_DEVICES="
              f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')} (said once for the suite; each run's summary "
              f"records it as device_fallback)", file=sys.stderr, flush=True)
    outcome = Outcome(status="failed", attempt=len(store.attempts(run_id)) or None, pid=os.getpid(),
                      **({"device_fallback": fallback} if fallback else {}))
    record = RunRecord(run_id=run_id, spec_hash=spec.spec_hash, suite=spec.suite, seed=spec.seed,
                       spec=spec.model_dump(mode="json"), env=environment(device), outcome=outcome)
    curve: list[dict[str, Any]] = []
    started = time.perf_counter()
    memory, clock = PeakMemory(device), Clock(device)
    bundle = workload = method = None
    example_ids: dict[str, list[str]] = {}
    timing = Timing()
    try:
        if device_error:
            raise UserError(device_error)
        with memory, clock:
            bundle, workload = _workload(spec, device)
            # a run that fails later still lands in its task's table column, and says which rows it saw
            record.metrics = Metrics(metric=workload.metric, higher_is_better=workload.higher_is_better)
            example_ids = workload.example_ids
            workload, method, parallel = _method(spec, workload, clock)
            trained = _train(spec, bundle, workload, method, parallel, device, curve, progress, memory, clock,
                             store.run_dir(run_id) / BEST_STATE)
        record.metrics, record.cost, timing = trained.metrics, trained.cost, trained.timing
        record.info = workload.info
        if spec.settings.shard is not None:  # each GPU's peak, not only the run device's (parallel/sharded.py)
            from zobench.parallel.sharded import peak_allocated_per_device

            record.info["peak_allocated_per_device"] = peak_allocated_per_device(workload.module)
        outcome.status = "done"
    except Diverged as e:
        outcome.status, outcome.diverged_at_step, outcome.error = "diverged", e.step, str(e)
    except (torch.cuda.OutOfMemoryError, MemoryError) as e:
        outcome.status, outcome.error = "oom", f"{type(e).__name__}: {e}"
    except Exception as e:  # the grid goes on (a UserError here too: planning checked what it could)
        if isinstance(e, RuntimeError) and "out of memory" in str(e):  # CUDA errors not typed as OOM (cuBLAS)
            outcome.status, outcome.error = "oom", f"{type(e).__name__}: {e}"
        else:
            store.write_text(run_id, "traceback.txt", traceback.format_exc())
            outcome.error = f"{type(e).__name__}: {e}"
    bundle = workload = method = None  # what the run held: freed before the next run starts
    (store.run_dir(run_id) / BEST_STATE).unlink(missing_ok=True)  # a failed run's best-dev parameters
    if outcome.status == "oom":  # free what the failed run held so the next one starts clean
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    timing.wall_s, timing.phases = time.perf_counter() - started, clock.summary()
    record.timing = timing
    record.memory = memory.record()
    record.memory_by_phase = memory.by_window()  # setup / inference probe / train / evaluation
    if example_ids:  # which rows the run saw
        store.write_text(run_id, "examples.json", json.dumps(example_ids))
        record.examples_file = "examples.json"
    try:
        store.write_curve(run_id, curve)
    except OSError as e:  # a full disk: recorded in the summary (small), and the grid goes on
        outcome.status, outcome.error = "failed", f"curve.parquet not written: {e}"
    record.outcome = outcome
    store.write_record(run_id, record)  # says so in one line, without raising, when it cannot be written
    return record


def _workload(spec: RunSpec, device: torch.device) -> tuple[Any, Workload]:
    """The model wrapped by its scheme (None for a synthetic problem) and the task's workload on it."""
    seed_everything(spec.seed)
    shard = spec.settings.shard  # a sharded model is loaded on the CPU, then placed (zobench/parallel/sharded.py)
    bundle = registry.models.get(spec.model.name).load(spec.model.params, torch.device("cpu") if shard else device,
                                                       spec.seed)
    if shard is not None and bundle is not None:
        from zobench.parallel.sharded import bytes_per_device
        from zobench.parallel.sharded import shard as place

        bundle.model = place(bundle.model, shard.device_map, shard.max_memory)
    if bundle is not None:  # a scheme may wrap the model (peft): the task must see the wrapped one
        bundle.model = registry.schemes.get(spec.scheme.name).apply(bundle.model, spec.scheme.params) or bundle.model
    workload = registry.tasks.get(spec.task.name).build(spec.task.params, bundle, device, spec.seed)
    if shard is not None and bundle is not None:
        workload.info["param_bytes_per_device"] = bytes_per_device(bundle.model)
    return bundle, workload


def _method(spec: RunSpec, workload: Workload, clock: Clock) -> tuple[Workload, Method, Any]:
    """The method over the workload's trainable parameters, prepared (compiled first when asked); with
    `parallel: {data: N}` the workload sharded and the method joined to the other workers (zobench/parallel)."""
    if spec.settings.compile:  # before any forward: the probe, preparation and evaluations run compiled too
        torch._dynamo.reset()  # this run's own graphs: none left by an earlier run in this process
        compile_blocks(workload.module)
    method_cls = registry.methods.get(spec.method.name)
    if spec.settings.offload is not None:  # ZO2-style: layers trained block by block from a slower tier
        from zobench.parallel.offload_hf import offload_method

        method = offload_method(spec.settings.offload, workload.module, spec.method.name, spec.method.params,
                                spec.seed)
    else:
        method = method_cls(workload.trainable(), method_cls.Params.model_validate(spec.method.params), spec.seed)
    parallel = None
    if spec.settings.parallel is not None and spec.settings.parallel.data > 1:  # one of N workers: parallel/data.py
        from zobench.parallel.data import join

        workload, method, parallel = join(spec.settings.parallel.data, spec.settings.parallel.mode, workload, method)
    method.match_model(workload.module)  # first-order: mixed precision when the model's weights are half precision
    if spec.settings.fsdp is not None:  # first-order, sharded (and offloaded) by FSDP2: zobench/parallel/fsdp.py
        from zobench.parallel.fsdp import shard_method

        method = shard_method(spec.settings.fsdp, workload.module, method, next(workload.module.parameters()).device)
    if method.prepares:  # training-free baselines: ICL sets demonstrations, linear probing fits its probe
        with clock.phase("prepare"):
            method.prepare(workload)
    return workload, method, parallel


def _train(spec: RunSpec, bundle: Any, workload: Workload, method: Method, parallel: Any, device: torch.device,
           curve: list[dict[str, Any]], progress: Any, memory: PeakMemory, clock: Clock, best_file: Path) -> Trained:
    """The training loop. With `select: best-dev` the trainable parameters at the best dev evaluation go to
    `best_file` on disk, as MeZO's trainer keeps its best checkpoint (HF Trainer, load_best_model_at_end), not
    to a copy in memory that every method's training peak would carry; test is then scored on them."""
    settings = spec.settings
    amp = method.autocast  # evaluations run at the training forward's precision
    total_steps = settings.steps if method.takes_steps else 0  # zero-shot, ICL, LP: no steps
    workload.module.train(method.needs_grad)  # ZO: both forwards must see the same network (no dropout)
    if not method.needs_grad:
        workload.module.requires_grad_(False)  # nothing to record for autograd

    # forward-only passes on a training-sized batch: the inference peak a ZO step should approach
    probe_batch = workload.make_batch(Batches(workload.train_size, settings.batch_size, spec.seed).next())
    with memory.window("inference"), amp():
        probe_s = inference_probe(workload.loss, workload.module, probe_batch, device)
    del probe_batch
    memory.switch("train")
    loss = timed("forward", workload.loss)
    metric, sign = workload.metric, (1 if workload.higher_is_better else -1)
    best: dict[str, Any] = {"score": -math.inf, "step": None, "dev": None, "saved": False}

    settle = method.settle  # a deferred update is done before θ is read

    def evaluate_dev(step: int, row: dict[str, Any]) -> None:
        with clock.phase("step"):  # training work: counted as such
            settle()
        with clock.phase("evaluation"), memory.window("evaluation"), amp():
            dev = workload.evaluate("dev")
        row.update({f"dev_{k}": v for k, v in dev.items()})
        if settings.select == "last" or sign * dev[metric] > best["score"]:
            best.update(score=sign * dev[metric], step=step, dev=dev)
            if settings.select == "best-dev":
                trainable = set(method.params)
                best_file.parent.mkdir(parents=True, exist_ok=True)
                torch.save({k: v.detach().cpu() for k, v in workload.module.named_parameters() if v in trainable},
                           best_file)
                best["saved"] = True

    if settings.eval_at_start:
        row = {"step": 0, "forward_passes": 0, "backward_passes": 0, "wall_s": 0.0}
        evaluate_dev(0, row)
        curve.append(row)
        best["initial"] = row.get(f"dev_{metric}")

    batches = Batches(workload.train_size, settings.batch_size, spec.seed)
    step_times: list[float] = []
    eval_every = settings.eval_every or settings.steps
    steps_done, train_loss = 0, float("nan")
    for step in range(1, total_steps + 1):
        batch = workload.make_batch(batches.next())
        with clock.phase("step"):
            train_loss = method.step(lambda b=batch: loss(b))
        lap = {k: v for k, v in clock.lap().items() if k != "evaluation"}  # this step's phases
        step_times.append(lap.get("step", 0.0))
        steps_done = step
        if not math.isfinite(train_loss):
            raise Diverged(step, train_loss)
        row = {"step": step, "forward_passes": method.forward_passes, "backward_passes": method.backward_passes,
               "wall_s": clock.totals["step"], "train_loss": train_loss, **{f"{k}_s": v for k, v in lap.items()}}
        out_of_time = settings.max_seconds is not None and clock.totals["step"] > settings.max_seconds
        if step % eval_every == 0 or step == settings.steps or out_of_time:
            evaluate_dev(step, row)
        if step % settings.log_every == 0 or any(k.startswith("dev_") for k in row):
            curve.append(row)
        if progress is not None:
            progress(step, settings.steps, train_loss)
        if out_of_time:
            break

    with clock.phase("step"):
        settle()
    if best["saved"]:
        if best["step"] != steps_done:
            workload.module.load_state_dict(torch.load(best_file, map_location=device, weights_only=True), strict=False)
        best_file.unlink()
    with clock.phase("evaluation"), memory.window("evaluation"), amp():
        test = workload.evaluate("test")
    lm_eval = None
    if settings.lm_eval is not None and bundle is not None:  # the final model, in-process (zobench/lm_eval_bridge.py)
        from zobench.lm_eval_bridge import evaluate as lm_eval_evaluate

        with clock.phase("lm_eval"):
            lm_eval = lm_eval_evaluate(workload.module, bundle.tokenizer, settings.lm_eval)
    return Trained(
        metrics=Metrics(metric=metric, higher_is_better=workload.higher_is_better, test=test, test_metric=test[metric],
                        best_dev=best["dev"], best_step=best["step"], initial_dev_metric=best.get("initial"),
                        final_train_loss=train_loss, **({"lm_eval": lm_eval} if lm_eval is not None else {})),
        cost=Cost(steps=steps_done, forward_passes=method.forward_passes, backward_passes=method.backward_passes,
                  state_bytes=method.state_bytes(), trainable_params=sum(p.numel() for p in method.params),
                  comm_bytes_per_step=parallel.comm_bytes_per_step() if parallel is not None else None,
                  **({"precision": precision} if (precision := method.precision()) is not None else {})),
        timing=Timing(train_s=clock.totals.get("step", 0.0), eval_s=clock.totals.get("evaluation", 0.0),
                      median_step_s=statistics.median(step_times) if step_times else None,
                      inference_forward_s=statistics.median(probe_s)),
    )
