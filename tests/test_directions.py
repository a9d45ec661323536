"""Directions and engines: one interface per generator, chosen from the spec, capabilities declared."""

from __future__ import annotations

import pytest
import torch

from zobench import registry
from zobench.errors import FieldError, UserError
from zobench.optim import directions, engines
from zobench.optim.zo import ZOMethod

registry.load_builtins()


def build(name: str, params: list[torch.nn.Parameter], **hp: object) -> ZOMethod:
    cls = registry.methods.get(name)
    return cls(params, cls.Params.model_validate(hp), 0)


def tensors() -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(*shape, generator=gen)) for shape in ((40, 70), (30,), (5, 3), (300,))]


@pytest.mark.parametrize(("name", "hp", "kind"), [
    ("zo-sgd", {}, directions.TorchPieces), ("zo-sgd", {"rng": "counter"}, directions.CounterHash),
    ("zo-sgd", {"engine": "inplace"}, directions.TorchPieces), ("lozo", {"rng": "counter"}, directions.OwnDraw),
    ("sparse-mezo", {}, directions.OwnDraw), ("hizoo", {}, directions.OwnDraw)])
def test_the_generator_is_the_one_the_spec_names(name, hp, kind):
    method = build(name, tensors(), **hp)
    assert type(method.directions) is kind
    in_place = registry.methods.get(name).resolved({"engine": hp.get("engine", "auto")})["engine"] == "inplace"
    assert isinstance(method.engine, engines.InplaceEngine if in_place else engines.VirtualEngine)


@pytest.mark.parametrize(("name", "engine"), [("zo-sgd", "inplace"), ("zo-adam", "inplace"), ("lozo", "inplace"),
                                              ("hizoo", "virtual"), ("sparse-mezo", "virtual"),
                                              ("forward-grad", "virtual"), ("cge", "virtual")])
def test_auto_engine_is_in_place_where_the_method_can_run_there(name, engine):
    """`engine: auto` (the default): MeZO's in-place engine, except for methods making their own queries or drawing
    z from θ, which in place would skip queries or see a moved θ; what it picks is in the spec (grid resolves it)."""
    cls = registry.methods.get(name)
    assert cls.resolved(cls.Params().model_dump())["engine"] == engine
    assert isinstance(build(name, tensors()).engine, engines.InplaceEngine if engine == "inplace"
                      else engines.VirtualEngine)


def test_triton_is_asked_for_and_refused_where_it_cannot_run():
    """Nothing picks the kernel by what is installed; asking for it on CPU tensors is an error naming the field."""
    with pytest.raises(UserError, match="rng"):
        build("zo-sgd", tensors(), rng="triton", engine="inplace")
    with pytest.raises(FieldError) as err:
        registry.methods.get("lozo").check({"rng": "triton"})
    assert err.value.field == "rng"
    with pytest.raises(FieldError) as err:
        registry.methods.get("hizoo").check({"engine": "inplace"})
    assert err.value.field == "engine"


@pytest.mark.parametrize(("name", "hp"), [("zo-sgd", {}), ("zo-sgd", {"rng": "counter"}),
                                          ("zo-sgd", {"rng": "counter", "direction": "rademacher"}),
                                          ("zo-sgd", {"direction": "sphere"}), ("lozo", {"rank": 2})])
def test_add_shift_and_dense_are_one_direction(name, hp):
    """Every generator's three operations agree: θ + α·dense(z) = add(α) = shift(α) (to rounding)."""
    params = tensors()
    method = build(name, params, **hp)
    method.t = 1  # LOZO's period seed reads the step
    dirs, seed, alpha = method.directions, 7, 0.25
    before = [p.detach().clone() for p in params]
    want = [b + alpha * dirs.dense(i, p, seed) for i, (b, p) in enumerate(zip(before, params, strict=True))]
    shift = dirs.shift(seed, alpha)
    with torch.no_grad():  # as the engines run them
        seen = [shift(i, b) for i, b in enumerate(before)]
        dirs.add(seed, alpha)
    for w, s, p in zip(want, seen, params, strict=True):
        tol = 4 * torch.finfo(w.dtype).eps * float(w.abs().max())
        torch.testing.assert_close(s, w, rtol=0, atol=tol)
        torch.testing.assert_close(p.detach(), w, rtol=0, atol=tol)
    assert any(not torch.equal(w, b) for w, b in zip(want, before, strict=True))


@pytest.mark.parametrize(("override", "flag"), [("apply", "sgd_update"), ("update", "sgd_update"),
                                                 ("estimate", "sgd_update"), ("draw", "own_draw"),
                                                 ("noise", "own_draw"), ("query", "own_queries"),
                                                 ("probe", "own_queries")])
def test_an_undeclared_override_is_refused_where_the_class_is_defined(override, flag):
    """Overriding apply without `sgd_update = False` would let the engine's folded SGD skip it: refused."""
    with pytest.raises(TypeError, match=flag):
        type("Undeclared", (ZOMethod,), {override: lambda self, *a: None})
    value = flag != "sgd_update"
    type("Declared", (ZOMethod,), {override: lambda self, *a: None, flag: value})


def test_registered_methods_declare_what_they_override():
    """Built-in methods that bring their own update never take the folded SGD path."""
    for name in ("zo-sgd-sign", "zo-sgd-mmt", "zo-adam", "zo-adamm", "zo-adamu", "hizoo", "cge"):
        method = build(name, tensors())
        assert not method.folds, name
    assert build("zo-sgd", tensors()).folds


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_a_pass_spread_over_threads_adds_the_numbers_drawn_in_one(kind, monkeypatch):
    """The in-place pass draws its pieces on torch's CPU threads; every piece has its own seed, so θ + αz + βz'
    equals the whole z drawn alone (noise.fill, one thread) number for number, whatever thread drew which piece."""
    from zobench.optim import noise

    monkeypatch.setattr(noise, "CHUNK", 1 << 10)  # many pieces per matrix, so the pass has many jobs
    gen = torch.Generator().manual_seed(1)
    params = [torch.randn(*shape, generator=gen) for shape in ((300, 40), (7,), (5, 3), (2000,), (64, 64))]
    params.append(torch.randn(40, 30, generator=gen).t())  # a strided one: drawn whole
    dirs = directions.TorchPieces(params, kind, False, lambda p, s, i: torch.Generator().manual_seed(s * 1000 + i))
    before = [p.clone() for p in params]
    threads = torch.get_num_threads()
    torch.set_num_threads(max(threads, 4))
    for p in params:
        p.requires_grad_(True)  # as a method's parameters: the jobs must run in the caller's no-grad mode
    try:
        with torch.no_grad():
            dirs.add(3, 0.25, then=(4, -0.5))
        with torch.inference_mode():  # the virtual engine's θ + εz, made inside an evaluation's forward
            shifted = [dirs.shift(5, 0.125)(i, p) for i, p in enumerate(params)]
    finally:
        torch.set_num_threads(threads)
    for i, (p, p0) in enumerate(zip(params, before, strict=True)):
        p = p.detach()
        expected = p0 + 0.25 * dirs.unscaled(i, p0, 3)
        expected = expected + (-0.5) * dirs.unscaled(i, p0, 4)
        assert torch.equal(p, expected), i
        assert torch.equal(shifted[i], torch.add(p, dirs.unscaled(i, p, 5), alpha=0.125)), i
