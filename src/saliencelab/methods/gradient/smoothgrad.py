"""SmoothGrad, SmoothGrad² and VarGrad: a base method averaged over noisy copies of the input.

With A the base method (saliency by default) and x_k = x + ε_k, ε_k ~ N(0, σ²), k = 1..n:

- smoothgrad    (Smilkov et al. 2017, "SmoothGrad: removing noise by adding noise"):
  (1/n) Σ_k A(x_k)
- smoothgrad_sq (SG-SQ, Hooker et al. 2019, "A Benchmark for Interpretability Methods in Deep
  Neural Networks", §4.1): (1/n) Σ_k A(x_k)²
- vargrad       (Adebayo et al. 2018, "Local explanation methods for deep neural networks lack
  sensitivity to parameter values"): (1/n) Σ_k A(x_k)² - ((1/n) Σ_k A(x_k))² (population
  variance, as Captum's NoiseTunnel)

The default base, saliency, is |∂S/∂x| (as Captum's NoiseTunnel over Saliency): SmoothGrad
then averages |gradient| and VarGrad takes the variance of |gradient|. The papers average and
take the variance of the signed gradient (Smilkov et al. take the absolute value only to draw
the map): `base_options={"absolute": False}` gives that (a signed SmoothGrad map; VarGrad's
Var ∂S/∂x = E[g²] − (E g)², where the default gives E[g²] − (E|g|)²).

σ = noise_level × (max(x) - min(x)) of each sample, as in the paper, or `stdevs` (absolute).
Each sample's noise comes from its own CPU generator seeded by `seed` and the sample's values
(core/seeds.py), so a sample gets the same noise, and the same map, alone or at any position of
any batch, on any device, and whatever the model's dtype (drawn in float32 and cast: a float64
copy of a model gets the float32 model's noise). The draws form one tensor (n, B, ...) (k-major;
split into groups of draws only when it would exceed 2^26 values), and the base method runs once
on all noisy rows of a group (the engine chunks them).

A model may say where noise goes (`extra["noise_mask"](x)`, bool like x): a text model's real
tokens' embedding columns, not its padding nor its attention-flag columns. Each sample's σ,
seed and noise then come from those values alone, in order, so a text's map does not depend on
the padding its batch gives it.

With a half-precision model (float16, bfloat16), SmoothGrad² and VarGrad square and average in
float32 and return float32 attributions and maps: the squares of gradients of ~1e-5 lie below
float16's smallest number (6e-8) and would all be 0.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ...core.context import Context, MethodOutput, method_output
from ...core.errors import SaliencelabError, closest
from ...core.registry import get_method, register
from ...core.requests import check_options
from ...core.seeds import sample_generators
from ..reference import check_seed
from .baselines import float_dtype, positive_int

KINDS = ("smoothgrad", "smoothgrad_sq", "vargrad")
MAX_NOISY_VALUES = 1 << 26  # noisy input values materialised at once (256 MB in float32)


def standard_normal(
    shape: tuple[int, ...], gens: list[torch.Generator], like: torch.Tensor
) -> torch.Tensor:
    """N(0, 1) noise (g, B, ...) on `like`'s device and dtype, column b from `gens[b]` (one CPU
    generator per sample: its noise does not depend on the batch; a seam for tests), drawn in
    float32 and cast (the same noise for every model dtype). Each draw is its own `randn` call:
    torch's CPU normal sampler fills a tensor in blocks of 16, so one call of g draws gives
    other numbers than g calls of one whenever a sample's size is not a multiple of 16, and the
    group size g depends on the batch."""
    g, _, *sample = shape
    out = torch.empty((g, len(gens), *sample), dtype=torch.float32)
    for b, gen in enumerate(gens):
        for k in range(g):
            out[k, b] = torch.randn(sample, generator=gen, dtype=torch.float32)
    return out.to(like.device, like.dtype)


def masked_normal(
    g: int, where: torch.Tensor, gens: list[torch.Generator], like: torch.Tensor
) -> torch.Tensor:
    """N(0, 1) noise (g, B, ...) at `where` (B, ...) and 0 elsewhere: sample b's values, in
    order, drawn from `gens[b]` (their number is the sample's own, not the batch's) in float32
    and cast to `like`'s dtype."""
    out = torch.zeros((g, *like.shape), dtype=like.dtype, device=like.device)
    for b, gen in enumerate(gens):
        n = int(where[b].sum())  # one call per draw, as `standard_normal`
        draws = [torch.randn(n, generator=gen, dtype=torch.float32) for _ in range(g)]
        draws = torch.stack(draws).to(like.device, like.dtype)
        out[:, b].masked_scatter_(where[b].expand(g, *where.shape[1:]), draws)
    return out


