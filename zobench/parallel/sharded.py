"""A model sharded over devices with accelerate's `device_map`, trained by the ZO engines where each parameter lives.

`settings: {shard: {device_map: auto | balanced | balanced_low_0 | sequential | {module: device}, max_memory}}`
places the loaded model as MeZO ran OPT-66B on two GPUs (princeton-nlp/MeZO large_models/run.py
`load_model`: `from_pretrained(..., device_map='auto', max_memory={gpu: free − 5 GB})`): accelerate's
`infer_auto_device_map` picks the pieces, never splitting a decoder layer (`_no_split_modules`), and
`dispatch_model`'s hooks move activations between devices.
A ZO step needs nothing more: the Directions draw z on each parameter's own device (optim/noise.py `fill`
takes `p.device`; the counter rng is a hash of positions), and the engines add it in place there.

What ZO cannot use is accelerate's own offload ("cpu" beside GPUs, or "disk"): those weights become meta
tensors that a hook reloads from its copy before each forward, so a perturbation or update made to the
parameter is never seen and never kept. Such a placement is refused, naming `settings.offload`, which
streams layers through the ZO step itself (zobench/parallel/offload_hf.py).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

from zobench.errors import UserError

NAMED = ("auto", "balanced", "balanced_low_0", "sequential")


def device_map_for(model: torch.nn.Module, device_map: str | dict[str, Any],
                   max_memory: dict[Any, Any] | None) -> dict[str, Any]:
    """An explicit map: as given, or accelerate's for a named strategy (balanced: the same split as
    transformers' `from_pretrained(device_map="balanced")`, through `get_balanced_memory`)."""
    if isinstance(device_map, dict):
        return dict(device_map)
    from accelerate import infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    no_split = list(getattr(model, "_no_split_modules", None) or [])
    max_memory = dict(max_memory) if max_memory else None  # accelerate rewrites it; the spec's stays as written
    if device_map != "sequential":
        max_memory = get_balanced_memory(model, max_memory=max_memory, no_split_module_classes=no_split,
                                         low_zero=device_map == "balanced_low_0")
    return infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split)


def shard(model: torch.nn.Module, device_map: str | dict[str, Any], max_memory: dict[Any, Any] | None,
          offload_dir: str | None = None) -> torch.nn.Module:
    """`model` (on the CPU) placed by the map, refused where any weight would be offloaded by accelerate."""
    from accelerate import dispatch_model

    placement = device_map_for(model, device_map, max_memory)
    offloaded = sorted({str(v) for v in placement.values() if str(v) == "disk"})
    gpus = {v for v in placement.values() if str(v) not in ("cpu", "disk")}
    if offloaded or (gpus and any(str(v) == "cpu" for v in placement.values())):
        where = "'disk'" if offloaded else "'cpu' beside GPUs"
        raise UserError(f"settings.shard: the device map puts weights on {where} ({_summary(placement)}): accelerate "
                        "keeps those as meta tensors and reloads them before each forward, so a ZO step could neither "
                        "perturb nor update them; give the devices more max_memory, or use settings.offload "
                        "(ZO2-style, the layers streamed through the ZO step) instead of settings.shard")
    main = next(iter(placement.values()))
    # hooks even when every piece is on one device: a sharded run runs the same way on one GPU (or the CPU) as on many
    dispatched = dispatch_model(model, device_map=placement, main_device=main, offload_dir=offload_dir,
                                force_hooks=True)
    check_placement(dispatched)
    return dispatched


def check_placement(model: torch.nn.Module) -> None:
    """Refuse a model whose parameters accelerate offloads (meta tensors behind hooks), however it was loaded."""
    for name, p in model.named_parameters():
        if p.device.type == "meta":
            raise UserError(f"parameter '{name}' is a meta tensor (accelerate's cpu/disk offload): a ZO step could "
                            "neither perturb nor update it; load the model without offload (more max_memory), or "
                            "use settings.offload instead")


def bytes_per_device(model: torch.nn.Module) -> dict[str, int]:
    """Parameter bytes on each device: a sharded run's layout (its peak per GPU: NVML, benchmarks/gpu_offload.py)."""
    out: dict[str, int] = defaultdict(int)
    for p in model.parameters():
        out[str(p.device)] += p.numel() * p.element_size()
    return dict(out)


def peak_allocated_per_device(model: torch.nn.Module) -> dict[str, int]:
    """torch's allocator peak on each GPU holding a piece of the model ({} on a CPU-only placement)."""
    devices = sorted({p.device for p in model.parameters() if p.device.type == "cuda"}, key=str)
    return {str(d): int(torch.cuda.max_memory_allocated(d)) for d in devices}


def _summary(placement: dict[str, Any]) -> str:
    counts: dict[str, int] = defaultdict(int)
    for v in placement.values():
        counts[str(v)] += 1
    return ", ".join(f"{n} module(s) on {d}" for d, n in counts.items())
