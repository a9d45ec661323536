"""Tuning schemes: which parameters a method trains (full; lora, prefix, prompt through peft)."""

from zobench.schemes import full, peft_schemes  # noqa: F401
