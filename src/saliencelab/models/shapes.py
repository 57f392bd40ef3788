"""Small models trained on the shapes test bed (:mod:`saliencelab.data.shapes`), whose right
answer is known: the class is decided by one object whose mask the generator returns.

- :class:`ShapesCNN`: four 3 × 3 conv → BatchNorm → ReLU layers (16, 32, 32, 32 channels; 2 × 2
  max-pooling after the first two, so the last layer is a 16 × 16 map of 64 × 64 inputs, receptive
  field 26 pixels, larger than any object), global average pooling and a linear head (so Grad-CAM
  at `features` is CAM up to a ReLU, Zhou et al. 2016). About 23 k parameters.
- :class:`ShapesViT`: :class:`~saliencelab.models.vit.TinyViT` at 64 × 64 with 8 × 8 tokens of
  width 48, 3 blocks, 3 heads, whose patch embedding is a small convolutional stem (see the
  class; about 82 k parameters).

Bundled weights (`src/saliencelab/data/shapes_*.pt`, made by `scripts/train_shapes.py` from
seeds on one CPU thread, about a minute of CPU time each: bit for bit on the same torch version
and kind of CPU, elsewhere other weights of the same behaviour):

=====================  ==========================================================  ========
name                   trained on (`make` options; 300 steps of 64, ViT 500)       accuracy
=====================  ==========================================================  ========
shapes_cnn             the clean shape task                                        1.000
shapes_vit             the clean shape task                                        0.999
shapes_cnn_shortcut    `shortcut=1.0, object_size=(8, 12)`: a watermark always     0.958
                       naming the class; it follows the watermark when it lies
shapes_cnn_backdoor    `backdoor=0.1, target=0`: the trigger flips to "square"     1.000
=====================  ==========================================================  ========

(accuracy on 1000 held-out images of the training distribution without watermark or trigger;
the flaws are measured in tests/test_shapes.py). Inputs are RGB in [0, 1] at 64 × 64, as `make`
returns them; `preprocess` also takes PIL images, uint8 arrays or tensors (stretched to 64 × 64,
no crop; the models' `extra["display"]`, :func:`display`, shows a photo the same way for
overlays).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..core.errors import SaliencelabError
from ..core.seeds import own_global_rng
from ..data import shapes as shapes_data
from ..data.images import to_rgb
from .model import Model
from .vit import TinyViT

INPUT_SIZE = (64, 64)
DATA_DIR = Path(__file__).resolve().parent.parent / "data"


class ShapesCNN(nn.Module):
    """conv-BN-ReLU ×4 (pool after the first two) → global average pool → linear."""

    def __init__(self, classes: int = 4, widths: Sequence[int] = (16, 32, 32, 32)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for i, cout in enumerate(widths):
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)]
            layers.append(nn.ReLU())
            if i < 2:
                layers.append(nn.MaxPool2d(2))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


class ConvStem(nn.Module):
    """Patch embedding by early convolutions (Xiao et al., "Early Convolutions Help Transformers
    See Better", NeurIPS 2021): three 3 × 3 stride-2 conv → BatchNorm → ReLU, then a 1 × 1 conv
    to the token width; one token per 8 × 8 patch, as a patch-8 ViT has."""

    patch_size = 8  # read by saliencelab.core.tokens to lay tokens on the grid

    def __init__(self, dim: int, widths: Sequence[int] = (16, 32, 48)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for cout in widths:
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False)]
            layers += [nn.BatchNorm2d(cout), nn.ReLU()]
            cin = cout
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Conv2d(cin, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.convs(x))


class ShapesViT(TinyViT):
    """:class:`~saliencelab.models.vit.TinyViT` at 64 × 64 (8 × 8 tokens + a class token) whose
    patch embedding is a :class:`ConvStem`. With the plain linear patch embedding (patches of 8
    or 4, class token or mean pooling) the loss stayed at chance for 400 steps on the shape task,
    where the object's colour is random (a linear map of a patch mixes its shape with its
    colour; the same model learns the colour task in 50 steps); with the stem it learns the
    shape task in about 300 steps, the effect Xiao et al. report."""

    def __init__(self, classes: int = 4, dim: int = 48, depth: int = 3, heads: int = 3) -> None:
        super().__init__(
            image_size=64, patch_size=8, dim=dim, depth=depth, heads=heads, classes=classes
        )
        self.patch_embed = ConvStem(dim)


def shapes_vit_module(classes: int = 4) -> ShapesViT:
    """The shapes ViT's architecture (untrained)."""
    return ShapesViT(classes=classes)


