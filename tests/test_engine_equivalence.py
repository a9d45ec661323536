"""The fast ZO engine follows the plain four-pass trajectory (MeZO's Algorithm 1) for the same seeds.

The default engine never writes θ + εz (the forwards see it virtually, big matrices block by block)
and does the update in one piecewise pass; the in-place engine fuses the last restore with the update
(three passes); the reference perturbs in place four times per step (+ε, −2ε, +ε, update) with the
same directions. Both must agree step after step, up to the rounding
the in-place reference itself adds.
"""

from __future__ import annotations

import copy

import pytest
import torch

from zobench import registry
from zobench.optim import counter, noise, virtual


def tiny_llama() -> torch.nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=2, vocab_size=300, tie_word_embeddings=True)
    return transformers.LlamaForCausalLM(cfg).eval()


def method_for(model: torch.nn.Module, **hp: object):
    cls = registry.methods.get("zo-sgd")
    model.requires_grad_(True)
    hp = {"lr": 1e-3, "eps": 1e-2, "engine": "virtual", **hp}
    method = cls(list(model.parameters()), cls.Params.model_validate(hp), seed=5)
    model.requires_grad_(False)  # as the runner does for ZO methods
    return method


def four_pass_step(model: torch.nn.Module, directions, loss_fn, seeds: list[int], hp) -> float:
    """MeZO's Algorithm 1 with q queries: perturb in place +ε, −2ε, +ε per query, then
    θ ← (1 − η·wd)θ − η/q Σ g_j z_j."""
    params = list(model.parameters())
    grads, losses = [], []
    with torch.no_grad():
        for seed in seeds:
            zs = [directions(i, p, seed) for i, p in enumerate(params)]
            for p, z in zip(params, zs, strict=True):
                p.add_(z, alpha=hp.eps)
            plus = float(loss_fn())
            for p, z in zip(params, zs, strict=True):
                p.add_(z, alpha=-2 * hp.eps)
            minus = float(loss_fn())
            for p, z in zip(params, zs, strict=True):
                p.add_(z, alpha=hp.eps)
            grads.append((plus - minus) / (2 * hp.eps))
            losses.append((plus + minus) / 2)
        for p in params:  # θ − η(g·z + wd·θ), as MeZO's zo_update (trainer.py:803: not biases, layer norms)
            if p.dim() >= 2:
                p.mul_(1 - hp.lr * hp.weight_decay)
        for seed, g in zip(seeds, grads, strict=True):
            for i, p in enumerate(params):
                p.add_(directions(i, p, seed), alpha=-hp.lr * g / len(seeds))
    return sum(losses) / len(losses)


def follow_four_pass(fast_model, ref_model, fast, ref, ids, steps: int, rel: float, atol: float) -> None:
    """Step `fast` and the four-pass reference side by side with the same seeds: losses every step (the
    in-place engine's folded update included), parameters every step for the virtual engine and after
    `settle` for both."""
    seen: list[int] = []
    probe = fast.probe
    fast.probe = lambda loss_fn: (found := probe(loss_fn), seen.extend(found[0]))[0]
    for _ in range(steps):
        seen.clear()
        loss_fast = fast.step(lambda: fast_model(ids, labels=ids).loss)
        assert len(seen) == fast.hp.q
        loss_ref = four_pass_step(ref_model, ref.direction, lambda: ref_model(ids, labels=ids).loss, list(seen), ref.hp)
        assert loss_fast == pytest.approx(loss_ref, rel=rel)
        if fast.hp.engine == "virtual":
            for a, b in zip(fast_model.parameters(), ref_model.parameters(), strict=True):
                torch.testing.assert_close(a, b, rtol=rel, atol=atol)
    fast.settle()  # the in-place engine's last update waits for a next step: settle does it
    for a, b in zip(fast_model.parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=rel, atol=atol)


