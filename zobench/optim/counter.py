"""Counter-based directions (`rng: counter`): number e of a tensor's z is a hash of (the tensor's seed, e).

Why: torch's CPU generator is a sequential Mersenne twister, ≈ 400 M numbers/s on one core whatever
the thread count, so a Gaussian draw of a 135M-parameter model costs a third of a forward pass and a
step draws three. A hash of the element's position has no state: torch.compile turns it (splitmix64's
finaliser, then Box–Muller on 24 + 24 of its bits, or its top bit as a sign) into one loop
on every core, ≈ 2× faster per Gaussian pass over θ on a 2-core CPU, and any element can be made alone
(no pieces needed for correctness, only for memory). The numbers are float32 whatever θ's dtype (a
float64 θ gets float32 directions; a bf16 θ gets the float32 step, rounded). Without a compiler the same
torch ops run eagerly: the same numbers (Gaussian to an ulp of log and cos), slower.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch

_GOLDEN = -0x61C8864680B583EB  # 0x9E3779B97F4A7C15 as a signed 64-bit number: spreads counters apart
_M1 = -0x40A7B892E31B1A47  # 0xBF58476D1CE4E5B9 (splitmix64's finaliser constants)
_M2 = -0x6B2FB644ECCEEE15  # 0x94D049BB133111EB
_BITS24 = (1 << 24) - 1


def _mix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 (wrapping multiplies; masks make the right shifts logical)."""
    x = x ^ ((x >> 30) & ((1 << 34) - 1))
    x = x * _M1
    x = x ^ ((x >> 27) & ((1 << 37) - 1))
    x = x * _M2
    return x ^ ((x >> 31) & ((1 << 33) - 1))


def _hashes(out: torch.Tensor, key: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    position = torch.arange(out.numel(), device=out.device, dtype=torch.int64) + start
    return _mix(position * _GOLDEN + key)


def _z(kind: str, out: torch.Tensor, key: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """The numbers (float32, flat) of the z keyed `key` at out's positions from `start`."""
    x = _hashes(out, key, start)
    if kind == "rademacher":
        return torch.where(x < 0, -1.0, 1.0)
    u1 = ((x >> 40) & _BITS24).to(torch.float32).add(0.5) * (1.0 / (1 << 24))  # in (0, 1): log is finite
    u2 = (x & _BITS24).to(torch.float32) * (1.0 / (1 << 24))
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2 * math.pi) * u2)


