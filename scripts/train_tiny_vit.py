"""Train the tiny ViT on the shapes-on-noise task and save its weights (the shipped file).

    .venv/bin/python scripts/train_tiny_vit.py          # → src/saliencelab/data/tiny_vit_shapes.pt
    .venv/bin/python scripts/train_tiny_vit.py --out /tmp/tiny_vit.pt   # compare, keep the file

`--out` is the file to write (default: the shipped file). Seeded, and the script runs on one CPU
thread, so the same torch version gives the same weights bit for bit: it says whether the result
is identical to the bundled weights (the shipped file, read before writing, whatever --out is)
or how far it is from them. About 15 s on one CPU thread; prints the held-out accuracy.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from saliencelab.models.shapes import compare_weights
from saliencelab.models.vit import WEIGHTS_FILE, train_tiny_vit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=WEIGHTS_FILE, help="the .pt file to write")
    args = parser.parse_args()
    torch.set_num_threads(1)  # deterministic and, on a small model, the fastest
    model = train_tiny_vit(steps=args.steps, seed=args.seed, verbose=True)
    state = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
    # Read before writing: --out may be the shipped file.
    shipped = (
        torch.load(WEIGHTS_FILE, map_location="cpu", weights_only=True)
        if WEIGHTS_FILE.is_file()
        else None
    )
    torch.save(state, args.out)
    size = args.out.stat().st_size
    print(
        f"accuracy {model.extra['accuracy']:.3f} after {model.extra['train_seconds']:.1f} s; "
        f"wrote {args.out} ({size / 1024:.0f} KiB), {compare_weights(state, shipped)}",
        flush=True,
    )


if __name__ == "__main__":
    main()