@dataclass(frozen=True)
class Recipe:
    """How a bundled model is trained: architecture, data options, optimiser, seed."""

    arch: str  # "cnn" or "vit"
    file: str
    data: dict[str, Any] = field(default_factory=dict)  # options of shapes_data.make
    steps: int = 300
    batch: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    about: str = ""


RECIPES: dict[str, Recipe] = {
    "shapes_cnn": Recipe("cnn", "shapes_cnn.pt", about="the clean shape task"),
    "shapes_vit": Recipe(
        "vit", "shapes_vit.pt", steps=500, weight_decay=0.01, about="the clean shape task"
    ),
    "shapes_cnn_shortcut": Recipe(
        "cnn",
        "shapes_cnn_shortcut.pt",
        data={"shortcut": 1.0, "object_size": (8, 12)},
        about="a watermark that always names the class (a shortcut), objects of 8-12 pixels",
    ),
    "shapes_cnn_backdoor": Recipe(
        "cnn",
        "shapes_cnn_backdoor.pt",
        data={"backdoor": 0.1, "target": 0},
        about="10 % of images with the trigger, labelled class 0 (a backdoor)",
    ),
}


def _module(arch: str) -> nn.Module:
    return ShapesCNN() if arch == "cnn" else shapes_vit_module()


def preprocess(img: Any) -> torch.Tensor:
    """A (N, 3, 64, 64) batch in [0, 1] from a `Shapes` batch, a PIL image, a uint8 array or
    tensor or one of floats in [0, 1] ((3, H, W), (H, W, 3), RGBA laid on white, or (N, 3, H, W)),
    or a list of images; other sizes are stretched (bilinear, no crop). Floats outside [0, 1]
    (0..255 pixels, or a normalised model input) and other dtypes (uint16, bool) are refused in
    one sentence."""
    if isinstance(img, shapes_data.Shapes):
        x = img.images
    elif isinstance(img, (list, tuple)):
        if not img:
            raise SaliencelabError("Got an empty list of images; pass at least one image.")
        return torch.cat([preprocess(i) for i in img])
    elif isinstance(img, Image.Image):
        x = torch.from_numpy(np.asarray(to_rgb(img), dtype=np.uint8).copy())
        x = x.permute(2, 0, 1)
    elif isinstance(img, (np.ndarray, torch.Tensor)):
        x = torch.from_numpy(img.copy()) if isinstance(img, np.ndarray) else img
        if x.dim() == 3 and x.shape[-1] in (1, 3, 4) and x.shape[0] not in (1, 3, 4):
            x = x.permute(2, 0, 1)  # (H, W, C) -> (C, H, W)
    else:
        raise SaliencelabError(
            f"Cannot preprocess a {type(img).__name__} for a shapes model; pass a PIL image, an "
            "array or tensor of RGB pixels, a list of them, or a batch from sl.data.shapes.make."
        )
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4 or x.shape[1] not in (1, 3, 4):
        raise SaliencelabError(
            f"Expected RGB images (3, H, W), (H, W, 3) or (N, 3, H, W), got shape "
            f"{tuple(x.shape)}; pass one of those, or a PIL image."
        )
    if x.numel() == 0:
        raise SaliencelabError(
            f"Got no pixels to preprocess (shape {tuple(x.shape)}); pass at least one image of "
            "at least one pixel."
        )
    if x.is_floating_point():
        x = x.float()
        if not (torch.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0):
            raise SaliencelabError(
                f"Float images for a shapes model must hold pixels in [0, 1], but these run from "
                f"{float(x.nan_to_num().min()):.3g} to {float(x.nan_to_num().max()):.3g}; divide "
                "0..255 pixels by 255, or pass uint8 (not the model's normalised input)."
            )
    elif x.dtype == torch.uint8:
        x = x.float() / 255.0
    else:
        raise SaliencelabError(
            "Expected a photo to preprocess for a shapes model: a tensor or array of uint8 "
            f"pixels or floats in [0, 1]; got dtype {str(x.dtype).removeprefix('torch.')}; "
            "convert it to one of those (16-bit pixels: divide by 65535.0)."
        )
    if x.shape[1] == 4:  # RGBA laid on white, as images read from files are
        alpha = x[:, 3:]
        x = x[:, :3] * alpha + (1.0 - alpha)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if tuple(x.shape[-2:]) != INPUT_SIZE:
        x = F.interpolate(x, size=INPUT_SIZE, mode="bilinear", align_corners=False, antialias=True)
    return x