@pytest.mark.parametrize("hp", [{}, {"direction": "rademacher"}, {"q": 2}, {"direction": "sphere"},
                                {"weight_decay": 0.1}, {"engine": "inplace"},
                                {"engine": "inplace", "q": 2, "weight_decay": 0.1, "direction": "rademacher"},
                                {"rng": "counter"}, {"engine": "inplace", "rng": "counter"},
                                {"engine": "inplace", "rng": "counter", "q": 2, "weight_decay": 0.1,
                                 "direction": "rademacher"}],
                         ids=["gaussian", "rademacher", "q2", "sphere", "decay", "inplace", "inplace-q2-decay",
                              "counter", "inplace-counter", "inplace-counter-q2-decay-rademacher"])
def test_fast_engine_follows_the_four_pass_trajectory(hp, monkeypatch):
    monkeypatch.setattr(virtual, "BLOCKWISE_MIN", 1000)  # the tiny model's big matrices go block by block
    monkeypatch.setattr(noise, "CHUNK", 500)  # and every tensor of more than 500 numbers comes in pieces
    monkeypatch.setattr(noise, "COUNTER_GROUP", 500)  # with `rng: counter` too
    fast_model = tiny_llama()
    ref_model = copy.deepcopy(fast_model)
    ids = torch.randint(0, 300, (4, 12), generator=torch.Generator().manual_seed(1))
    fast, ref = method_for(fast_model, **hp), method_for(ref_model, **hp)
    follow_four_pass(fast_model, ref_model, fast, ref, ids, steps=5, rel=1e-5, atol=1e-6)
    moved = sum(float((a - b).detach().abs().sum()) for a, b in zip(fast_model.parameters(), tiny_llama().parameters(),
                                                            strict=True))
    assert moved > 0  # the trajectory went somewhere


def test_counter_directions_materialised_whole_follow_the_four_pass_trajectory(monkeypatch):
    """`rng: counter` with every matrix's θ + εz made whole in one compiled loop (no blockwise products)."""
    monkeypatch.setattr(noise, "CHUNK", 500)  # norms still packed in groups, matrices alone
    monkeypatch.setattr(noise, "COUNTER_GROUP", 500)
    fast_model = tiny_llama()
    ref_model = copy.deepcopy(fast_model)
    ids = torch.randint(0, 300, (4, 12), generator=torch.Generator().manual_seed(1))
    fast, ref = method_for(fast_model, rng="counter"), method_for(ref_model, rng="counter")
    shifts: list[int] = []
    shift = counter.shift_
    monkeypatch.setattr(counter, "shift_", lambda out, *rest: (shifts.append(out.numel()), shift(out, *rest))[1])
    follow_four_pass(fast_model, ref_model, fast, ref, ids, steps=3, rel=1e-5, atol=1e-6)
    assert max(shifts) == 300 * 32  # the tied embedding, made whole


@pytest.mark.parametrize("engine", ["inplace", "virtual"])
@pytest.mark.parametrize("direction", ["rademacher", "gaussian"])
def test_counter_groups_follow_the_four_pass_trajectory(engine, direction, monkeypatch):
    """`rng: counter` groups (here the whole tiny model is one): the in-place engine moves
    each into one buffer, members at their offsets in the group's draw; the virtual engine makes θ + εz for a
    few members at a time (a piece's worth: 2048 numbers here) from those numbers. Both the same numbers as
    the group's draw."""
    monkeypatch.setattr(noise, "CHUNK", 2048)
    fast_model = tiny_llama()
    ref_model = copy.deepcopy(fast_model)
    ids = torch.randint(0, 300, (4, 12), generator=torch.Generator().manual_seed(1))
    hp = {"engine": engine, "rng": "counter", "direction": direction, "q": 2}
    fast, ref = method_for(fast_model, **hp), method_for(ref_model, **hp)
    assert fast.directions.layout.members == [list(range(len(fast.params)))]
    follow_four_pass(fast_model, ref_model, fast, ref, ids, steps=3, rel=1e-5, atol=1e-6)
    storages = {p.untyped_storage().data_ptr() for p in fast_model.parameters()}
    if engine == "inplace":  # the groups' members share buffers
        assert len(storages) == 1
    else:  # the virtual engine moves nothing
        assert len(storages) == len(list(fast_model.parameters()))