HALF = (torch.float16, torch.bfloat16)


class _Running:
    """Running mean / mean of squares / variance over draws (Chan et al.'s pairwise update).

    Squares of half-precision values are taken in float32 (the result is then float32): the
    square of a float16 gradient of 1e-5 is 0 in float16."""

    def __init__(self, kind: str) -> None:
        self.kind, self.n = kind, 0
        self.value: torch.Tensor | None = None  # sum, sum of squares, or M2
        self.mean: torch.Tensor | None = None

    def add(self, a: torch.Tensor) -> None:  # a: (g, B, ...)
        g = a.shape[0]
        if self.kind != "smoothgrad" and a.dtype in HALF:
            a = a.float()
        if self.kind == "smoothgrad":
            part = a.sum(0)
        elif self.kind == "smoothgrad_sq":
            part = (a * a).sum(0)
        else:
            mean_b = a.mean(0)
            part = ((a - mean_b) ** 2).sum(0)
            if self.mean is not None:
                d = mean_b - self.mean
                part = part + d * d * (self.n * g / (self.n + g))
                mean_b = self.mean + d * (g / (self.n + g))
            self.mean = mean_b
        self.value = part if self.value is None else self.value + part
        self.n += g

    def result(self) -> torch.Tensor:
        return self.value / self.n


