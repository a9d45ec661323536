"""`rng: counter`: z from a hash of each number's position, compiled or eager, piece by piece or whole."""

from __future__ import annotations

import math

import pytest
import torch

from zobench.optim import counter, noise

CPU = torch.device("cpu")


def whole(kind: str, n: int, base: int) -> torch.Tensor:
    return counter.fill_(torch.empty(n), kind, base)


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_compiled_and_eager_make_the_same_numbers_and_any_stretch_alone(kind, monkeypatch):
    z = whole(kind, 10_007, 42)
    for start, n in [(0, 1), (5, 3000), (9_000, 1_007)]:  # any stretch alone equals the whole's
        assert torch.equal(counter.fill_(torch.empty(n), kind, 42, start), z[start:start + n])
    monkeypatch.setattr(counter, "_EAGER_ONLY", {"cpu"})  # what a machine without a compiler runs
    eager = whole(kind, 10_007, 42)
    if kind == "rademacher":
        assert torch.equal(eager, z)
    else:  # log and cos vectorised vs libm: an ulp apart
        torch.testing.assert_close(eager, z, rtol=1e-6, atol=1e-6)


def test_a_failed_compile_warns_once_and_gives_the_same_numbers(monkeypatch):
    expected = whole("gaussian", 1000, 3)
    monkeypatch.setattr(counter, "_COMPILED", {})
    monkeypatch.setattr(counter, "_EAGER_ONLY", set())

    def broken(fn, **_):
        def call(*args):
            raise RuntimeError("no C++ compiler")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(UserWarning, match="could not compile"):
        got = whole("gaussian", 1000, 3)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    theta = torch.zeros(1000)
    counter.add_(theta, "gaussian", 0, 3, 2.0)  # no second warning: this device is eager from now on
    torch.testing.assert_close(theta, 2 * expected, rtol=1e-6, atol=1e-6)


def test_gaussian_numbers_are_standard_normal():
    z = whole("gaussian", 1 << 20, 7).double()
    n = z.numel()
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert float(z.var()) == pytest.approx(1.0, abs=5 * math.sqrt(2 / n))
    assert float((z**4).mean()) == pytest.approx(3.0, abs=5 * math.sqrt(96 / n))  # kurtosis of a normal
    assert float((z > 1.96).double().mean()) == pytest.approx(0.025, abs=5 * math.sqrt(0.025 / n))
    assert float(z.abs().max()) > 4.0  # the tails are there (24-bit uniforms reach ≈ 5.8 σ)


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_neighbours_and_neighbouring_seeds_are_uncorrelated(kind):
    n = 1 << 18
    z, other = whole(kind, n, 100), whole(kind, n, 101)
    bound = 5 / math.sqrt(n)
    assert abs(float((z[1:] * z[:-1]).mean())) < bound
    assert abs(float((z * other).mean())) < bound
    if kind == "rademacher":
        assert set(z.unique().tolist()) == {-1.0, 1.0}
        assert abs(float(z.mean())) < bound


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_one_pass_adds_both_directions(kind):
    theta = torch.randn(5000, generator=torch.Generator().manual_seed(0))
    expected = theta + 0.3 * whole(kind, 5000, 11) - 1.5 * whole(kind, 5000, 12)
    counter.add_(theta, kind, 0, 11, 0.3, 12, -1.5)
    torch.testing.assert_close(theta, expected, rtol=1e-6, atol=1e-6)
    part = torch.zeros(100)
    counter.add_(part, kind, 400, 11, 1.0)  # a tensor packed at offset 400 of its group's draw
    assert torch.equal(part, whole(kind, 5000, 11)[400:500])
    bf16 = torch.ones(5000, dtype=torch.bfloat16)  # the step is made in float32, then rounded into θ's dtype
    counter.add_(bf16, kind, 0, 11, 0.25)
    torch.testing.assert_close(bf16.float(), 1 + 0.25 * whole(kind, 5000, 11), rtol=0, atol=2**-7)  # ≤ an ulp


def test_the_counter_kind_flows_through_pieces_and_groups(monkeypatch):
    monkeypatch.setattr(noise, "CHUNK", 1000)
    shape = torch.Size([70, 33])  # pieces of 30 rows: 990 numbers
    full = noise.fill(shape, torch.float32, CPU, "gaussian+counter", 9)
    assert torch.equal(full.view(-1), whole("gaussian", 70 * 33, 9))
    parts = torch.cat([z.reshape(-1).clone() for _, _, z in noise.pieces(shape, torch.float32, CPU,
                                                                         "gaussian+counter", 9)])
    assert torch.equal(parts, full.view(-1))
    bf16 = noise.fill(shape, torch.bfloat16, CPU, "gaussian+counter", 9)
    assert torch.equal(bf16, full.to(torch.bfloat16))  # other dtypes: the same numbers, rounded


