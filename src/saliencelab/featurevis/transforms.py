"""Transformation robustness: random, differentiable image transforms applied at every step.

An image that excites a unit only at one exact pixel alignment is mostly adversarial noise;
asking it to work under small random shifts, scalings and rotations gives pictures with
recognisable structure (Mordvintsev et al., "Inceptionism", 2015; Olah et al., "Feature
Visualization", Distill 2017, "Transformation robustness"). MACO (Fel et al. 2023) uses random
crops and noise.

Every transform is a callable `t(x, rng) -> x` on a batch (N, C, H, W), written in torch and
differentiable in x. Random parameters come from `rng` (:class:`Rng`: one seeded CPU generator for
the parameters, drawn once per call and shared by the batch; one generator per image on the
images' device for noise), so a run with a seed is repeatable and image i's draws do not depend
on the batch size. :func:`compose` chains transforms; :func:`standard` is the default chain,
ending at a fixed output size so the model always sees the same input shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ..core.errors import SaliencelabError
from .param import Size, image_size


class Rng:
    """Seeded random sources for transforms: `.cpu` for the parameters (shared by the batch) and,
    for noise (:meth:`normal`), image i's own generator on `.device`, seeded with seed + 1 + i.

    The noise has its own generators, so the parameters drawn after it (and image i's noise) are
    the same whatever the batch size.
    """

    def __init__(self, seed: int = 0, device: torch.device | str = "cpu") -> None:
        self.seed = int(seed)
        self.device = torch.device(device)
        self.cpu = torch.Generator()
        self.cpu.manual_seed(self.seed)
        self._noise: list[torch.Generator] = []  # one per image, made when first needed

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """ε ~ N(0, 1) shaped like the batch `x` (N, ...), image i's from its own generator;
        drawn in float32 whatever x's dtype, so a float64 run sees the float32 run's noise."""
        while len(self._noise) < x.shape[0]:
            g = torch.Generator(device=self.device)
            g.manual_seed(self.seed + 1 + len(self._noise))
            self._noise.append(g)
        eps = [
            torch.randn(x.shape[1:], generator=g, device=self.device, dtype=torch.float32)
            for g in self._noise[: x.shape[0]]
        ]
        return torch.stack(eps).to(x.device, x.dtype)

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=self.cpu))

    def integer(self, low: int, high: int) -> int:
        """A uniform integer in [low, high] (both included)."""
        return int(torch.randint(low, high + 1, (), generator=self.cpu))

    def choice(self, values: Sequence[float]) -> float:
        return values[int(torch.randint(len(values), (), generator=self.cpu))]


Transform = Callable[[torch.Tensor, Rng], torch.Tensor]


class Pad:
    """Pad `width` pixels on every side; `mode` "constant" (with `value`), "reflect", "replicate".

    With constant 0.5 (mid-gray) the image's borders get no gradient-free advantage: a unit sees
    the image's edge against gray, as a jittered crop would.
    """

    def __init__(self, width: int, mode: str = "constant", value: float = 0.5) -> None:
        if mode not in ("constant", "reflect", "replicate"):
            raise SaliencelabError(
                f"Pad mode must be constant, reflect or replicate, not {mode!r}."
            )
        self.width, self.mode, self.value = int(width), mode, float(value)

    def __call__(self, x: torch.Tensor, rng: Rng) -> torch.Tensor:
        p = [self.width] * 4
        if self.mode == "constant":
            return F.pad(x, p, mode="constant", value=self.value)
        return F.pad(x, p, mode=self.mode)

    def __repr__(self) -> str:
        return f"Pad({self.width}, {self.mode!r})"


class Jitter:
    """Crop (H-d, W-d) at a random offset (dy, dx) ∈ [0, d]²: a random shift of up to d pixels."""

    def __init__(self, d: int) -> None:
        if int(d) < 0:
            raise SaliencelabError(f"Jitter must be 0 pixels or more, not {d}.")
        self.d = int(d)

    def __call__(self, x: torch.Tensor, rng: Rng) -> torch.Tensor:
        if self.d == 0:
            return x
        h, w = x.shape[-2:]
        if self.d >= min(h, w):
            raise SaliencelabError(
                f"Jitter({self.d}) would crop the whole {h}×{w} image away; jitter by fewer "
                f"pixels than its side ({min(h, w) - 1} at most), or make the image larger."
            )
        dy, dx = rng.integer(0, self.d), rng.integer(0, self.d)
        return x[..., dy : dy + h - self.d, dx : dx + w - self.d]

    def __repr__(self) -> str:
        return f"Jitter({self.d})"


class RandomScale:
    """Resize by a factor s drawn from `scales` (bilinear): (H, W) -> (round(sH), round(sW)).

    The size changes, so a later resize to a fixed size (the one `visualize` appends to a list of
    transforms) undoes the magnification; :class:`RandomAffine` scales into a fixed size.
    """

    def __init__(self, scales: Sequence[float]) -> None:
        self.scales = [float(s) for s in scales]
        if not self.scales or min(self.scales) <= 0:
            raise SaliencelabError("RandomScale needs a list of positive factors, e.g. [0.9, 1.1].")

    def __call__(self, x: torch.Tensor, rng: Rng) -> torch.Tensor:
        s = rng.choice(self.scales)
        h, w = x.shape[-2:]
        size = (max(1, round(s * h)), max(1, round(s * w)))
        if size == (h, w):
            return x
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def __repr__(self) -> str:
        return f"RandomScale({min(self.scales):g}..{max(self.scales):g})"


def affine(
    x: torch.Tensor,
    scale: float = 1.0,
    degrees: float = 0.0,
    shift: tuple[float, float] = (0.0, 0.0),
    size: Size | None = None,
    fill: float | None = 0.5,
) -> torch.Tensor:
    """Scale, rotate and shift the batch in one bilinear resampling, into an output of `size`.

    In pixels about each image's centre (x right, y down), output pixel P shows the input at
    R(θ)·(P + shift) / scale, with R(θ) = [[cos θ, -sin θ], [sin θ, cos θ]]: the image is
    magnified by `scale`, turned by θ = `degrees` (counter-clockwise as displayed), and the view
    moved by `shift` = (dx, dy) pixels. What comes from outside the input is `fill` (or the
    nearest border value with `fill=None`). `size` defaults to the input's size.
    """
    n, c, hi, wi = x.shape
    ho, wo = (hi, wi) if size is None else image_size(size, minimum=1)
    t = math.radians(degrees)
    cos, sin = math.cos(t), math.sin(t)
    dx, dy = float(shift[0]), float(shift[1])
    # affine_grid maps normalised output coordinates (u, v) ∈ [-1, 1]² (P = (u·wo/2, v·ho/2))
    # to normalised input coordinates (P_in.x / (wi/2), P_in.y / (hi/2)).
    theta = torch.tensor(
        [
            [
                cos * wo / (scale * wi),
                -sin * ho / (scale * wi),
                2 * (cos * dx - sin * dy) / (scale * wi),
            ],
            [
                sin * wo / (scale * hi),
                cos * ho / (scale * hi),
                2 * (sin * dx + cos * dy) / (scale * hi),
            ],
        ],
        dtype=x.dtype,
        device=x.device,
    )
    grid = F.affine_grid(theta.expand(n, 2, 3), [n, c, ho, wo], align_corners=False)
    if fill is None:
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out + fill


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate the batch by `degrees` counter-clockwise (as displayed) about the image centre.

    Bilinear; what comes from outside the image takes the nearest border value.
    """
    return affine(x, degrees=degrees, fill=None)


class RandomRotate:
    """Rotate by an angle drawn uniformly from [-`degrees`, `degrees`] (or from a list)."""

    def __init__(self, degrees: float | Sequence[float]) -> None:
        self.degrees = degrees

    def __call__(self, x: torch.Tensor, rng: Rng) -> torch.Tensor:
        if isinstance(self.degrees, (int, float)):
            angle = rng.uniform(-float(self.degrees), float(self.degrees))
        else:
            angle = float(rng.choice(list(self.degrees)))
        return x if angle == 0 else rotate(x, angle)

    def __repr__(self) -> str:
        return f"RandomRotate({self.degrees})"


class RandomAffine:
    """Random scale s ∈ `scales`, angle θ ∈ [-`degrees`, `degrees`] and shift (dx, dy) ∈
    [-`shift`, `shift`]² pixels, in one resampling into an output of `size` (:func:`affine`).

    Unlike :class:`RandomScale` followed by a resize, the output has a fixed size *and* the
    content's magnification really varies.
    """

    def __init__(
        self,
        scales: Sequence[float],
        degrees: float = 0.0,
        shift: float = 0.0,
        size: Size | None = None,
        fill: float | None = 0.5,
    ) -> None:
        self.scales = [float(s) for s in scales]
        if not self.scales or min(self.scales) <= 0:
            raise SaliencelabError("RandomAffine needs positive scale factors, e.g. [0.9, 1.1].")
        self.degrees, self.shift = float(degrees), float(shift)
        self.size = None if size is None else image_size(size, minimum=1)
        self.fill = fill

    def __call__(self, x: torch.Tensor, rng: Rng) -> torch.Tensor:
        s = rng.choice(self.scales)
        angle = rng.uniform(-self.degrees, self.degrees)
        dx, dy = rng.uniform(-self.shift, self.shift), rng.uniform(-self.shift, self.shift)
        return affine(x, s, angle, (dx, dy), self.size, self.fill)

    def __repr__(self) -> str:
        return (
            f"RandomAffine(scale {min(self.scales):g}..{max(self.scales):g}, "
            f"±{self.degrees:g}°, ±{self.shift:g} px)"
        )


class Noise:
    """Add Gaussian noise: x + σ·ε, ε ~ N(0, 1) per pixel."""

    def __init__(self, std: float) -> None:
        self.std = float(std)

    def __call__(self, x: torch.Tensor, rng: Rng) -> torch.Tensor:
        if self.std == 0:
            return x
        return x + self.std * rng.normal(x)

    def __repr__(self) -> str:
        return f"Noise({self.std:g})"


class RandomCrop:
    """A random square-ish box covering a fraction a ∈ `area` of the image, resized to `size`.

    Side lengths are √a·H and √a·W, the box lies at a uniform random place inside the image, and
    it is resized bilinearly to `size` (default: the input's size).
    """

    def __init__(self, area: tuple[float, float] = (0.5, 1.0), size: Size | None = None) -> None:
        lo, hi = float(area[0]), float(area[1])
        if not 0 < lo <= hi <= 1:
            raise SaliencelabError(
                f"RandomCrop area must satisfy 0 < low <= high <= 1, not {area}."
            )
        self.area = (lo, hi)
        self.size = None if size is None else image_size(size, minimum=1)

    def __call__(self, x: torch.Tensor, rng: Rng) -> torch.Tensor:
        h, w = x.shape[-2:]
        a = rng.uniform(*self.area)
        ch, cw = max(1, round(math.sqrt(a) * h)), max(1, round(math.sqrt(a) * w))
        top, left = rng.integer(0, h - ch), rng.integer(0, w - cw)
        crop = x[..., top : top + ch, left : left + cw]
        size = self.size or (h, w)
        if tuple(crop.shape[-2:]) == size:
            return crop
        return F.interpolate(crop, size=size, mode="bilinear", align_corners=False)

    def __repr__(self) -> str:
        return f"RandomCrop({self.area[0]:g}..{self.area[1]:g})"


class Resize:
    """Resize to a fixed `size` (bilinear, antialiased when shrinking); no-op if already there."""

    def __init__(self, size: Size) -> None:
        self.size = image_size(size, minimum=1)

    def __call__(self, x: torch.Tensor, rng: Rng) -> torch.Tensor:
        if tuple(x.shape[-2:]) == self.size:
            return x
        shrink = x.shape[-2] > self.size[0] or x.shape[-1] > self.size[1]
        return F.interpolate(
            x, size=self.size, mode="bilinear", align_corners=False, antialias=shrink
        )

    def __repr__(self) -> str:
        return f"Resize({self.size[0]}x{self.size[1]})"


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        for t in transforms:
            if not callable(t):
                raise SaliencelabError(
                    f"A transform must be a callable (x, rng) -> x, not {type(t).__name__}."
                )
        self.transforms = list(transforms)

    def __call__(self, x: torch.Tensor, rng: Rng) -> torch.Tensor:
        for t in self.transforms:
            x = t(x, rng)
        return x

    def __repr__(self) -> str:
        return "Compose([" + ", ".join(repr(t) for t in self.transforms) + "])"


def compose(*transforms: Transform) -> Compose:
    """`compose(Pad(8), Jitter(8))`: one transform applying each in turn."""
    return Compose(transforms)


def pad(width: int, mode: str = "constant", value: float = 0.5) -> Pad:
    return Pad(width, mode, value)


def jitter(d: int) -> Jitter:
    return Jitter(d)


def random_scale(scales: Sequence[float]) -> RandomScale:
    return RandomScale(scales)


def random_rotate(degrees: float | Sequence[float]) -> RandomRotate:
    return RandomRotate(degrees)


def noise(std: float) -> Noise:
    return Noise(std)


def random_crop(area: tuple[float, float] = (0.5, 1.0), size: Size | None = None) -> RandomCrop:
    return RandomCrop(area, size)


def random_affine(
    scales: Sequence[float], degrees: float = 0.0, shift: float = 0.0, size: Size | None = None
) -> RandomAffine:
    return RandomAffine(scales, degrees, shift, size)


def standard(size: Size) -> Compose:
    """The default chain for an image of `size`, ending at exactly `size`.

    pad 12 (gray) → jitter 8 → scale ∈ {0.90, 0.92, …, 1.10}, rotate ±10° and shift ±4 pixels in
    one resampling into `size` (Olah et al. 2017's recipe, sized for 224-pixel images; scaled
    with the size).
    """
    h, w = image_size(size, minimum=1)
    k = min(h, w) / 224.0
    return compose(
        Pad(max(1, round(12 * k))),
        Jitter(max(1, round(8 * k))),
        RandomAffine([1 + (i - 5) / 50 for i in range(11)], 10.0, 4 * k, (h, w)),
    )


def maco(size: Size) -> Compose:
    """MACO's chain: a random crop of 25-100% of the image resized to `size`, plus noise 0.05.

    Simplified from Fel et al. 2023 (their Xplique `maco`): one crop per step, shared by the
    batch, at a uniform place, and noise N(0, 0.05²); they average the objective over 32 crops
    per step whose side shrinks linearly from 50 % to 5 % of the image (centres N(0.5, 0.15²)),
    with noise N(0, 0.08²) + U(-0.04, 0.04), on a 512 x 512 image.
    """
    return compose(RandomCrop((0.25, 1.0), size), Noise(0.05))


def none(size: Size) -> Compose:
    """No randomness, only a resize to `size` if needed."""
    return compose(Resize(size))