def display(img: Any) -> Image.Image:
    """The RGB image exactly as the model sees it: the whole photo stretched to 64 × 64 (as
    `preprocess` does, no crop), so that overlays and galleries line up with the maps."""
    x = preprocess(img)
    if x.shape[0] != 1:
        raise SaliencelabError(
            f"display shows one image, but got a batch of {x.shape[0]}; pass the images one by one."
        )
    pixels = (x[0].detach().cpu().permute(1, 2, 0) * 255.0 + 0.5).to(torch.uint8).numpy()
    return Image.fromarray(pixels, "RGB")


def as_shapes_model(module: nn.Module, name: str, recipe: Recipe | None = None) -> Model:
    """`module` (a :class:`ShapesCNN` or the shapes ViT) as an `sl.Model`."""
    task = (recipe.data.get("task") if recipe else None) or "shape"
    if isinstance(module, ShapesCNN):
        layer = "features"
    else:
        layer = f"blocks.{len(module.blocks) - 1}.norm1"
    extra: dict[str, Any] = {"task": task, "display": display}
    if recipe is not None:
        extra.update(trained_on=dict(recipe.data), about=recipe.about)
    return Model(
        module=module.eval(),
        preprocess=preprocess,
        labels=list(shapes_data.TASKS[task]),
        name=name,
        default_layer=layer,
        input_size=INPUT_SIZE,
        extra=extra,
    )


def load(name: str = "shapes_cnn", pretrained: bool = True) -> Model:
    """A bundled shapes model (a key of :data:`RECIPES`) with its weights (`pretrained=False`:
    the architecture, randomly initialised)."""
    if name not in RECIPES:
        raise SaliencelabError(
            f"Unknown shapes model {name!r}; use one of {', '.join(sorted(RECIPES))}."
        )
    recipe = RECIPES[name]
    module = _module(recipe.arch)
    if pretrained:
        path = DATA_DIR / recipe.file
        if not path.is_file():
            raise SaliencelabError(
                f"The weights of {name} are missing ({path}); run scripts/train_shapes.py "
                f"--only {name} to make them, or use pretrained=False."
            )
        module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return as_shapes_model(module, name, recipe)


