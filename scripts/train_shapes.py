"""Train the shapes test bed's models and save their weights (the bundled files).

    .venv/bin/python scripts/train_shapes.py                  # all four → src/saliencelab/data/
    .venv/bin/python scripts/train_shapes.py --only shapes_cnn

Each recipe (`saliencelab.models.shapes.RECIPES`) is seeded and runs on one CPU thread, so the
same torch version gives the same weights bit for bit (the script says whether a file changed).
Prints the accuracy on 1000 held-out images and the training time of each.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch

from saliencelab.models.shapes import DATA_DIR, RECIPES, train


def digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.is_file() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(RECIPES), help="recipes to train")
    parser.add_argument("--out", type=Path, default=DATA_DIR, help="folder for the .pt files")
    parser.add_argument("--steps", type=int, default=None, help="override the steps (testing)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # deterministic, and on models this small the fastest
    torch.use_deterministic_algorithms(True)
    for name in args.only or list(RECIPES):
        model = train(name, steps=args.steps, verbose=True)
        path = args.out / RECIPES[name].file
        before = digest(path)
        state = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
        torch.save(state, path)
        after = digest(path)
        extra = model.extra
        print(
            f"{name}: accuracy {extra['accuracy']:.3f} after {extra['train_seconds']:.1f} s "
            f"({extra['train_cpu_seconds']:.1f} s CPU); wrote {path} "
            f"({path.stat().st_size / 1024:.0f} KiB, sha256 {after}, "
            f"{'unchanged' if before == after else 'changed'})",
            flush=True,
        )


if __name__ == "__main__":
    main()
