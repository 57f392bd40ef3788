"""Baselines (reference inputs x') for path methods, and the option checks they share.

Integrated gradients takes one baseline per sample (`input_baselines`): "zero", a constant, "blur"
(a Gaussian blur of the input, Sturmfels et al. 2020), "uniform" (uniform noise in each sample's
value range, seeded) or a tensor broadcastable to the inputs. Expected gradients takes a
distribution of baselines (`baseline_distribution`): a tensor (N, *sample) shared by all samples,
or "uniform": noise images drawn per sample in its own value range (`UniformReferences`).

Random baselines are a function of the sample, not of its row: each sample's draws come from CPU
generators seeded by `seed` and the sample's values (`core/seeds.py`), over its own value range,
so an input gets the same baselines, and the same map, alone or at any position of any batch
and on every device. The draws are made in float32 and cast to the inputs' dtype, so a float64
copy of a model gets the float32 model's baselines (a half-precision copy rounds the inputs, and
so seeds them differently).

`baselines=None` is each method's default, as Captum's: "zero" for per-sample baselines,
"uniform" for a distribution.
"""

from __future__ import annotations

import math
import numbers
import operator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...core.errors import SaliencelabError, closest
from ...core.registry import quoted
from ...core.seeds import sample_generators, sample_seeds
from ..options import check_blur_sigma

INPUT_BASELINES = ("zero", "blur", "uniform")
DISTRIBUTIONS = ("uniform", "zero", "batch")
# What `baselines` accepts, in words (`register(choices=...)`): per-sample baselines ...
INPUT_BASELINE_CHOICES = (
    *quoted(INPUT_BASELINES),
    "a number",
    "a tensor broadcastable to the inputs",
)
# ... and a distribution of references.
DISTRIBUTION_CHOICES = (*quoted(DISTRIBUTIONS), "a number", "a tensor (N, C, H, W) of references")


def positive_int(value: Any, name: str, method: str, minimum: int = 1) -> int:
    """`value` as an int >= `minimum`, else one clear sentence."""
    try:
        if isinstance(value, bool):
            raise TypeError
        n = operator.index(value)
    except TypeError:
        n = None
    if n is None or n < minimum:
        raise SaliencelabError(
            f"{method}: {name} must be an integer of at least {minimum}, got {value!r}."
        )
    return n


def float_dtype(x: torch.Tensor) -> torch.dtype:
    return x.dtype if x.is_floating_point() else torch.get_default_dtype()


def generator(device: torch.device, seed: int) -> torch.Generator:
    """A torch.Generator on `device`, seeded."""
    return torch.Generator(device=device).manual_seed(int(seed))


def cpu_generator(seed: int) -> torch.Generator:
    """A seeded CPU generator, for draws that must not depend on the device: tensors drawn
    from it and then moved give the same explanation on the CPU and on any GPU."""
    return generator(torch.device("cpu"), seed)


def _as_tensor(value: Any) -> Any:
    return torch.from_numpy(value) if isinstance(value, np.ndarray) else value


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


_EXACT_TAIL = 1 << 22  # kernel radii summed term by term; beyond, the tails by erf


