"""Errors a user can cause. The CLI turns them into one message and exit code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input: the message names the file, the field and the fix."""


class FieldError(UserError):
    """A bad value in one field of a component's parameters, found by its `check` hook.
    The grid prefixes file, line and the field's path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def did_you_mean(name: str, allowed: Iterable[str]) -> str:
    """A hint listing the allowed values, with the closest one first when there is one."""
    allowed = sorted(allowed)
    close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"{hint}allowed: {', '.join(allowed)}"
