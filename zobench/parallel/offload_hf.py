"""ZO2-style offload of a Hugging Face decoder (OPT, Llama family) through the runner's own loss and evaluation.

`settings: {offload: {tier, amp}}` makes the runner train the model block by block: each decoder layer's
weights live in a slower tier (a safetensors file memory-mapped on the CPU, or host memory feeding a GPU)
and are uploaded once per step; the small resident parts (embeddings, positions, final norm, head; ZO2
keeps these on the working device too: zo2/model/huggingface/opt/mezo_sgd/zo2.py:434-447 `init_zo2_upload`)
stay where the model is. Both forwards of a query run together, block by block, as in ZO2
(zo2/optimizer/mezo_sgd/zo2.py:116-143 `module_dual_forward`): the batch is stacked once per query sign
(θ+εz, θ−εz, ... for q queries), each layer splits the stack and runs each part at its own θ. The stacked
forward runs through the model's own `forward`, so the task's loss code (masks, positions, logits slicing)
is unchanged; the loss of each part is then read back by calling the loss again, which replays the stored
logits of that part instead of running the model.

z comes from the method's own Directions laid out over the model's parameter list (same seeds, same indices
as the resident run: `ParamSpec`), so offload and resident runs follow the same trajectory. An offloaded
layer sees the in-place engine's operations (pending update, +εz, −2εz, the last restore folded into the
update: optim/engines.py `InplaceEngine`); a resident part is perturbed out of place (θ ± εz as fresh
tensors, the virtual engine's values) because tied weights (OPT's and SmolLM2's head is the embedding
matrix) are read at both ends of the stack, and updated after the step.
"""

from __future__ import annotations

import functools
import inspect
import tempfile
from collections.abc import Iterator
from typing import Any

import torch
from torch.func import functional_call

from zobench import registry
from zobench.errors import UserError
from zobench.optim.base import LossFn, Method
from zobench.optim.directions import TorchPieces
from zobench.optim.noise import rows_of
from zobench.optim.zo import ZOMethod
from zobench.parallel.offload import HostTier, ParamSpec, SafetensorsTier, Uploader, fold_update

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float8_e4m3fn": torch.float8_e4m3fn}


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's stack of decoder layers: the ModuleList of `config.num_hidden_layers` blocks."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n and n:
            return module
    raise UserError(f"offload: found no stack of decoder layers in {type(model).__name__} (offload trains OPT or "
                    "Llama-family decoders from transformers; remove settings.offload for this model)")


def _chunks(x: Any, n: int, rows: int) -> list[Any]:
    """x split into n parts along dim 0 where it has n·rows rows; anything else shared by all parts."""
    if isinstance(x, torch.Tensor) and x.dim() > 1 and x.shape[0] == n * rows:  # batch-shaped, not positions
        return list(x.split(rows))
    if isinstance(x, tuple):
        parts = [_chunks(v, n, rows) for v in x]
        return [tuple(p[k] for p in parts) for k in range(n)]
    return [x] * n


def _stack(x: Any, n: int, rows: int) -> Any:
    """x repeated n times along dim 0 where it has `rows` rows (the batch), for the stacked forward."""
    if isinstance(x, torch.Tensor) and x.dim() > 1 and x.shape[0] == rows:
        return x.repeat(n, *([1] * (x.dim() - 1)))
    return x


class _Layer(torch.nn.Module):
    """A decoder layer whose weights live in the tier; its meta-tensor module is kept out of the parameter tree."""

    def __init__(self, owner: OffloadedModel, b: int, layer: torch.nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "owner", owner)
        object.__setattr__(self, "layer", layer)
        self.b = b
        self.train(layer.training)

    def __getattr__(self, name: str) -> Any:  # HF reads layer attributes (attention_type, ...)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "layer"), name)

    def train(self, mode: bool = True) -> _Layer:
        """Dropout and the like follow the model's mode: the hidden layer is out of reach of `Module.train`."""
        super().train(mode)
        self.layer.train(mode)
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.owner.run_layer(self.b, self.layer, args, kwargs)


class _Resident(torch.nn.Module):
    """A resident module holding parameters of its own (embedding, norm, head): perturbed per part, out of place."""

    def __init__(self, owner: OffloadedModel, inner: torch.nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "owner", owner)
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["inner"], name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.owner.run_resident(self.inner, args, kwargs)