def _fill(kind: str, out: torch.Tensor, key: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    return out.copy_(_z(kind, out, key, start).view(out.shape))


def _add(kind: str, theta: torch.Tensor, start: torch.Tensor, key: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """θ += α·z: the numbers are made, scaled and added in one loop, nothing of θ's size is kept."""
    return theta.add_((alpha * _z(kind, theta, key, start)).view(theta.shape).to(theta.dtype))


def _add2(kind: str, theta: torch.Tensor, start: torch.Tensor, key: torch.Tensor, alpha: torch.Tensor,
          key2: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """θ += α·z + β·z₂ in one loop."""
    step = alpha * _z(kind, theta, key, start) + beta * _z(kind, theta, key2, start)
    return theta.add_(step.view(theta.shape).to(theta.dtype))


def _shift(kind: str, out: torch.Tensor, theta: torch.Tensor, start: torch.Tensor, key: torch.Tensor,
           alpha: torch.Tensor) -> torch.Tensor:
    """out = θ + α·z in one loop (the virtual engine's θ + εz: θ read once, nothing else written)."""
    return out.copy_((theta.to(torch.float32) + alpha * _z(kind, out, key, start)).view(out.shape))


# one function (one code object, so its own compiled graphs and recompile budget) per job
def _fill_gaussian(out: torch.Tensor, key: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    return _fill("gaussian", out, key, start)


def _fill_rademacher(out: torch.Tensor, key: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    return _fill("rademacher", out, key, start)


def _add_gaussian(theta: torch.Tensor, start: torch.Tensor, key: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    return _add("gaussian", theta, start, key, alpha)


def _add_rademacher(theta: torch.Tensor, start: torch.Tensor, key: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    return _add("rademacher", theta, start, key, alpha)


def _add2_gaussian(theta: torch.Tensor, start: torch.Tensor, key: torch.Tensor, alpha: torch.Tensor,
                   key2: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    return _add2("gaussian", theta, start, key, alpha, key2, beta)


def _add2_rademacher(theta: torch.Tensor, start: torch.Tensor, key: torch.Tensor, alpha: torch.Tensor,
                     key2: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    return _add2("rademacher", theta, start, key, alpha, key2, beta)


def _shift_gaussian(out: torch.Tensor, theta: torch.Tensor, start: torch.Tensor, key: torch.Tensor,
                    alpha: torch.Tensor) -> torch.Tensor:
    return _shift("gaussian", out, theta, start, key, alpha)


def _shift_rademacher(out: torch.Tensor, theta: torch.Tensor, start: torch.Tensor, key: torch.Tensor,
                      alpha: torch.Tensor) -> torch.Tensor:
    return _shift("rademacher", out, theta, start, key, alpha)


_EAGER: dict[str, Callable[..., torch.Tensor]] = {
    "shift-gaussian": _shift_gaussian, "shift-rademacher": _shift_rademacher,
    "fill-gaussian": _fill_gaussian, "fill-rademacher": _fill_rademacher, "add-gaussian": _add_gaussian,
    "add-rademacher": _add_rademacher, "add2-gaussian": _add2_gaussian, "add2-rademacher": _add2_rademacher}
_COMPILED: dict[tuple[str, str], Callable[..., torch.Tensor]] = {}
_EAGER_ONLY: set[str] = set()  # device types where compiling failed once


def key_of(base: int) -> int:
    """A tensor's hash key from its seed: `_mix` in Python integers, so nearby seeds give unrelated streams."""
    x, mask = base % 2**64, 2**64 - 1
    x ^= x >> 30
    x = (x * (_M1 % 2**64)) & mask
    x ^= x >> 27
    x = (x * (_M2 % 2**64)) & mask
    x ^= x >> 31
    return x - 2**64 if x >= 2**63 else x


def fill_(out: torch.Tensor, kind: str, base: int, start: int = 0) -> torch.Tensor:
    """out (contiguous) = numbers start, start+1, … of the z seeded by `base`: 'rademacher' or 'gaussian'."""
    return _run(f"fill-{kind}", out, _scalar(key_of(base), out), _scalar(start, out))


def add_(theta: torch.Tensor, kind: str, start: int, base: int, alpha: float,
         base2: int | None = None, beta: float = 0.0) -> torch.Tensor:
    """θ (contiguous) += α·z (+ β·z₂), z's numbers from `start` on (a tensor packed in a group starts at its
    offset in the group's draw), in one pass over θ: the in-place engine's perturbations and updates."""
    args = [theta, _scalar(start, theta), _scalar(key_of(base), theta), _scalar(alpha, theta, torch.float32)]
    if base2 is None:
        return _run(f"add-{kind}", *args)
    return _run(f"add2-{kind}", *args, _scalar(key_of(base2), theta), _scalar(beta, theta, torch.float32))


def shift_(out: torch.Tensor, theta: torch.Tensor, kind: str, start: int, base: int, alpha: float) -> torch.Tensor:
    """out = θ + α·z (both contiguous, θ's numbers from `start` of the z seeded by `base`), in one pass."""
    return _run(f"shift-{kind}", out, theta, _scalar(start, out), _scalar(key_of(base), out),
                _scalar(alpha, out, torch.float32))


def _scalar(x: float, like: torch.Tensor, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """A number as a 0-d tensor: a new key, start or scale changes no compiled graph (a Python number would)."""
    return torch.tensor(x, dtype=dtype, device=like.device)


def _run(job: str, *args: torch.Tensor) -> torch.Tensor:
    """The compiled job (one graph for every size), else the same torch ops eagerly, said once."""
    device = args[0].device.type
    if device in _EAGER_ONLY:
        return _EAGER[job](*args)
    fn = _COMPILED.get((job, device))
    if fn is None:
        fn = _COMPILED[(job, device)] = torch.compile(_EAGER[job], dynamic=True)
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001  no compiler here: eager ops give the same numbers, slower
        warnings.warn(f"rng: counter could not compile ({type(e).__name__}: {e}); drawing eagerly "
                      "(same numbers, slower)", stacklevel=3)
        _EAGER_ONLY.add(device)
        return _EAGER[job](*args)
