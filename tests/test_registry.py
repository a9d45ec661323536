"""Registry entries declare what grid.py and the runner call on them; an entry missing one is refused when it
registers, not found out by a getattr default later."""

from __future__ import annotations

import pytest

from zobench import registry
from zobench.optim.base import Method
from zobench.schemes.base import Scheme


@pytest.mark.parametrize("kind", sorted(registry.REGISTRIES))
def test_every_builtin_entry_declares_its_kinds_interface(kind):
    reg = registry.REGISTRIES[kind]
    assert reg.declares, kind
    for name, entry in reg.items():
        assert all(hasattr(entry, attr) for attr in reg.declares), (kind, name)


def test_an_entry_without_the_interface_is_refused_naming_the_base():
    reg = registry.Registry("schemes", ("Params", "check", "apply"), "zobench.schemes.base.Scheme")

    class Bare:
        Params = None

        @staticmethod
        def apply(model, params):
            return model

    with pytest.raises(TypeError, match=r"scheme 'bare' .* does not declare check; subclass zobench.schemes.base"):
        reg.register("bare")(Bare)

    class Declared(Scheme):
        @staticmethod
        def apply(model, params):
            return model

    assert reg.register("declared")(Declared) is Declared


def test_method_defaults_are_a_plain_trained_methods():
    assert Method.takes_steps and not Method.prepares and Method.check({}) is None
    assert Method.incompatible("sst2", {}) is None and Method.uncompilable({}) is None
