"""GPU checks of the ZO engine (skipped without CUDA): the fused in-place kernel and both engines on a GPU.

CI has no GPU; these run where one is lent (benchmarks/run_gpu.sh runs them before the bench)."""

from __future__ import annotations

import copy

import pytest
import torch
from test_engine_equivalence import follow_four_pass, method_for, tiny_llama

from zobench.optim import fused

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


def needs_triton() -> None:
    pytest.importorskip("triton")


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_fused_kernel_draws_unit_directions_repeatably(kind):
    needs_triton()
    run = fused.FusedPass()
    a = [torch.zeros(3_000_001, device="cuda"), torch.zeros(7, 5, device="cuda")]
    run(a, [0, 1], kind, seed=123, alpha=1.0)
    z = a[0]
    assert abs(float(z.mean())) < 5 / z.numel() ** 0.5 and abs(float(z.var()) - 1) < 0.01
    if kind == "rademacher":
        assert set(z.unique().tolist()) == {-1.0, 1.0}
    b = [torch.zeros_like(t) for t in a]
    run(b, [0, 1], kind, seed=123, alpha=1.0)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))  # same seed, same z
    c = [torch.zeros_like(t) for t in a]
    run(c, [1, 0], kind, seed=123, alpha=1.0)  # z depends on (seed, parameter index, element) alone
    assert not torch.equal(c[0], a[0]) and torch.equal(c[0][:35].view(7, 5), a[1])
    run(b, [0, 1], kind, seed=123, alpha=-1.0, seed2=9, alpha2=0.5)  # two directions in one pass
    d = [torch.zeros_like(t) for t in a]
    run(d, [0, 1], kind, seed=9, alpha=0.5)
    torch.testing.assert_close(b[0], d[0])


@pytest.mark.parametrize("hp", [{"engine": "inplace", "direction": "rademacher", "rng": "triton"},
                                {"engine": "inplace", "q": 2},
                                {"engine": "inplace", "direction": "rademacher", "q": 2, "weight_decay": 0.1,
                                 "rng": "triton"},
                                {"engine": "virtual"}, {"engine": "inplace", "rng": "counter", "q": 2}],
                         ids=["inplace-rademacher", "inplace-gaussian-q2", "inplace-rademacher-q2-decay", "virtual",
                              "inplace-counter-q2"])
def test_engines_follow_the_four_pass_trajectory_on_the_gpu(hp):
    if hp["engine"] == "inplace":
        needs_triton()
    fast_model = tiny_llama().cuda()
    ref_model = copy.deepcopy(fast_model)
    ids = torch.randint(0, 300, (4, 12), generator=torch.Generator().manual_seed(1)).cuda()
    fast, ref = method_for(fast_model, **hp), method_for(ref_model, **hp)
    if hp["engine"] == "inplace":
        assert (fast.directions.name == "triton") == (hp.get("rng") == "triton")  # the kernel only when asked for
    follow_four_pass(fast_model, ref_model, fast, ref, ids, steps=3, rel=1e-4, atol=1e-5)


def test_virtual_engine_leaves_bf16_weights_bit_identical_with_lr_zero():
    model = tiny_llama().cuda().to(torch.bfloat16)
    before = [p.detach().clone() for p in model.parameters()]
    method = method_for(model, lr=1e-3)
    method.hp = method.hp.model_copy(update={"lr": 0.0})
    ids = torch.randint(0, 300, (4, 12)).cuda()
    for _ in range(3):
        method.step(lambda: model(ids, labels=ids).loss)
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_counter_directions_are_the_same_numbers_on_the_gpu(kind):
    """`rng: counter` hashes positions: the GPU (Triton through torch.compile) makes the CPU's numbers."""
    needs_triton()
    from zobench.optim import counter

    cpu = counter.fill_(torch.empty(1_000_003), kind, 77, 5)
    gpu = counter.fill_(torch.empty(1_000_003, device="cuda"), kind, 77, 5).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-5, atol=1e-5)
    theta = torch.zeros(1_000_003, device="cuda")
    counter.add_(theta, kind, 5, 77, 0.5, 78, -2.0)
    both = 0.5 * cpu - 2.0 * counter.fill_(torch.empty(1_000_003), kind, 78, 5)
    torch.testing.assert_close(theta.cpu(), both, rtol=1e-5, atol=1e-5)
