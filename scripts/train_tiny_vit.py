"""Train the tiny ViT on the shapes-on-noise task and save its weights (the shipped file).

    .venv/bin/python scripts/train_tiny_vit.py          # → retrained/tiny_vit_shapes.pt
    .venv/bin/python scripts/train_tiny_vit.py --out src/saliencelab/data/tiny_vit_shapes.pt

`--out` is the file to write (the second line replaces the shipped file). Seeded, and the script
runs on one CPU thread, so the same torch version on the same kind of CPU gives the same weights
bit for bit (another version, or other vector instructions, ends at other weights of the same
behaviour): it says whether the result is identical to the bundled weights (the shipped file,
read before writing, whatever --out is) or how far it is from them and how often the two models
agree on 1000 fresh images. About 15 s on one CPU thread; prints the held-out accuracy.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from saliencelab.models.shapes import AGREEMENT_SEED, compare_weights, prediction_agreement
from saliencelab.models.vit import WEIGHTS_FILE, shapes_on_noise, tiny_vit, train_tiny_vit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=Path("retrained") / WEIGHTS_FILE.name, help="file to write"
    )
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, args.out)
    size = args.out.stat().st_size
    comparison = compare_weights(state, shipped)
    if comparison.startswith("differs") and shipped is not None:
        fresh = shapes_on_noise(1000, seed=AGREEMENT_SEED)[0]
        share = prediction_agreement(model, tiny_vit(), fresh)
        comparison += f"; {share:.1%} of predictions agree with them"
    print(
        f"accuracy {model.extra['accuracy']:.3f} after {model.extra['train_seconds']:.1f} s; "
        f"wrote {args.out} ({size / 1024:.0f} KiB), {comparison}",
        flush=True,
    )


if __name__ == "__main__":
    main()