class OffloadedModel:
    """Installs the block-by-block schedule into `model` (in place) and keeps its tier and parameter layout."""

    def __init__(self, model: torch.nn.Module, tier: str | SafetensorsTier | HostTier, amp: str | None,
                 device: torch.device) -> None:
        """`tier`: "safetensors" or "host" (made from the layers, which may then be freed), or a tier already
        holding the layers in order (then the layers may be meta tensors: a model too big to build whole)."""
        self.model, self.device = model, device
        order = list(model.parameters())  # the resident run's parameter list (workload.trainable, scheme full)
        if any(not p.requires_grad for p in order):
            raise UserError("offload: every parameter must train (scheme: full); offload of peft schemes is not "
                            "supported (remove settings.offload, or use scheme: full)")
        self.index = {id(p): i for i, p in enumerate(order)}
        self.specs = [ParamSpec(p, device) for p in order]
        layers = decoder_layers(model)
        blocks = list(layers)
        self.layer_index = [[self.index[id(p)] for p in b.parameters()] for b in blocks]
        in_layers = {id(p) for b in blocks for p in b.parameters()}
        low = DTYPES[amp] if amp else None
        store: SafetensorsTier | HostTier
        if not isinstance(tier, str):
            store = tier
        elif tier == "safetensors":
            self._dir = tempfile.TemporaryDirectory(prefix="zobench-offload-")
            store = SafetensorsTier.create(f"{self._dir.name}/blocks.safetensors", blocks, dtype=low)
        else:
            store = HostTier(blocks, dtype=low)
        self.work_dtype = next(blocks[0].parameters()).dtype  # the model's precision (the tier's may be lower)
        self.uploader = Uploader(store, device, self.work_dtype)
        for k, block in enumerate(blocks):
            layers[k] = _Layer(self, k, block.to("meta"))
        for name, module in list(model.named_modules()):
            own = list(module.parameters(recurse=False))
            if own and not any(id(p) in in_layers for p in own) and not isinstance(module, _Resident):
                parent, _, leaf = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, leaf, _Resident(self, module))
        self.resident = [(i, p) for i, p in enumerate(order) if id(p) not in in_layers]
        for _, p in self.resident:  # owned copies: a checkpoint's memory map (and the layers' pages in it) can go
            p.data = p.data.clone()
        self.mode, self.parts, self.rows, self.replay = "plain", [], 0, 0
        self.stored: list[Any] = []
        self.method: OffloadMethod | None = None
        original = model.forward

        @functools.wraps(original)
        def forward(*args: Any, **kwargs: Any) -> Any:
            return self.forward(original, args, kwargs)

        model.forward = forward

    # --- the stacked forward -------------------------------------------------------------------------------
    def forward(self, original: Any, args: tuple, kwargs: dict) -> Any:
        if self.mode == "plain":
            if self.method is not None:
                self.method.settle()
            return original(*args, **kwargs)
        if self.mode == "replay":
            return self.stored[self.replay]
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs["inputs_embeds"]
        n, self.rows = len(self.parts), ids.shape[0]
        args = tuple(_stack(a, n, self.rows) for a in args)
        kwargs = {k: _stack(v, n, self.rows) for k, v in kwargs.items()}
        if "use_cache" in inspect.signature(original).parameters:  # a cache shared by the parts would mix them
            kwargs["use_cache"] = False
        out = original(*args, **kwargs)
        self.stored = []
        for k in range(n):
            part = out.__class__(**{key: v for key, v in out.items()})
            part["logits"] = out.logits[k * self.rows:(k + 1) * self.rows]
            self.stored.append(part)
        self.mode = "spent"  # one stacked forward per step: a second model call in one loss is not supported
        return self.stored[0]

    @torch.no_grad()
    def run_layer(self, b: int, layer: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        if self.mode == "plain":
            tensors = self.uploader.get(b, prefetch=b + 1 if b + 1 < len(self.layer_index) else None)
            return functional_call(layer, tensors, args, kwargs)
        if self.mode != "stacked":
            raise RuntimeError("offload: the model was called twice in one loss evaluation")
        assert self.method is not None
        m = self.method
        tensors = self.uploader.get(b, prefetch=b + 1 if b + 1 < len(self.layer_index) else None)
        ps, idx = list(tensors.values()), self.layer_index[b]
        m.fold(ps, idx)
        n = len(self.parts)
        arg_parts = list(zip(*[_chunks(a, n, self.rows) for a in args], strict=True)) if args else [()] * n
        kw_parts = [{k: _chunks(v, n, self.rows)[j] for k, v in kwargs.items()} for j in range(n)]
        outs = []
        for j, (seed, sign) in enumerate(self.parts):
            m.add(ps, idx, seed, m.eps if sign > 0 else -2 * m.eps)
            outs.append(functional_call(layer, tensors, arg_parts[j], kw_parts[j]))
            if sign < 0 and j < n - 1:  # the last restore waits for the update (engines.py `InplaceEngine`)
                m.add(ps, idx, seed, m.eps)
        self.uploader.put(b, tensors)
        return torch.cat(outs) if isinstance(outs[0], torch.Tensor) else (torch.cat([o[0] for o in outs]),)

    @torch.no_grad()
    def run_resident(self, inner: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        if self.mode != "stacked":
            return inner(*args, **kwargs)
        assert self.method is not None
        m, n = self.method, len(self.parts)
        own = list(inner.named_parameters(recurse=False))
        arg_parts = list(zip(*[_chunks(a, n, self.rows) for a in args], strict=True)) if args else [()] * n
        kw_parts = [{k: _chunks(v, n, self.rows)[j] for k, v in kwargs.items()} for j in range(n)]
        outs = []
        for j, (seed, sign) in enumerate(self.parts):
            tensors = {name: m.shifted(p, self.index[id(p)], seed, sign * m.eps) for name, p in own}
            outs.append(functional_call(inner, tensors, arg_parts[j], kw_parts[j]))
        return torch.cat(outs)

    def blocks_state(self) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        """Each offloaded layer's θ (settled), for tests and checkpoints."""
        if self.method is not None:
            self.method.settle()
        for b in range(len(self.layer_index)):
            yield b, self.uploader.get(b)


class OffloadMethod(Method):
    """ZO-SGD over an `OffloadedModel`: one stacked forward per step, losses read back part by part, the
    update applied to the resident parts at once and folded into each layer's next upload."""

    def __init__(self, offloaded: OffloadedModel, method: str, params: dict[str, Any], seed: int) -> None:
        cls = registry.methods.get(method)
        if not issubclass(cls, ZOMethod):
            raise UserError(f"settings.offload: '{method}' is not a zeroth-order method; offload runs ZO-SGD's "
                            "schedule (use zo-sgd, or remove settings.offload)")
        hp = cls.Params.model_validate({**params, "engine": "virtual"})
        inner: ZOMethod = cls(offloaded.specs, hp, seed)  # type: ignore[arg-type]
        if not inner.folds or inner.hp.one_sided or inner.needs_base or inner.own_queries or inner.reads_theta:
            raise UserError(f"settings.offload: '{method}' has an update or queries of its own; the offload schedule "
                            "folds plain SGD on Σ g·z into the next upload (use zo-sgd, two-sided, without per-tensor "
                            "decay, or remove settings.offload)")
        in_layers = {i for idx in offloaded.layer_index for i in idx}  # counted by the record, never read
        self.params = [p for _, p in offloaded.resident] + [s for i, s in enumerate(offloaded.specs) if i in in_layers]
        self.hp, self.seed, self.inner, self.eps = hp, seed, inner, hp.eps
        self.forward_passes = self.backward_passes = 0
        self.offloaded = offloaded
        offloaded.method = self
        self._pending: tuple[float, list[tuple[int, float]]] | None = None

    @torch.no_grad()
    def add(self, ps: list[torch.Tensor], idx: list[int], seed: int, alpha: float) -> None:
        a = alpha * self.inner.directions.sphere_scale(seed)
        for i, p in zip(idx, ps, strict=True):
            self._add_z(i, p, seed, a)

    def _add_z(self, i: int, p: torch.Tensor, seed: int, a: float) -> None:
        """p += a·z_i(seed), piece by piece where the generator makes pieces (TorchPieces, CounterHash: nothing of
        p's size is made, as in their own `add`); whole elsewhere."""
        dirs = self.inner.directions
        if isinstance(dirs, TorchPieces) and p.is_contiguous():
            flat, width = p.view(-1), rows_of(p.shape)[1]
            for r0, r1, z in dirs.pieces(i, p, seed):
                flat[r0 * width:r1 * width].add_(z.reshape(-1), alpha=a)
        else:
            p.add_(dirs.unscaled(i, p, seed), alpha=a)

    @torch.no_grad()
    def shifted(self, p: torch.Tensor, i: int, seed: int, alpha: float) -> torch.Tensor:
        """θ_i + α·z_i as a fresh tensor (one copy of the parameter, z added into it piece by piece)."""
        out = p.clone()
        self._add_z(i, out, seed, alpha * self.inner.directions.sphere_scale(seed))
        return out

    def fold(self, ps: list[torch.Tensor], idx: list[int]) -> None:
        """The previous step's update on a layer as it arrives (offload.fold_update)."""
        fold_update(self._pending, ps, idx, self.add)

    @torch.no_grad()
    def step(self, loss_fn: LossFn) -> float:
        m, off = self.inner, self.offloaded
        m.t += 1
        m.directions.new_step(keep={s for s, _ in self._pending[1]} if self._pending else set())
        seeds = [int(s) for s in m._rng.integers(0, 2**62, size=m.hp.q)]  # the method's stream: zo.py `probe`
        off.parts = [(s, sign) for s in seeds for sign in (1, -1)]
        off.mode = "stacked"
        try:
            losses = [float(loss_fn())]
            off.mode = "replay"
            for k in range(1, len(off.parts)):
                off.replay = k
                losses.append(float(loss_fn()))
        finally:
            off.mode, off.stored = "plain", []
        lp, lm = losses[0::2], losses[1::2]
        grads = [(a - b) / (2 * self.eps) for a, b in zip(lp, lm, strict=True)]
        m.forward_passes += 2 * len(seeds)
        self.forward_passes = m.forward_passes
        q, lr = len(seeds), m.hp.lr
        keep = 1 - lr * m.hp.weight_decay
        terms = [(s, -lr * g / q) for s, g in zip(seeds, grads, strict=True)]
        with torch.no_grad():  # the resident parts: the plain update, now
            rp = [p for _, p in off.resident]
            if keep != 1.0:
                torch._foreach_mul_(rp, keep)
            for s, a in terms:
                self.add(rp, [i for i, _ in off.resident], s, a)
        self._pending = (keep, [(s, (keep * self.eps if j == q - 1 else 0.0) + a) for j, (s, a) in enumerate(terms)])
        return sum((a + b) / 2 for a, b in zip(lp, lm, strict=True)) / q

    @torch.no_grad()
    def settle(self) -> None:
        """Apply the held update to every layer (one pass over the tier), so the tier holds the trained θ."""
        if self._pending is None:
            return
        pending, self._pending = self._pending, None
        for b, idx in enumerate(self.offloaded.layer_index):
            tensors = self.offloaded.uploader.get(b)
            self._pending = pending
            self.fold(list(tensors.values()), idx)
            self._pending = None
            self.offloaded.uploader.put(b, tensors)

    def precision(self) -> dict[str, Any] | None:
        """Where the layers lived, at what precision, and the bytes that crossed (each layer once each way per
        step; evaluations and settling add their own crossings to the measured total)."""
        up, specs = self.offloaded.uploader, self.offloaded.specs
        numel = sum(specs[i].numel() for idx in self.offloaded.layer_index for i in idx)
        return {"offload_tier": type(up.tier).__name__, "tier_dtype": str(up.tier_dtype).removeprefix("torch."),
                "bytes_per_step": 2 * numel * up.tier_dtype.itemsize, "bytes_moved": up.bytes_moved}


def offload_method(settings: Any, module: torch.nn.Module, method: str, params: dict[str, Any],
                   seed: int) -> OffloadMethod:
    """The runner's hook: install the schedule into the workload's model and return the method that drives it."""
    base = module.get_base_model() if hasattr(module, "get_base_model") else module
    device = next(base.parameters()).device
    return OffloadMethod(OffloadedModel(base, settings.tier, settings.amp, device), method, params, seed)