def _blur_kernel(sigma: float, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The normalised Gaussian kernel over ±3σ for an axis of `n` pixels, cut at ±(n - 1) with
    the cut tails' weights added to its two ends: past n - 1 pixels every replicate-padded
    value is the edge pixel, so the blur is the same as with the whole kernel, while a σ far
    larger than the image costs an image-sized kernel, not a 3σ one."""
    radius = max(1, math.ceil(3 * sigma))
    kept = min(radius, max(n - 1, 1))
    t = torch.arange(0, kept + 1, dtype=torch.float64)
    half = torch.exp(-0.5 * (t / sigma) ** 2)  # offsets 0..kept
    if radius > kept:  # Σ over offsets kept+1..radius
        if radius <= _EXACT_TAIL:
            rest = torch.arange(kept + 1, radius + 1, dtype=torch.float64)
            tail = float(torch.exp(-0.5 * (rest / sigma) ** 2).sum())
        else:  # the sum as an integral (offsets far below σ: the relative error is ~1/radius)
            s = sigma * math.sqrt(2.0)
            tail = (
                sigma
                * math.sqrt(math.pi / 2)
                * (math.erf((radius + 0.5) / s) - math.erf((kept + 0.5) / s))
            )
        half[-1] += tail
    kernel = torch.cat([half.flip(0), half[1:]])
    return (kernel / kernel.sum()).to(device=device, dtype=dtype)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of an image batch (B, C, H, W); `sigma` in pixels.

    The kernel spans ±3σ; borders are extended by replicating the edge pixels. (For a σ beyond
    the image, the kernel is folded to the image's size with the same result: `_blur_kernel`.)
    """
    if sigma <= 0:
        return x.clone()
    dtype = float_dtype(x)
    c, height, width = x.shape[1], x.shape[-2], x.shape[-1]
    kh = _blur_kernel(sigma, height, dtype, x.device)
    kw = _blur_kernel(sigma, width, dtype, x.device)
    rh, rw = len(kh) // 2, len(kw) // 2
    y = F.pad(x.to(dtype), (rw, rw, rh, rh), mode="replicate")
    y = F.conv2d(y, kw.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(y, kh.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _sample_range(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (min, max), shaped to broadcast against `x`."""
    shape = (-1,) + (1,) * (x.dim() - 1)
    flat = x.flatten(1)
    return flat.amin(1).view(shape), flat.amax(1).view(shape)


def draw_seeds(gens: list[torch.Generator], n: int) -> torch.Tensor:
    """(B, n) int64 on the CPU: row b holds `n` seeds drawn from `gens[b]` (sample b's generator),
    one per draw, so that draw k of sample b can be made on its own (in whichever chunk its row
    falls, again after a retry) by `seeded_draws`."""
    if not gens:
        return torch.empty((0, n), dtype=torch.long)
    return torch.stack([torch.randint(0, 1 << 62, (n,), generator=g) for g in gens])


# Devices whose copies of host tensors go through pinned memory, queued (`queued_copy`).
PINNED_COPY_DEVICES = ("cuda",)


def queued_copy(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`t` on `device`, without waiting for the device when `t` is in host memory.

    A copy from pageable host memory to a GPU waits for all the work queued on the device
    before it; from pinned memory with `non_blocking=True` it is queued behind that work, and
    the host goes on (PyTorch's caching host allocator keeps the pinned block until the copy
    has run). For values drawn on the host per chunk of a pass (`seeded_draws`)."""
    if t.device.type != "cpu" or device.type not in PINNED_COPY_DEVICES:
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def seeded_draws(
    seeds: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype, *, uniform: bool, normal: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """For each of `seeds` (one per row): U(0, 1) then N(0, 1) values of `shape` (each only if
    asked), from a CPU generator seeded with it: (len(seeds), *shape) tensors on the CPU, drawn
    in float32 and cast to `dtype` (the same values for every model dtype)."""
    n = len(seeds)
    u = torch.empty((n, *shape), dtype=torch.float32) if uniform else None
    e = torch.empty((n, *shape), dtype=torch.float32) if normal else None
    gen = torch.Generator()
    for j, s in enumerate(seeds.tolist()):
        gen.manual_seed(s)
        if u is not None:
            u[j].uniform_(generator=gen)
        if e is not None:
            e[j].normal_(generator=gen)
    return (None if u is None else u.to(dtype)), (None if e is None else e.to(dtype))


@dataclass(frozen=True)
class UniformReferences:
    """The "uniform" distribution of references, drawn per sample: reference k of sample b is
    lo_b + (hi_b - lo_b) · u_bk, u_bk ~ U(0, 1)^d, with [lo_b, hi_b] sample b's own value range and
    u_bk drawn from a CPU generator seeded by draw k's seed from sample b's generator (`seed` and
    the sample's values: `draw_seeds`, `seeded_draws`). A reference depends on its sample and k
    only, not on the batch, the row or the device; references are drawn per chunk of rows, never
    all B · n at once."""

    lo: torch.Tensor  # (B, 1, ..., 1), the inputs' device and float dtype
    span: torch.Tensor  # hi - lo, same shape
    n: int  # references per sample

    def take(self, samples: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The references of `samples` (on the inputs' device) from their U(0, 1) draws `u`."""
        return torch.addcmul(self.lo[samples], self.span[samples], queued_copy(u, self.lo.device))


def input_baselines(
    x: torch.Tensor, baselines: Any, *, method: str, blur_sigma: float = 10.0, seed: int = 0
) -> torch.Tensor:
    """One baseline per sample, same shape, dtype and device as `x`; None is "zero" (the
    default). `blur_sigma` is checked whatever the baselines (`check_blur_sigma`)."""
    blur_sigma = check_blur_sigma(blur_sigma, method)
    dtype = float_dtype(x)
    baselines = _as_tensor(baselines)
    if isinstance(baselines, torch.Tensor):
        b = baselines.to(device=x.device, dtype=dtype)
        try:
            shape = torch.broadcast_shapes(b.shape, x.shape)
        except RuntimeError:
            shape = None
        if shape != x.shape:
            raise SaliencelabError(
                f"{method}: the baselines tensor has shape {tuple(b.shape)}, which does not "
                f"broadcast to the inputs' shape {tuple(x.shape)}; give one baseline per input or "
                "one for all (e.g. shape (C, 1, 1) or (1, C, H, W))."
            )
        return b.expand(x.shape).clone()
    if _is_number(baselines):
        _check_finite(baselines, method)
        return torch.full_like(x, float(baselines), dtype=dtype)
    if baselines is None or baselines == "zero":
        return torch.zeros_like(x, dtype=dtype)
    if baselines == "blur":
        if x.dim() != 4:
            raise SaliencelabError(
                f"{method}: the 'blur' baseline needs image batches (B, C, H, W), but got inputs "
                f"of shape {tuple(x.shape)}; use baselines='zero' or a tensor."
            )
        return gaussian_blur(x, blur_sigma)
    if baselines == "uniform":  # per sample: its own range, a generator seeded by its values
        lo, hi = _sample_range(x.to(dtype))
        sample = tuple(x.shape[1:])
        gens = sample_generators(x, seed)  # drawn in float32 whatever the model's dtype
        rows = [torch.rand(sample, generator=g, dtype=torch.float32) for g in gens]
        u = torch.stack(rows) if rows else torch.empty((0, *sample), dtype=torch.float32)
        return lo + (hi - lo) * u.to(x.device, dtype)
    raise _unknown(baselines, INPUT_BASELINES, method, "a tensor broadcastable to the inputs")


def baseline_distribution(
    x: torch.Tensor, baselines: Any, *, method: str, n_samples: int
) -> torch.Tensor | UniformReferences:
    """A distribution of baselines: a tensor (N, *sample shape or broadcastable) shared by all
    samples, or for "uniform" (the default) `n_samples` noise references per sample in its own
    value range (`UniformReferences`: the caller draws them per row with the samples' seeds);
    None is "uniform"."""
    dtype = float_dtype(x)
    sample = tuple(x.shape[1:])
    ones = (1,) + (1,) * len(sample)
    baselines = _as_tensor(baselines)
    if isinstance(baselines, torch.Tensor):
        d = baselines.to(device=x.device, dtype=dtype)
        if d.dim() == x.dim() - 1:
            d = d[None]
        try:
            ok = d.dim() == x.dim() and torch.broadcast_shapes(d.shape[1:], sample) == sample
        except RuntimeError:
            ok = False
        if not ok or d.shape[0] < 1:
            raise SaliencelabError(
                f"{method}: the baselines tensor has shape {tuple(baselines.shape)}, but a "
                f"distribution of baselines must have shape (N, {', '.join(map(str, sample))}) "
                "(N reference inputs shaped like one input)."
            )
        return d
    if _is_number(baselines):
        _check_finite(baselines, method)
        return torch.full(ones, float(baselines), device=x.device, dtype=dtype)
    if baselines == "zero":
        return torch.zeros(ones, device=x.device, dtype=dtype)
    if baselines == "batch":
        if x.shape[0] < 2:
            raise SaliencelabError(
                f"{method}: baselines='batch' uses the inputs of the batch as references, "
                "but the batch has one input; pass a baselines tensor (N, ...) or 'uniform'."
            )
        # In an order of the rows' contents, not their positions: a sample's draws (row
        # indices) pick the same references however the batch is ordered.
        keys = sample_seeds(x, 0)
        order = sorted(range(x.shape[0]), key=keys.__getitem__)
        return x[torch.tensor(order, device=x.device)].to(dtype)
    if baselines is None or baselines == "uniform":
        lo, hi = _sample_range(x.to(dtype))
        return UniformReferences(lo, hi - lo, n_samples)
    raise _unknown(baselines, DISTRIBUTIONS, method, "a tensor (N, C, H, W) of reference inputs")


def _check_finite(value: float, method: str) -> None:
    if not math.isfinite(value):
        raise SaliencelabError(
            f"{method}: the baselines must be a finite number, got {value!r}; use e.g. "
            "baselines=0.0 or 'zero'."
        )


def _unknown(value: Any, names: tuple[str, ...], method: str, tensor: str) -> SaliencelabError:
    hint = closest(value, names) if isinstance(value, str) else ""
    return SaliencelabError(
        f"{method}: unknown baselines {value!r}.{hint} Use one of "
        f"{', '.join(repr(n) for n in names)}, a number, or {tensor}."
    )