def _smooth(
    ctx: Context,
    kind: str,
    base: str,
    n_samples: int,
    noise_level: float,
    stdevs: float | None,
    seed: int,
    base_options: dict[str, Any] | None,
) -> MethodOutput:
    if not isinstance(base, str):
        raise SaliencelabError(
            f"{kind}: base must be a method's name, e.g. base='saliency', not "
            f"{type(base).__name__} {base!r}."
        )
    check_options(base_options, f"{kind}: base_options", "base_options={'n_steps': 16}")
    seed = check_seed(kind, seed)
    spec = get_method(base)
    if spec.name in KINDS:
        raise SaliencelabError(
            f"{kind}: the base method cannot itself be {spec.name}; use base='saliency' or "
            "another gradient method."
        )
    own = dict(base_options or {})
    for key in own:
        if key not in spec.options:
            raise SaliencelabError(
                f"{kind}: the base method {base} has no option {key!r}."
                f"{closest(key, spec.options)} Its options: {', '.join(spec.options) or 'none'}."
            )
    options = {**spec.options, **own}
    # one sample has no variance: VarGrad's map would be 0 everywhere
    n_samples = positive_int(n_samples, "n_samples", kind, minimum=2 if kind == "vargrad" else 1)

    x = ctx.x
    dtype, dev, batch = float_dtype(x), x.device, ctx.batch
    xf = x.to(dtype)
    if not _non_negative(noise_level):  # checked also when stdevs overrides it
        raise SaliencelabError(
            f"{kind}: noise_level must be a non-negative number (a fraction of each input's "
            f"value range, e.g. 0.15), got {noise_level!r}."
        )
    if stdevs is not None:
        if not _non_negative(stdevs):
            raise SaliencelabError(f"{kind}: stdevs must be a non-negative number, got {stdevs!r}.")
        sigma = torch.full((batch,), float(stdevs), device=dev, dtype=dtype)
    else:
        sigma = None  # from each sample's values, below

    hook = ctx.model.extra.get("noise_mask")  # e.g. text: real tokens' embedding columns
    where = None if hook is None else hook(x).to(dev)
    if where is None:
        flat = xf.flatten(1)
        gens = sample_generators(x, seed)  # per sample: the same noise in any batch
    else:  # each sample's own values, in order: the same whatever the padding
        flat_rows = [xf[i][where[i]] for i in range(batch)]
        gens = [sample_generators(r[None], seed)[0] for r in flat_rows]
    if sigma is None:
        if where is None:
            spread = flat.amax(1) - flat.amin(1)
        else:
            spread = torch.stack([r.amax() - r.amin() for r in flat_rows])
        sigma = noise_level * spread
    group = max(1, min(n_samples, MAX_NOISY_VALUES // max(1, x.numel())))
    scale = sigma.view((1, batch) + (1,) * (x.dim() - 1))
    attributions, maps = _Running(kind), _Running(kind)
    layer, base_signed = None, spec.signed
    for start in range(0, n_samples, group):
        g = min(group, n_samples - start)
        if where is None:
            noise = standard_normal((g, *x.shape), gens, xf)
        else:
            noise = masked_normal(g, where, gens, xf)
        noisy = (xf + scale * noise).flatten(0, 1)
        samples = torch.arange(batch, device=dev).repeat(g)
        out = spec.fn(ctx.derive(noisy, samples), **options)
        out = method_output(spec.name, out, noisy)
        attributions.add(out.attributions.reshape(g, batch, *out.attributions.shape[1:]))
        if out.maps is not None:
            maps.add(out.maps.reshape(g, batch, *out.maps.shape[1:]))
        layer = out.layer
        base_signed = spec.signed if out.signed is None else out.signed  # as its options say
    result = attributions.result()
    return MethodOutput(
        result,
        maps=maps.result() if maps.n else None,
        extras={"sigma": sigma},
        layer=layer,
        signed=kind == "smoothgrad" and base_signed,
    )


def _non_negative(value: Any) -> bool:
    """A finite number >= 0 (an infinite σ would only give the model NaN inputs)."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


_COST = "n_samples × base"
_CHOICES = {"base": (f"a method name other than {', '.join(KINDS)}",)}


@register(
    "smoothgrad",
    family="gradient",
    cost=_COST,
    reduction="signed sum over channels",
    choices=_CHOICES,
)
def smoothgrad(
    ctx: Context,
    *,
    base: str = "saliency",
    n_samples: int = 25,
    noise_level: float = 0.15,
    stdevs: float | None = None,
    seed: int = 0,
    base_options: dict[str, Any] | None = None,
) -> MethodOutput:
    """SmoothGrad (Smilkov et al. 2017): the base method averaged over noisy copies of the input.

    Options: `base` a gradient method as in the paper (saliency, input_x_gradient,
    integrated_gradients, guided_backprop, …; any other registered method works too, as with
    Captum's NoiseTunnel) with `base_options`; `n_samples` noisy copies; σ = `noise_level` ×
    (max - min) of each input, or `stdevs` (absolute, overrides); `seed` (with the input's
    values: the same noise in any batch and for any model dtype).
    """
    return _smooth(ctx, "smoothgrad", base, n_samples, noise_level, stdevs, seed, base_options)


@register(
    "smoothgrad_sq",
    family="gradient",
    cost=_COST,
    signed=False,
    reduction="sum over channels",
    choices=_CHOICES,
)
def smoothgrad_sq(
    ctx: Context,
    *,
    base: str = "saliency",
    n_samples: int = 25,
    noise_level: float = 0.15,
    stdevs: float | None = None,
    seed: int = 0,
    base_options: dict[str, Any] | None = None,
) -> MethodOutput:
    """SmoothGrad² (Hooker et al. 2019): the mean of the squared base attributions over noise.

    Options as for smoothgrad. A half-precision model gets float32 maps (squares of small
    gradients underflow float16).
    """
    return _smooth(ctx, "smoothgrad_sq", base, n_samples, noise_level, stdevs, seed, base_options)


@register(
    "vargrad",
    family="gradient",
    cost=_COST,
    signed=False,
    reduction="sum over channels",
    choices=_CHOICES,
)
def vargrad(
    ctx: Context,
    *,
    base: str = "saliency",
    n_samples: int = 25,
    noise_level: float = 0.15,
    stdevs: float | None = None,
    seed: int = 0,
    base_options: dict[str, Any] | None = None,
) -> MethodOutput:
    """VarGrad (Adebayo et al. 2018): the variance of the base attributions over noise.

    Options as for smoothgrad; `n_samples` at least 2 (one sample has no variance). A
    half-precision model gets float32 maps, as for smoothgrad_sq.
    """
    return _smooth(ctx, "vargrad", base, n_samples, noise_level, stdevs, seed, base_options)
