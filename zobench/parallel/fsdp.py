"""First-order memory baselines with sharding and CPU offload from torch's FSDP2 (`fully_shard`).

A first-order run with `fsdp: {cpu_offload: true}` keeps its parameters, gradients and Adam state in host memory
and moves each block's parameters to the GPU only for its forward and backward (FSDP2's `CPUOffloadPolicy`; the
optimizer steps on the CPU): ZeRO-Offload's shape, the first-order counterpart of ZO2's offload. With
`cpu_offload: false` the model is only sharded: over the run's torch.distributed processes where a launcher
started several, else over a group of one (then it trains as the plain run does, which the tests check).

Every worker evaluates the whole batch, so the gradients FSDP averages are the one-process gradient and the
trajectory is the one-process run's up to summation order; the sharding saves memory, not compute.

What runs where (torch 2.13): sharding runs on the CPU with gloo; `CPUOffloadPolicy` needs an accelerator (its
copies go host → device: on a CPU-only machine torch raises "Cannot access accelerator device when none is
available"), so a run asking for it without a GPU stops with a UserError saying so.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import torch
import torch.distributed as dist

from zobench.errors import UserError
from zobench.models.base import blocks


def unavailable(cpu_offload: bool, device: torch.device) -> str | None:
    """Why FSDP2 cannot run this here (None: it can)."""
    try:
        from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard  # noqa: F401
    except ImportError:
        return f"torch {torch.__version__} has no torch.distributed.fsdp.fully_shard (FSDP2); use torch >= 2.6"
    if not dist.is_available():
        return f"this torch build ({torch.__version__}) has no torch.distributed"
    if cpu_offload and device.type != "cuda":
        return ("FSDP2's CPUOffloadPolicy moves parameters host → GPU for each block and needs a GPU; this run is on "
                f"{device.type} (torch.cuda.is_available() is {torch.cuda.is_available()})")
    return None


def ensure_group(device: torch.device) -> None:
    """A process group for FSDP: the launcher's where one is running, else a group of this process alone."""
    if dist.is_initialized():
        return
    store = os.path.join(tempfile.mkdtemp(prefix="zobench-fsdp-"), "rendezvous")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"file://{store}", rank=0,
                            world_size=1)


def shard(module: torch.nn.Module, cpu_offload: bool, device: torch.device) -> list[torch.nn.Parameter]:
    """fully_shard each repeated block, then the root (FSDP2's usual wrapping: a block's parameters are gathered
    for its own forward and backward only); returns the trainable parameters, now DTensors."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    reason = unavailable(cpu_offload, device)
    if reason:
        raise UserError(f"fsdp: {reason}; run it where a GPU is, or set fsdp: {{cpu_offload: false}} "
                        "(sharding only), or remove `fsdp` to train the model whole")
    ensure_group(device)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = CPUOffloadPolicy() if cpu_offload else OffloadPolicy()
    for block in blocks(module):
        if block is not module:
            fully_shard(block, mesh=mesh, offload_policy=policy)
    fully_shard(module, mesh=mesh, offload_policy=policy)
    return [p for p in module.parameters() if p.requires_grad]


def shard_method(settings: Any, module: torch.nn.Module, method: Any, device: torch.device) -> Any:
    """The runner's hook for a run with `fsdp:`: the model sharded, the first-order method's optimizer rebuilt
    over the sharded parameters (it had none of its state yet)."""
    from zobench.optim.first_order import FirstOrder

    if not isinstance(method, FirstOrder):
        raise UserError(f"fsdp shards first-order training; '{type(method).__name__}' is zeroth-order (its memory "
                        "baseline with offload is the run setting `offload`); remove `fsdp` from this run")
    method.params = shard(module, settings.cpu_offload, device)
    method.optimizer = method.build()
    return method