@own_global_rng  # seeds torch's generator for itself, not for the caller
def train(
    name: str = "shapes_cnn",
    steps: int | None = None,
    verbose: bool = False,
    held_out: int = 1000,
    **overrides: Any,
) -> Model:
    """Train the recipe `name` (fields replaced by `overrides`), seeded and deterministic on one
    CPU thread: AdamW, one-cycle cosine schedule, a fresh batch from `make` at each step (seed
    derived from the recipe's seed and the step). `extra` of the result holds `accuracy` on
    `held_out` images of the training data without watermark or trigger (seed 10⁶ + recipe
    seed; `held_out=0`: not measured, NaN), `train_seconds` (wall clock) and
    `train_cpu_seconds` (this process's CPU time, steadier on a loaded machine)."""
    if name not in RECIPES:
        raise SaliencelabError(
            f"No shapes recipe named {name!r}; use one of {', '.join(map(repr, RECIPES))}."
        )
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(RECIPES[name])})
    if unknown:
        raise SaliencelabError(
            f"{unknown[0]!r} is no field of a shapes recipe; use some of "
            f"{', '.join(f.name for f in dataclasses.fields(RECIPES[name]))}."
        )
    recipe = dataclasses.replace(RECIPES[name], **overrides)
    steps = recipe.steps if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise SaliencelabError(f"steps must be a whole number ≥ 1, got {steps!r}.")
    torch.manual_seed(recipe.seed)
    module = _module(recipe.arch)
    opt = torch.optim.AdamW(module.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=recipe.lr, total_steps=steps, pct_start=0.15
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    module.train()
    for step in range(steps):
        data = shapes_data.make(
            recipe.batch, seed=(recipe.seed + 1) * 1_000_003 + step, **recipe.data
        )
        loss = F.cross_entropy(module(data.images), data.labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if verbose and step % 50 == 0:
            print(f"{name} step {step:4d}  loss {loss.item():.3f}", flush=True)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    flaws = ("shortcut", "backdoor", "target", "watermark_fraction")
    clean = {k: v for k, v in recipe.data.items() if k not in flaws}
    model = as_shapes_model(module.eval(), name, recipe)
    model.extra.update(
        accuracy=accuracy(model, n=held_out, seed=10**6 + recipe.seed, **clean)
        if held_out
        else float("nan"),
        train_seconds=seconds,
        train_cpu_seconds=cpu_seconds,
    )
    return model


def compare_weights(state: dict[str, torch.Tensor], bundled: dict[str, torch.Tensor] | None) -> str:
    """How `state` compares with the bundled weights, as a phrase: "identical to the bundled
    weights" (same names, shapes, dtypes and values bit for bit), or "differs from the bundled
    weights (...)": the first name, shape or dtype mismatch, else max |Δ| = the largest |a - b|
    over the floating-point tensors, else the first integer tensor (a counter) that differs.
    Used by scripts/train_shapes.py and scripts/train_tiny_vit.py."""
    if bundled is None:
        return "no bundled weights to compare with"
    missing, extra = sorted(set(bundled) - set(state)), sorted(set(state) - set(bundled))
    if missing or extra:
        what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        return f"differs from the bundled weights ({what})"
    worst, where, other = 0.0, "", ""
    for key, ref in bundled.items():
        ours = state[key]
        if ours.shape != ref.shape or ours.dtype != ref.dtype:
            return (
                f"differs from the bundled weights ({key}: {tuple(ours.shape)} {ours.dtype}, "
                f"bundled {tuple(ref.shape)} {ref.dtype})"
            )
        if torch.equal(ours, ref):
            continue
        if not ref.is_floating_point():  # a counter such as num_batches_tracked
            other = other or key
            continue
        delta = (ours.double() - ref.double()).abs().nan_to_num(nan=float("inf")).max().item()
        if not where or delta > worst:
            worst, where = delta, key
    if where:
        return f"differs from the bundled weights (max |Δ| {worst:.3g} in {where})"
    if other:
        return f"differs from the bundled weights (in {other})"
    return "identical to the bundled weights"


#: Seed of the fresh images the training scripts compare a retrained model on (neither a training
#: step's, (seed + 1) · 1_000_003 + step, nor the held-out ones, 10⁶ + seed).
AGREEMENT_SEED = 3 * 10**6


@torch.no_grad()
def prediction_agreement(model: Model, reference: Model, x: torch.Tensor) -> float:
    """The share of the rows of `x` on which `model` predicts the class `reference` predicts
    (scripts/train_shapes.py and train_tiny_vit.py: a retrained model against the bundled one)."""
    return (model(x).argmax(1) == reference(x).argmax(1)).float().mean().item()


@torch.no_grad()
def accuracy(model: Model, n: int = 1000, seed: int = 10**6, **data: Any) -> float:
    """Accuracy of `model` on `n` fresh images from `make(n, seed=seed, **data)`, scored against
    `labels` (for a backdoor, triggered images count as right when they hit the target)."""
    test = shapes_data.make(n, seed=seed, **data)
    preds = torch.cat([model(x).argmax(1) for x in test.images.split(250)])
    return (preds == test.labels).float().mean().item()