def test_rademacher_numbers_are_the_bits_of_one_hash_per_64():
    """The definition, in Python integers: number e is −1 where bit e mod 64 of mix(block·golden + key) is set,
    block = e div 64 (so a GPU, a compiled loop and an eager one can only agree by making exactly these)."""
    key = counter.key_of(42) % 2**64
    z = whole("rademacher", 1000, 42)
    for e in (0, 1, 63, 64, 65, 500, 999):
        word = counter.key_of((e // 64 * (counter._GOLDEN % 2**64) + key) % 2**64) % 2**64
        assert float(z[e]) == (-1.0 if word >> (e % 64) & 1 else 1.0)


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_batched_calls_add_what_tensor_by_tensor_adds(kind, monkeypatch):
    """Many tensors, _BATCH to a compiled call, make each tensor's own numbers: whole rows of 64 in the
    batches (two dtypes, more tensors than a batch), the rest (one row, a size or a start off the rows)
    alone; and tensors of other sizes reuse the same graphs."""
    gen = torch.Generator().manual_seed(1)
    sizes = [4096, 64, 130, 128] + [384] * 9 + [640]
    thetas = [torch.randn(n, generator=gen) for n in sizes] + [torch.randn(256, generator=gen).bfloat16()]
    starts = [0, 0, 0, 100] + [64 * k for k in range(9)] + [0, 0]
    bases, bases2 = list(range(10, 25)), list(range(50, 65))
    for second in (False, True):
        expected = [t.clone() for t in thetas]
        for t, s, b, b2 in zip(expected, starts, bases, bases2, strict=True):
            counter.add_(t, kind, s, b, 0.5, *((b2, -2.0) if second else ()))
        got = [t.clone() for t in thetas]
        counter.Batched(got, kind, starts).add(bases, 0.5, *((bases2, -2.0) if second else ()))
        for g, e in zip(got, expected, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6)
    with monkeypatch.context() as m:  # no compiler: the same ops eagerly, the same numbers
        m.setattr(counter, "_EAGER_ONLY", {"cpu"})
        eager = [t.clone() for t in thetas]
        counter.Batched(eager, kind, starts).add(bases, 0.5, bases2, -2.0)
    for e, g in zip(eager, got, strict=True):
        torch.testing.assert_close(e, g, rtol=1e-6, atol=1e-6)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    others = [torch.zeros(n) for n in (192, 8192, 320)]
    counter.Batched(others, kind, [0, 0, 0]).add([1, 2, 3], 1.0)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    assert torch.equal(others[1], whole(kind, 8192, 2))


def test_counter_layout_starts_every_grouped_tensor_on_a_whole_word():
    params = [torch.zeros(n) for n in (30, 100, 64, 7)]
    lay = noise.Layout(params, counter=True)
    assert lay.offset == [0, 64, 192, 256] and lay.size == [263]
    assert noise.Layout(params).offset == [0, 30, 130, 194]  # torch's generator: packed tight, as before


def test_counter_layout_groups_tensors_larger_than_a_piece():
    """`rng: counter` groups hold up to COUNTER_GROUP numbers: a tensor over a piece joins its neighbours."""
    big = noise.CHUNK + 64
    params = [torch.zeros(n) for n in (64, big, noise.COUNTER_GROUP - 64, noise.COUNTER_GROUP + 1)]
    assert noise.Layout(params).group_of == [0, None, None, None]
    lay = noise.Layout(params, counter=True)
    assert lay.group_of == [0, 0, 1, None] and lay.offset == [0, 64, 0, 0]


def test_in_place_passes_follow_a_parameter_given_new_memory():
    """The batched passes hold the parameters' memory; a parameter given new memory (`p.data = …`) is followed."""
    from zobench import registry
    registry.load_builtins()
    cls = registry.methods.get("zo-sgd")
    params = [torch.nn.Parameter(torch.zeros(n)) for n in (256, 4096, 100)]
    method = cls(params, cls.Params.model_validate({"engine": "inplace", "rng": "counter",
                                                    "direction": "rademacher"}), 0)
    with torch.no_grad():
        method.directions.add(5, 1.0)
        params[1].data = torch.zeros(4096)
        method.directions.add(5, 1.0)
    for i, (p, times) in enumerate(zip(params, (2, 1, 2), strict=True)):
        assert torch.equal(p.detach(), times * method.directions.unscaled(i, p, 5))


def test_in_place_groups_move_into_one_buffer_once():
    """The in-place engine moves a group's members into one buffer (values kept); a second method on the same
    parameters finds them there and moves nothing (the bench interleaves methods on one model)."""
    from zobench import registry
    registry.load_builtins()
    cls = registry.methods.get("zo-sgd")
    params = [torch.nn.Parameter(torch.randn(n, generator=torch.Generator().manual_seed(n))) for n in (256, 100, 4096)]
    before = [p.detach().clone() for p in params]
    hp = cls.Params.model_validate({"engine": "inplace", "rng": "counter", "direction": "rademacher"})
    first, second = cls(params, hp, 0), cls(params, hp, 1)
    with torch.no_grad():
        first.directions.add(5, 0.0)
        assert len({p.untyped_storage().data_ptr() for p in params}) == 1  # one group, one buffer
        assert all(torch.equal(p.detach(), b) for p, b in zip(params, before, strict=True))
        where = [p.data_ptr() for p in params]
        second.directions.add(6, 1.0)
        assert [p.data_ptr() for p in params] == where
    for i, (p, b) in enumerate(zip(params, before, strict=True)):
        assert torch.equal(p.detach(), b + second.directions.unscaled(i, p, 6))
