"""Train the shapes test bed's models and save their weights (the bundled files).

    .venv/bin/python scripts/train_shapes.py                  # all four → src/saliencelab/data/
    .venv/bin/python scripts/train_shapes.py --only shapes_cnn

Each recipe (`saliencelab.models.shapes.RECIPES`) is seeded and runs on one CPU thread, so the
same torch version gives the same weights bit for bit: the script says whether each result is
identical to the bundled weights (`src/saliencelab/data/`, read before writing, whatever --out
is) or how far it is from them. Prints the accuracy on 1000 held-out images and the training time
of each.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch

from saliencelab.models.shapes import DATA_DIR, RECIPES, compare_weights, train


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def load_bundled(name: str) -> dict[str, torch.Tensor] | None:
    """The bundled state dict of the recipe `name`, or None when there is no such file."""
    path = DATA_DIR / RECIPES[name].file
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(RECIPES), help="recipes to train")
    parser.add_argument("--out", type=Path, default=DATA_DIR, help="folder for the .pt files")
    parser.add_argument("--steps", type=int, default=None, help="override the steps (testing)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # deterministic, and on models this small the fastest
    torch.use_deterministic_algorithms(True)
    for name in args.only or list(RECIPES):
        model = train(name, steps=args.steps, verbose=True)
        path = args.out / RECIPES[name].file
        bundled = load_bundled(name)  # before writing: --out may be the bundled folder
        state = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
        torch.save(state, path)
        extra = model.extra
        print(
            f"{name}: accuracy {extra['accuracy']:.3f} after {extra['train_seconds']:.1f} s "
            f"({extra['train_cpu_seconds']:.1f} s CPU); wrote {path} "
            f"({path.stat().st_size / 1024:.0f} KiB, sha256 {digest(path)}), "
            f"{compare_weights(state, bundled)}",
            flush=True,
        )


if __name__ == "__main__":
    main()
