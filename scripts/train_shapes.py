"""Train the shapes test bed's models and save their weights (the bundled files).

    .venv/bin/python scripts/train_shapes.py                  # all four → retrained/
    .venv/bin/python scripts/train_shapes.py --only shapes_cnn
    .venv/bin/python scripts/train_shapes.py --out src/saliencelab/data   # replace the bundled

Each recipe (`saliencelab.models.shapes.RECIPES`) is seeded and runs on one CPU thread with
deterministic algorithms, so the same torch version on the same kind of CPU gives the same
weights bit for bit. Another torch version, or a CPU with other vector instructions (torch picks
its kernels by the CPU: AVX2, AVX-512, ...), sums in another order and ends at other weights of
the same behaviour. The script says whether each result is identical to the bundled weights
(`src/saliencelab/data/`, read before writing, whatever --out is) or how far it is from them and
how often the two models agree on 1000 fresh images of the training distribution (watermark or
trigger included). Prints the accuracy on 1000 held-out images and the training time of each.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch

from saliencelab.data.shapes import make
from saliencelab.models.model import Model
from saliencelab.models.shapes import (
    AGREEMENT_SEED,
    DATA_DIR,
    RECIPES,
    compare_weights,
    load,
    prediction_agreement,
    train,
)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def load_bundled(name: str) -> dict[str, torch.Tensor] | None:
    """The bundled state dict of the recipe `name`, or None when there is no such file."""
    path = DATA_DIR / RECIPES[name].file
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None


def agreement(model: Model, name: str, n: int = 1000) -> float:
    """The share of `n` fresh images of the recipe's training data (its watermark or trigger
    included) on which `model` predicts what the bundled model of `name` predicts."""
    x = make(n, seed=AGREEMENT_SEED + RECIPES[name].seed, **RECIPES[name].data).images
    return prediction_agreement(model, load(name), x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(RECIPES), help="recipes to train")
    parser.add_argument(
        "--out", type=Path, default=Path("retrained"), help="folder for the .pt files"
    )
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
        comparison = compare_weights(state, bundled)
        if comparison.startswith("differs"):
            comparison += f"; {agreement(model, name):.1%} of predictions agree with them"
        print(
            f"{name}: accuracy {extra['accuracy']:.3f} after {extra['train_seconds']:.1f} s "
            f"({extra['train_cpu_seconds']:.1f} s CPU); wrote {path} "
            f"({path.stat().st_size / 1024:.0f} KiB, sha256 {digest(path)}), {comparison}",
            flush=True,
        )


if __name__ == "__main__":
    main()
