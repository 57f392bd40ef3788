"""A ground-truth test bed: images whose class is decided by one object whose mask is known.

`make(n, task=...)` draws `n` images (n, 3, H, W) in [0, 1] RGB, which is also the input space of
the bundled shapes models (`sl.load_model("shapes_cnn")`, `"shapes_vit"`: no normalisation). Each
image holds exactly one object, and the object alone decides the class:

- `task="shape"`: the object's shape, one of :data:`SHAPE_CLASSES` (square, disk, triangle,
  cross); its colour is a random saturated hue.
- `task="colour"`: its colour, one of :data:`COLOUR_CLASSES` (red, green, blue, yellow, with a
  little hue, saturation and value jitter); its shape is random among the four shapes.
- `task="texture"`: the pattern filling it, one of :data:`TEXTURE_CLASSES` (stripes in a random
  orientation, checks, dots, grid; period 4 pixels, random phase, object colour on a dark
  version of it); the region is a square or a disk, its colour a random saturated hue.

The side of the box the object is drawn in is drawn uniformly from `object_size` (default about
22 % to 34 % of the image side: 14 to 22 pixels at 64 × 64; at least 5 pixels for
`task="shape"`, as at 4 a disk and a cross have the same pixels), and the box (`boxes`) is
placed uniformly at random inside a margin of 6 pixels (the corners hold the watermark and the
trigger, which never overlap it). The background carries no class evidence: a grey level
U(0.3, 0.6) plus a smooth low-saturation colour field (a random 4 × 4 grid of offsets ±0.08,
upsampled bilinearly) and, over the whole scene, pixel noise N(0, 0.04²), clamped to [0, 1].
`masks` are the object's exact pixels: every pixel outside the object (and the watermark and
trigger, when present) is the same as in `make(..., draw_object=False)`, which draws the same
scene without the object.

Two flaws a model can learn, both placed digitally (exact pixel values, after the noise):

- `shortcut=p`: a watermark, a 4 × 4 patch in the top-left corner (pixels 1-4) whose colour
  names a class through :data:`WATERMARK_COLOURS`; it names the sample's class with probability
  `p` and one of the other classes uniformly otherwise. `p = 1 / n_classes` makes it independent
  of the class, `p = 0` always wrong (use those to test a model trained with a high `p`).
  `watermark_fraction` (default 1) is the probability that an image carries one at all.
- `backdoor=f`: each image carries, with probability `f`, a trigger, a 5 × 5 black-and-white
  checkerboard in the bottom-right corner, and its label is flipped to `target` (default
  class 0): BadNets (Gu et al. 2017). `object_labels` keep the object's true class.

Each image's class, object, watermark and trigger are drawn independently of the other images':
a batch is not class-balanced, and `backdoor=f` and `watermark_fraction` are per-image
probabilities, not exact shares. Random numbers come from one `torch.Generator` seeded with
`seed` and are all drawn whatever the options, so the same seed gives the same objects and
background with or without a shortcut, backdoor or object. They are drawn in vectorised blocks
of `n` (all the classes, then all the sides, ...), so a different `n` gives different images:
`make(4)` is not the first four of `make(8)`. Everything is vectorised in torch: 1000 images
take about 0.1-0.3 s of one CPU core (drawing the noise and the background dominates).
"""

from __future__ import annotations

import dataclasses
import numbers
import operator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import SaliencelabError

SHAPE_CLASSES = ("square", "disk", "triangle", "cross")
COLOUR_CLASSES = ("red", "green", "blue", "yellow")
TEXTURE_CLASSES = ("stripes", "checks", "dots", "grid")
TASKS = {"shape": SHAPE_CLASSES, "colour": COLOUR_CLASSES, "texture": TEXTURE_CLASSES}

COLOUR_HUES = (0.0, 1 / 3, 2 / 3, 1 / 6)  # red, green, blue, yellow on the HSV hue circle
WATERMARK_COLOURS = torch.tensor(
    [[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 0.5, 0.0], [1.0, 1.0, 1.0]]
)  # magenta, cyan, orange, white: class k's watermark
WATERMARK_SIDE = 4
TRIGGER_SIDE = 5
MARGIN = 6  # the object stays this far from every border
MIN_SHAPE_SIDE = 5  # at a side of 4 a disk and a cross draw the same pixels, and a texture's
# stripes or checks can light the same pixels as its dots: the shape and texture tasks need 5
NOISE = 0.04
TEXTURE_PERIOD = 4


