"""Registries filled by decorators, so a new method, task, model or scheme is one decorated class."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from zobench.errors import UserError, did_you_mean

T = TypeVar("T")


class UnknownName(UserError, KeyError):
    """A name that is not registered; the message lists what is."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    """Name → class (or factory). Plugins add entries through the `zobench.<kind>` entry-point group.

    `declares`: what every entry of this kind must have (a plugin's class that lacks one is refused when it
    registers, naming the base class that gives the defaults), so grid.py and the runner call them directly."""

    def __init__(self, kind: str, declares: tuple[str, ...] = (), base: str = "") -> None:
        self.kind = kind
        self.declares, self.base = declares, base
        self._entries: dict[str, T] = {}
        self._plugins_loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        def decorate(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            missing = [attr for attr in self.declares if not hasattr(obj, attr)]
            if missing:
                raise TypeError(f"{self.kind[:-1]} '{name}' ({getattr(obj, '__qualname__', obj)}) does not declare "
                                f"{', '.join(missing)}; subclass {self.base}, which gives the defaults")
            self._entries[name] = obj
            try:
                obj.registered_name = name  # type: ignore[attr-defined]
            except (AttributeError, TypeError):
                pass
            return obj

        return decorate

    def _load(self) -> None:
        load_builtins()
        if not self._plugins_loaded:
            self._plugins_loaded = True
            for ep in entry_points(group=f"zobench.{self.kind}"):
                ep.load()

    def get(self, name: str) -> T:
        self._load()
        if name not in self._entries:
            raise UnknownName(f"unknown {self.kind[:-1] if self.kind.endswith('s') else self.kind} "
                              f"'{name}'; {did_you_mean(name, self._entries)}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        self._load()
        return sorted(self._entries.items())


methods: Registry[Any] = Registry("methods", ("Params", "resolved", "check", "incompatible", "uncompilable",
                                              "takes_steps"),
                                  "zobench.optim.base.Method")
tasks: Registry[Any] = Registry("tasks", ("Params", "check", "needs_model", "build"), "zobench.tasks.base.Task")
models: Registry[Any] = Registry("models", ("Params", "check", "load"), "zobench.models.base.ModelLoader")
schemes: Registry[Any] = Registry("schemes", ("Params", "check", "apply"), "zobench.schemes.base.Scheme")
executors: Registry[Any] = Registry("executors", ("Options", "run"), "zobench.executors.local.Executor")

REGISTRIES = {r.kind: r for r in (methods, tasks, models, schemes, executors)}

# Modules whose import fills the registries. A new module adds itself here.
BUILTIN_MODULES = (
    "zobench.optim",
    "zobench.training_free",
    "zobench.problems",
    "zobench.tasks",
    "zobench.models",
    "zobench.schemes",
    "zobench.executors",
)
_builtins_loaded = False


def load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for module in BUILTIN_MODULES:
            import_module(module)