def test_pieces_are_the_whole_direction_and_blockwise_ops_are_exact(monkeypatch):
    """Piecewise z equals the whole z bit for bit; the blockwise linear/embedding equal the materialised θ+εz."""
    monkeypatch.setattr(noise, "CHUNK", 300)
    model = tiny_llama()
    method = method_for(model, direction="rademacher")
    for i, p in enumerate(method.params):
        whole = method.direction(i, p, 11)
        parts = torch.cat([z.reshape(-1).clone() for _, _, z in method.directions.pieces(i, p, 11)])  # one buffer
        assert torch.equal(whole.reshape(-1), parts)
    ids = torch.randint(0, 300, (2, 9))
    loss = lambda: model(ids, labels=ids).loss  # noqa: E731
    monkeypatch.setattr(virtual, "BLOCKWISE_MIN", 10**12)
    whole = method.evaluate(loss, method.along(11, 1e-2))
    monkeypatch.setattr(virtual, "BLOCKWISE_MIN", 100)
    assert method.evaluate(loss, method.along(11, 1e-2)) == pytest.approx(whole, rel=1e-6)


def test_rademacher_bits_are_fair_and_independent():
    gen = torch.Generator().manual_seed(0)
    z = noise.fill(torch.Size((4096, 257)), torch.float32, torch.device("cpu"), "rademacher", noise.base_of(gen))
    assert set(z.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(z.mean())) < 5 / (z.numel() ** 0.5)  # 5 σ
    lagged = float((z.view(-1)[1:] * z.view(-1)[:-1]).mean())  # neighbours come from one byte's bits
    assert abs(lagged) < 5 / (z.numel() ** 0.5)


def test_an_embedding_lookup_draws_only_the_pieces_it_reads(monkeypatch):
    monkeypatch.setattr(virtual, "BLOCKWISE_MIN", 100)
    monkeypatch.setattr(noise, "CHUNK", 32 * 10)  # the 300 × 32 embedding: 30 pieces of 10 rows
    emb = torch.nn.Embedding(300, 32)
    method = method_for(emb)
    drawn: list[int] = []
    piece = noise.piece_
    monkeypatch.setattr(noise, "piece_", lambda out, kind, base, k, *start: (drawn.append(k),
                                                                         piece(out, kind, base, k, *start))[1])
    ids = torch.tensor([[3, 4, 250], [251, 3, 299]])
    seen = method.evaluate(lambda: emb(ids).sum(), method.along(4, 0.5))
    assert sorted(drawn) == [0, 25, 29]
    z = method.direction(0, emb.weight, 4)
    assert seen == pytest.approx(float((emb.weight + 0.5 * z)[ids].sum()), rel=1e-6)



def test_the_engine_and_generator_a_run_uses_are_named_in_its_resolved_spec(tmp_path):
    """What could change the numbers is in the spec: the defaults are written out (so in the record and the run id),
    and runs differing only in the generator or the engine get different run ids."""
    from zobench.config import load_suite
    from zobench.grid import expand

    path = tmp_path / "s.yaml"
    path.write_text("name: rng\ngrid:\n  tasks: [softmax-regression]\n  methods:\n"
                    "    - {name: zo-sgd, label: plain}\n    - {name: zo-sgd, label: counter, rng: counter}\n"
                    "    - {name: zo-sgd, label: virtual, engine: virtual}\n")
    suite, lines = load_suite(path)
    specs = {s.method.label: s for s in expand(suite, path, lines)}
    assert {k: specs["plain"].method.params[k] for k in ("engine", "rng")} == {"engine": "inplace", "rng": "torch"}
    assert specs["counter"].method.params["rng"] == "counter"
    assert specs["virtual"].method.params["engine"] == "virtual"
    assert len({s.spec_hash for s in specs.values()}) == 3