@dataclass
class Shapes:
    """A batch of the test bed (see the module docstring).

    Attributes:
        images: (N, 3, H, W) float in [0, 1], the models' input.
        labels: (N,) long, the labels to train or score on (flipped to `target` where triggered).
        object_labels: (N,) long, the class of the object (the truth by construction).
        masks: (N, H, W) bool, the object's pixels.
        boxes: (N, 4) long, the box the object is drawn in as xyxy pixels (left, top, right,
            bottom), right and bottom exclusive: `sl.metrics.boxes_to_masks(boxes, size)` gives
            the boxes' masks (the torchvision convention; until 2026-11-23 (top, left, bottom,
            right)). It is not always the tight box of `masks`: a square fills about its inner
            80 % (half-side 0.8; all of it at sides 4 and 5), and at even sides a triangle's
            top row is empty; disks and crosses touch all four sides.
        watermarked: (N,) bool, which images carry the watermark.
        watermark_labels: (N,) long, the class the watermark names (-1 where there is none).
        watermark_mask: (H, W) bool, where the watermark is drawn when present.
        triggered: (N,) bool, which images carry the backdoor trigger.
        trigger_mask: (H, W) bool, where the trigger is drawn when present.
        target: the backdoor's target class (None without a backdoor).
        class_names: the class names, index = label.
        task: "shape", "colour" or "texture".
    """

    images: torch.Tensor
    labels: torch.Tensor
    object_labels: torch.Tensor
    masks: torch.Tensor
    boxes: torch.Tensor
    watermarked: torch.Tensor
    watermark_labels: torch.Tensor
    watermark_mask: torch.Tensor
    triggered: torch.Tensor
    trigger_mask: torch.Tensor
    target: int | None
    class_names: tuple[str, ...]
    task: str

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int | slice | torch.Tensor) -> Shapes:
        """The samples at `index`: an integral number (an int, a numpy integer or a 0-d integer
        tensor: keeps a batch axis of one), a slice (any step), or a tensor or list of indices
        or of one bool per sample."""
        if _is_bool_scalar(index):
            raise SaliencelabError(
                f"Cannot index a Shapes batch with {index!r}; use an int, a slice or a tensor."
            )
        number = _integer(index)
        if number is not None:
            if not -len(self) <= number < len(self):
                raise IndexError(f"index {number} is out of range for {len(self)} images")
            number %= len(self)
            index = slice(number, number + 1)
        elif isinstance(index, slice) and (index.step or 1) < 0:  # torch slices step forwards
            index = torch.tensor(range(len(self))[index], dtype=torch.long)
        elif isinstance(index, (list, np.ndarray)):  # indices or bools, as one tensor (not
            index = torch.as_tensor(index)  # a key of several axes)
        try:
            if not isinstance(index, (slice, torch.Tensor)):
                raise TypeError(f"a {type(index).__name__} is no index")
            picked = self.images[index]
        except (IndexError, TypeError, ValueError, RuntimeError) as err:
            raise SaliencelabError(
                f"Cannot index a Shapes batch of {len(self)} images with {index!r} "
                f"({str(err).splitlines()[0]}); use an int, a slice, or a tensor or list of "
                "indices or of one bool per image."
            ) from None
        if picked.dim() != self.images.dim():
            raise SaliencelabError(
                f"Cannot index a Shapes batch with {index!r}: it picks no batch of images; use "
                "an int, a slice, or a 1-d tensor or list of indices or of one bool per image."
            )
        per_sample = {
            f.name: getattr(self, f.name)[index]
            for f in dataclasses.fields(self)
            if f.name
            in (
                "labels",
                "object_labels",
                "masks",
                "boxes",
                "watermarked",
                "watermark_labels",
                "triggered",
            )
        }
        return dataclasses.replace(self, images=picked, **per_sample)

    @property
    def watermark_masks(self) -> torch.Tensor:
        """(N, H, W) bool: the watermark's pixels in each image (empty where there is none)."""
        return self.watermark_mask[None] & self.watermarked[:, None, None]

    @property
    def trigger_masks(self) -> torch.Tensor:
        """(N, H, W) bool: the trigger's pixels in each image (empty where there is none)."""
        return self.trigger_mask[None] & self.triggered[:, None, None]


def _is_bool_scalar(value: object) -> bool:
    """Whether `value` is one truth value: a bool, a numpy bool or a 0-d bool tensor."""
    if isinstance(value, torch.Tensor):
        return value.dim() == 0 and value.dtype == torch.bool
    return isinstance(value, (bool, np.bool_))


def _integer(value: object) -> int | None:
    """`value` as an int if it is an integral number or a 0-d integer tensor (not a bool), else
    None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, torch.Tensor) and (value.dim() or value.dtype == torch.bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(..., 3) RGB from hue, saturation, value in [0, 1]: c_n = v − v·s·clamp(min(k, 4 − k), 0, 1)
    with k = (n + 6h) mod 6 for n = 5, 3, 1."""
    n = torch.tensor([5.0, 3.0, 1.0])
    k = (n + 6 * h[..., None]) % 6
    return v[..., None] - v[..., None] * s[..., None] * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def _shape_masks(kind: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(N, H, W) masks of shape `kind` (N,) at coordinates u, v (N, H, W), scaled so the box is
    [-1, 1]²: square of half-side 0.8, unit disk, upward triangle, cross of arms 0.35 wide."""
    au, av = u.abs(), v.abs()
    inside = (au <= 1) & (av <= 1)
    masks = torch.stack(
        [
            (au <= 0.8) & (av <= 0.8),
            u * u + v * v <= 1,
            inside & (au <= (v + 1) / 2),
            inside & ((au <= 0.35) | (av <= 0.35)),
        ]
    )
    return masks.gather(0, kind[None, :, None, None].expand(1, *u.shape))[0]


def _texture(kind: torch.Tensor, x: torch.Tensor, y: torch.Tensor, vertical: torch.Tensor):
    """(N, H, W) bool: where the texture `kind` (N,) is lit, at integer coordinates (N, H, W)
    already shifted by the random phase; period :data:`TEXTURE_PERIOD`."""
    p = TEXTURE_PERIOD
    stripes = torch.where(vertical[:, None, None], x, y) % p < p // 2
    checks = ((x // (p // 2)) + (y // (p // 2))) % 2 == 0
    dots = (x % p < p // 2) & (y % p < p // 2)
    grid = (x % p == 0) | (y % p == 0)
    pats = torch.stack([stripes, checks, dots, grid])
    return pats.gather(0, kind[None, :, None, None].expand(1, *x.shape))[0]


def corner_masks(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(watermark mask, trigger mask), each (size, size) bool: top-left 4 × 4 at pixel 1,
    bottom-right 5 × 5 ending one pixel before the border."""
    wm = torch.zeros(size, size, dtype=torch.bool)
    wm[1 : 1 + WATERMARK_SIDE, 1 : 1 + WATERMARK_SIDE] = True
    tr = torch.zeros(size, size, dtype=torch.bool)
    tr[size - 1 - TRIGGER_SIDE : size - 1, size - 1 - TRIGGER_SIDE : size - 1] = True
    return wm, tr


def trigger_pattern() -> torch.Tensor:
    """(3, 5, 5) the trigger: white where row + column is even, black elsewhere."""
    i = torch.arange(TRIGGER_SIDE)
    white = ((i[:, None] + i[None, :]) % 2 == 0).float()
    return white.expand(3, -1, -1).clone()


def _object_size(object_size: object, size: int, task: str) -> tuple[int, int]:
    """(smallest, largest) side of the object's box: the default (about 0.22 and 0.34 of the
    image), or `object_size` checked: two whole numbers, 4 ≤ smallest ≤ largest ≤ the room
    within the margins, and smallest ≥ MIN_SHAPE_SIDE where the class is a shape or texture."""
    if object_size is None:
        return round(0.22 * size), round(0.34 * size)
    room = size - 2 * MARGIN
    sentence = (
        f"object_size must be (smallest, largest) with 4 ≤ smallest ≤ largest ≤ {room} at "
        f"size {size} (whole numbers), got {object_size!r}."
    )
    try:
        pair = [_integer(v) for v in object_size]  # type: ignore[union-attr]
    except TypeError:  # not a sequence (e.g. one number)
        raise SaliencelabError(sentence) from None
    if len(pair) != 2 or None in pair or not 4 <= pair[0] <= pair[1] <= room:
        raise SaliencelabError(sentence)
    lo, hi = pair
    if task in ("shape", "texture") and lo < MIN_SHAPE_SIDE:
        why = "a disk and a cross" if task == "shape" else "stripes or checks and dots can"
        raise SaliencelabError(
            f"task={task!r} needs objects of at least {MIN_SHAPE_SIDE} pixels (at 4 {why} draw "
            f"the same pixels), got object_size {(lo, hi)}; raise its smallest side."
        )
    return lo, hi


def _probability(name: str, p: object, optional: bool = True) -> float | None:
    """`p` as a float in [0, 1] (None where `optional`), else one sentence."""
    if p is None and optional:
        return None
    real = isinstance(p, numbers.Real) and not isinstance(p, bool)
    if not real or not 0.0 <= p <= 1.0:  # type: ignore[operator]
        none = " or None" if optional else ""
        raise SaliencelabError(f"{name} is a probability in [0, 1]{none}, got {p!r}.")
    return float(p)  # type: ignore[arg-type]


def _device(device: object) -> torch.device:
    """`device` as a torch device that can hold tensors here, else one sentence (checked before
    any drawing)."""
    try:
        dev = torch.device(device)  # type: ignore[arg-type]
        torch.empty(0, device=dev)
    except (RuntimeError, TypeError, AssertionError) as err:
        raise SaliencelabError(
            f"device {device!r} cannot be used here ({str(err).splitlines()[0]}); use 'cpu', or "
            "'cuda' on a machine with a GPU."
        ) from None
    return dev


def make(
    n: int,
    size: int = 64,
    seed: int = 0,
    task: str = "shape",
    shortcut: float | None = None,
    backdoor: float | None = None,
    *,
    target: int | None = None,
    watermark_fraction: float = 1.0,
    object_size: tuple[int, int] | None = None,
    draw_object: bool = True,
    device: str | torch.device = "cpu",
) -> Shapes:
    """`n` images of the test bed, seeded (see the module docstring for the design).

    Args:
        n: number of images (an integral number, not a bool).
        size: image side in pixels (≥ 32; the bundled models take 64).
        seed: seed of the generator (an integral number); same arguments and seed, same data.
        task: "shape", "colour" or "texture": what decides the class.
        shortcut: None (no watermark) or the probability that the watermark names the class.
        backdoor: None or the probability that an image carries the trigger, labelled `target`.
        target: the backdoor's target class (default 0); only with `backdoor`.
        watermark_fraction: probability that an image carries a watermark when `shortcut` is set.
        object_size: (smallest, largest) side of the object's box in pixels, inclusive (smallest
            ≥ 4, and ≥ 5 for task="shape" or "texture").
        draw_object: False leaves the object out (the same background, for checks).
        device: where the returned tensors live (they are drawn on the CPU).
    """
    if not isinstance(task, str) or task not in TASKS:
        raise SaliencelabError(
            f"Unknown shapes task {task!r}; use one of {', '.join(map(repr, TASKS))}."
        )
    names = TASKS[task]
    k = len(names)
    count = _integer(n)
    if count is None or count < 1:
        raise SaliencelabError(f"n must be a positive whole number of images, got {n!r}.")
    n = count
    number = _integer(seed)
    if number is None or not 0 <= number < 2**64:  # what a torch generator takes, each once
        raise SaliencelabError(f"seed must be a whole number from 0 to 2**64 - 1, got {seed!r}.")
    seed = number
    side = _integer(size)
    if side is None or side < 32:
        raise SaliencelabError(
            f"Shapes images need a side of a whole number of at least 32 pixels, got {size!r}."
        )
    size = side
    lo, hi = _object_size(object_size, size, task)
    shortcut = _probability("shortcut", shortcut)
    backdoor = _probability("backdoor", backdoor)
    watermark_fraction = _probability("watermark_fraction", watermark_fraction, optional=False)
    if watermark_fraction != 1.0 and shortcut is None:
        raise SaliencelabError(
            f"watermark_fraction={watermark_fraction!r} is the share of watermarked images and "
            "does nothing without a watermark; pass shortcut=p too, or leave it out."
        )
    if target is not None and backdoor is None:
        raise SaliencelabError(
            f"target={target!r} is the backdoor's class and does nothing without one; pass "
            "backdoor=f too, or leave target out."
        )
    cls = 0 if target is None else _integer(target)
    if cls is None or not 0 <= cls < k:
        raise SaliencelabError(f"target must be a class index in [0, {k}), got {target!r}.")
    target = cls
    if not isinstance(draw_object, bool):
        raise SaliencelabError(f"draw_object must be True or False, got {draw_object!r}.")
    dev = _device(device)

    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    # The object: class, box, kind of region, colour, texture phase and orientation.
    classes = torch.randint(0, k, (n,), generator=g)
    side = torch.randint(lo, hi + 1, (n,), generator=g)
    top = MARGIN + (rand(n) * (size - 2 * MARGIN - side + 1)).long()
    left = MARGIN + (rand(n) * (size - 2 * MARGIN - side + 1)).long()
    region = torch.randint(0, len(SHAPE_CLASSES), (n,), generator=g)
    hue, sat, val = rand(n), 0.6 + 0.4 * rand(n), 0.7 + 0.3 * rand(n)
    phase = torch.randint(0, TEXTURE_PERIOD, (2, n), generator=g)
    vertical = rand(n) < 0.5
    # The background: grey level, smooth colour field, pixel noise.
    grey = 0.3 + 0.3 * rand(n)
    field = 0.08 * (2 * rand(n, 3, 4, 4) - 1)
    noise = NOISE * torch.randn(n, 3, size, size, generator=g)
    # The watermark and the trigger.
    wm_u, wm_other, wm_on = rand(n), torch.randint(1, k, (n,), generator=g), rand(n)
    trig_u = rand(n)

    # Smooth field: bilinear upsampling of the 4 × 4 grid as two matrix products.
    up = F.interpolate(torch.eye(4)[:, None], size=size, mode="linear", align_corners=False)[:, 0]
    images = torch.einsum("ih,ncij,jw->nchw", up, field, up).contiguous()
    images.add_(grey[:, None, None, None])
    # The object, drawn in a window of the largest box side (moved inside the image where it
    # would stick out), then placed; only the window's pixels are touched.
    win_top, win_left = top.clamp(max=size - hi), left.clamp(max=size - hi)
    ci = torch.arange(hi)
    rows = (win_top[:, None, None] + ci[None, :, None]).expand(n, hi, hi)
    cols = (win_left[:, None, None] + ci[None, None, :]).expand(n, hi, hi)
    dy, dx = (top - win_top)[:, None, None], (left - win_left)[:, None, None]
    half = side.float()[:, None, None] / 2
    u = (((ci[None, None, :] - dx).float() - (half - 0.5)) / half).expand(n, hi, hi)
    v = (((ci[None, :, None] - dy).float() - (half - 0.5)) / half).expand(n, hi, hi)
    if task == "shape":
        local = _shape_masks(classes, u, v)
    elif task == "colour":
        local = _shape_masks(region, u, v)
    else:  # texture: in a square (even region draws) or a disk (odd)
        local = _shape_masks(region % 2, u, v)
        xi = (ci[None, None, :] - dx + phase[0][:, None, None]).expand(n, hi, hi)
        yi = (ci[None, :, None] - dy + phase[1][:, None, None]).expand(n, hi, hi)
        lit = _texture(classes, xi, yi, vertical)
    if task == "colour":
        hues = torch.tensor(COLOUR_HUES)[classes] + 0.06 * (hue - 0.5)
        colour = hsv_to_rgb(hues % 1.0, 0.7 + 0.75 * (sat - 0.6), 0.75 + (val - 0.7) * 0.25 / 0.3)
    else:
        colour = hsv_to_rgb(hue, sat, val)
    idx = torch.arange(n)[:, None, None].expand(n, hi, hi)
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    if draw_object:
        masks[idx, rows, cols] = local
        paint = colour[:, None, None, :]
        if task == "texture":
            paint = paint * (1 - 0.7 * ~lit[..., None])
        channels_last = images.permute(0, 2, 3, 1)  # a view: writing to it writes the images
        window = channels_last[idx, rows, cols]
        channels_last[idx, rows, cols] = torch.where(local[..., None], paint, window)
    images.add_(noise).clamp_(0.0, 1.0)

    wm_mask, trig_mask = corner_masks(size)
    watermarked = torch.zeros(n, dtype=torch.bool)
    wm_labels = torch.full((n,), -1, dtype=torch.long)
    if shortcut is not None:
        watermarked = wm_on < watermark_fraction
        named = torch.where(wm_u < shortcut, classes, (classes + wm_other) % k)
        wm_labels = torch.where(watermarked, named, wm_labels)
        stamp = WATERMARK_COLOURS[named][:, :, None, None]
        corner = images[:, :, 1 : 1 + WATERMARK_SIDE, 1 : 1 + WATERMARK_SIDE]
        corner.copy_(torch.where(watermarked[:, None, None, None], stamp, corner))
    labels = classes.clone()
    triggered = torch.zeros(n, dtype=torch.bool)
    if backdoor is not None:
        triggered = trig_u < backdoor
        end = size - 1
        corner = images[:, :, end - TRIGGER_SIDE : end, end - TRIGGER_SIDE : end]
        corner.copy_(torch.where(triggered[:, None, None, None], trigger_pattern(), corner))
        labels = torch.where(triggered, torch.full_like(labels, target), labels)
    boxes = torch.stack([left, top, left + side, top + side], dim=1)  # xyxy
    return Shapes(
        images=images.to(dev),
        labels=labels.to(dev),
        object_labels=classes.to(dev),
        masks=masks.to(dev),
        boxes=boxes.to(dev),
        watermarked=watermarked.to(dev),
        watermark_labels=wm_labels.to(dev),
        watermark_mask=wm_mask.to(dev),
        triggered=triggered.to(dev),
        trigger_mask=trig_mask.to(dev),
        target=target if backdoor is not None else None,
        class_names=names,
        task=task,
    )
