"""Feature masks: which input elements move together in a perturbation method.

A feature mask holds an integer feature id per input element. Perturbation methods (feature
ablation, LIME, KernelSHAP) switch whole features on and off: a feature that is "off" takes the
baseline's value everywhere the mask holds its id.

Shapes. For an image batch x (B, C, H, W) a mask is (B, H, W) — shared by the channels — or
(B, C, H, W); for tabular x (B, F) it is (B, F). Ids are contiguous per sample, 0..F_b-1, so
`mask[b].max() + 1` is sample b's number of features (`n_features(mask)`), and F = the largest
of them is the width of the `keep` matrices given to :func:`apply_features`.

- :func:`default_feature_mask`: a grid of about `n_segments` cells, or SLIC superpixels
  (Achanta et al., "SLIC Superpixels Compared to State-of-the-Art Superpixel Methods", TPAMI
  2012) via `skimage.segmentation.slic`; one feature per column for tabular inputs.
- :func:`check_feature_mask`: validates and broadcasts a user's mask, relabels ids to 0..F_b-1.
- :func:`feature_mask`: the mask a method's options ask for; refuses "grid", "slic" and
  n_segments where they shape nothing (tabular inputs, a mask tensor).
- :func:`apply_features`: builds a chunk of perturbed inputs at once, x where the row keeps the
  element's feature and the baseline elsewhere (one gather of `keep` over the mask).
- :func:`spread_features` / :func:`feature_attributions`: per-feature values (B, F) back onto
  the inputs (attributions) and onto the maps.
- :func:`perturbation_baseline`: what a removed element becomes: a number, "blur", "mean" or a
  tensor, in x's dtype (for integer inputs only whole numbers in the dtype's range);
  :func:`clean_scores`: the target scores of the unperturbed inputs.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch

from ...core.batching import batch_rows
from ...core.context import Context
from ...core.errors import SaliencelabError, closest
from ...core.layout import channels_last_known
from ...core.registry import quoted
from ..options import check_blur_sigma

__all__ = [
    "BASELINES",
    "BASELINE_CHOICES",
    "FEATURE_KINDS",
    "FEATURE_MASK_CHOICES",
    "apply_features",
    "check_feature_mask",
    "channels_last_ok",
    "clean_scores",
    "default_feature_mask",
    "DEFAULT_SEGMENTS",
    "feature_attributions",
    "feature_mask",
    "n_features",
    "perturbation_baseline",
    "spread_features",
]

FEATURE_KINDS = ("grid", "slic")
DEFAULT_SEGMENTS = 64  # the methods' default n_segments
BASELINES = ("zero", "blur", "mean")
# What `feature_mask` and `baseline` accept, in words (`register(choices=...)`).
FEATURE_MASK_CHOICES = (
    "None (a grid; one feature per column of tabular inputs)",
    *quoted(FEATURE_KINDS),
    "an integer tensor of ids",
)
BASELINE_CHOICES = (*quoted(BASELINES), "a number", "a tensor broadcastable to the inputs")


def _grid_ids(length: int, parts: int, device: torch.device) -> torch.Tensor:
    """(length,) index of the part each position falls in, `parts` near-equal parts."""
    return torch.arange(length, device=device) * parts // length


def _grid_shape(h: int, w: int, n_segments: int) -> tuple[int, int]:
    """Rows × columns of a grid with about `n_segments` cells, as square as the image allows."""
    rows = min(h, max(1, round(math.sqrt(n_segments * h / w))))
    cols = min(w, max(1, round(n_segments / rows)))
    return rows, cols


def _slic(x: torch.Tensor, n_segments: int, compactness: float) -> torch.Tensor:
    from skimage.segmentation import slic

    masks = []
    for img in x.detach().float().cpu():  # one call per image, not per feature
        lo, hi = img.amin(), img.amax()
        img = (img - lo) / (hi - lo) if hi > lo else torch.zeros_like(img)
        arr = img.permute(1, 2, 0).numpy()
        seg = slic(
            arr,
            n_segments=n_segments,
            compactness=compactness,
            start_label=0,
            channel_axis=-1,
            convert2lab=arr.shape[-1] == 3,
        )
        masks.append(torch.from_numpy(seg).long())
    return torch.stack(masks).to(x.device)


def default_feature_mask(
    x: torch.Tensor,
    kind: str = "grid",
    n_segments: int = 64,
    compactness: float = 10.0,
) -> torch.Tensor:
    """A LongTensor of feature ids, (B, H, W) for images or (B, F) for tabular inputs.

    `kind="grid"`: a grid of about `n_segments` near-equal cells (rows × columns chosen as square
    as the image allows; cell (i, j) has id i·columns + j). `kind="slic"`: SLIC superpixels of
    each image (min-max scaled to [0, 1], in CIELAB for 3 channels), `n_segments` and
    `compactness` as in `skimage.segmentation.slic`. Tabular x (B, F): feature f is column f.
    """
    if kind not in FEATURE_KINDS:
        raise SaliencelabError(
            f"The feature mask kind must be one of {', '.join(map(repr, FEATURE_KINDS))} or an "
            f"integer tensor, not {kind!r}."
        )
    if x.dim() == 2:
        return torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1).clone()
    if x.dim() != 4:
        raise SaliencelabError(
            f"A {kind!r} feature mask needs images (B, C, H, W) (tabular rows (B, F) have one "
            f"feature per column), but got inputs of shape {tuple(x.shape)}; pass a feature_mask "
            f"tensor of feature ids, shape {_accepted(x)}."
        )
    if isinstance(n_segments, bool) or not isinstance(n_segments, int) or n_segments < 1:
        raise SaliencelabError(f"n_segments must be a positive int, not {n_segments!r}.")
    b, _, h, w = x.shape
    if kind == "slic":
        return check_feature_mask(_slic(x, n_segments, compactness), x)
    rows, cols = _grid_shape(h, w, n_segments)
    ids = _grid_ids(h, rows, x.device)[:, None] * cols + _grid_ids(w, cols, x.device)[None, :]
    return ids.expand(b, h, w).clone()


def _relabel(mask: torch.Tensor) -> torch.Tensor:
    """Per sample, map the ids present to 0..F_b-1 keeping their order (vectorised)."""
    b = mask.shape[0]
    m = mask - mask.amin()
    span = int(m.amax()) + 1
    key = torch.arange(b, device=mask.device).view(-1, *([1] * (mask.dim() - 1))) * span + m
    uniq, inverse = torch.unique(key, return_inverse=True)
    first = torch.searchsorted(uniq, torch.arange(b, device=mask.device) * span)
    return inverse - first.view(-1, *([1] * (mask.dim() - 1)))


def _accepted(x: torch.Tensor) -> str:
    if x.dim() == 2:
        return f"(F,) or (B, F) = ({x.shape[1]},) or ({x.shape[0]}, {x.shape[1]})"
    b, rest = x.shape[0], tuple(x.shape[1:])
    spatial = rest[1:]
    return f"{spatial}, {(b, *spatial)} or {(b, *rest)}"


def check_feature_mask(mask: Any, x: torch.Tensor) -> torch.Tensor:
    """Validate a user's feature mask for x and return it as a LongTensor (B, *spatial).

    Accepted, for x (B, C, ...): (...) shared by all samples, (B, ...) or (1, ...) per sample,
    both shared by the channels, or (B, C, ...) / (1, C, ...) with ids per element (a channel
    axis of size 1 is dropped). For tabular x (B, F): (F,), (B, F) or (1, F). The result is
    (B, ...) or (B, C, ...) on x's device, ids relabelled per sample to 0..F_b-1 in order.
    """
    if not isinstance(mask, torch.Tensor):
        try:
            mask = torch.as_tensor(mask)
        except (TypeError, ValueError, RuntimeError):
            raise SaliencelabError(
                f"feature_mask must be an integer tensor, not {type(mask).__name__}."
            ) from None
    if mask.is_floating_point() or mask.is_complex():
        raise SaliencelabError(
            f"feature_mask must hold integer feature ids, but has dtype {mask.dtype}; convert "
            "it with .long()."
        )
    mask = mask.to(device=x.device, dtype=torch.long)
    b, rest = x.shape[0], tuple(x.shape[1:])
    shape = tuple(mask.shape)
    out = None
    if x.dim() == 2:
        if shape == rest:
            out = mask.expand(b, *rest)
        elif shape in ((b, *rest), (1, *rest)):
            out = mask.expand(b, *rest)
    elif x.dim() >= 3:
        spatial = rest[1:]
        if shape == spatial:
            out = mask.expand(b, *spatial)
        elif shape in ((b, *spatial), (1, *spatial)):
            out = mask.expand(b, *spatial)
        elif shape in ((b, *rest), (1, *rest)):
            out = mask.expand(b, *rest)
        elif shape in ((b, 1, *spatial), (1, 1, *spatial)):
            out = mask[:, 0].expand(b, *spatial)
    if out is None:
        raise SaliencelabError(
            f"The feature mask has shape {shape}, which does not fit inputs of shape "
            f"{tuple(x.shape)}; give one of {_accepted(x)}."
        )
    if out.numel() == 0:
        raise SaliencelabError("The feature mask is empty; give at least one feature.")
    return _relabel(out.contiguous())


def feature_mask(
    spec: Any, x: torch.Tensor, n_segments: int = DEFAULT_SEGMENTS, method: str = "feature_mask"
) -> torch.Tensor:
    """The mask a method option asks for: None → grid (one feature per column for tabular
    inputs), "grid" / "slic", or a tensor.

    "grid", "slic" and a non-default `n_segments` only shape image features: they are refused for
    tabular inputs (B, F), and `n_segments` with a mask tensor, rather than silently ignored.
    """
    if x.dim() == 2:
        columns = (
            f"tabular inputs (B, F) have one feature per column by default; to group columns, "
            f"pass a feature_mask tensor of shape ({x.shape[1]},) holding each column's group id"
        )
        if isinstance(spec, str):
            raise SaliencelabError(
                f"{method}: feature_mask={spec!r} builds image regions, but {columns}."
            )
        if spec is None and n_segments != DEFAULT_SEGMENTS:
            raise SaliencelabError(
                f"{method}: n_segments={n_segments} sizes an image grid or superpixels, but "
                f"{columns}."
            )
    if spec is None:
        return default_feature_mask(x, "grid", n_segments)
    if isinstance(spec, str):
        return default_feature_mask(x, spec, n_segments)
    mask = check_feature_mask(spec, x)
    if n_segments != DEFAULT_SEGMENTS:
        raise SaliencelabError(
            f"{method}: n_segments={n_segments} sizes the 'grid' or 'slic' feature mask and does "
            "nothing with a feature_mask tensor, whose ids are the features; leave n_segments out."
        )
    return mask


def n_features(mask: torch.Tensor) -> torch.Tensor:
    """(B,) number of features of each sample of a checked mask."""
    return mask.flatten(1).amax(dim=1) + 1


def fill_value(baseline: torch.Tensor) -> float | torch.Tensor:
    """A baseline as `apply_features` takes it per chunk: one value as a number, read on the host
    once per call (`apply_features` would read it for every chunk: a wait for a GPU each), else
    the tensor itself."""
    return float(baseline.reshape(())) if baseline.numel() == 1 else baseline


def apply_features(
    x: torch.Tensor,
    baseline: float | torch.Tensor,
    mask: torch.Tensor,
    keep: torch.Tensor,
    samples: torch.Tensor | None = None,
    shared_mask: bool = False,
) -> torch.Tensor:
    """Perturbed inputs (N, ...): x where row n keeps the element's feature, baseline elsewhere.

    out[n, e] = x[s_n, e] if keep[n, mask[s_n, e]] else baseline[s_n, e], with s_n = samples[n]
    (default: row n is sample n, or sample 0 for a batch of one). `mask` is a checked mask
    (B, ...) or (B, C, ...); `keep` is (N, F) bool with F ≥ the number of features; `baseline` a
    scalar or a tensor broadcastable to x (B, ...). Built in one gather, no loop over features.
    `shared_mask=True` says every sample has the same mask (e.g. the default grid): the gather
    then reads one copy of it instead of one per row. Rows keep x's memory format.
    """
    n = keep.shape[0]
    if samples is None:
        if x.shape[0] not in (1, n):
            raise ValueError(f"{n} rows of keep for a batch of {x.shape[0]}; give `samples`")
        samples = torch.zeros(n, dtype=torch.long) if x.shape[0] == 1 else torch.arange(n)
    samples = samples.to(x.device)
    m = mask[:1].expand(n, *mask.shape[1:]) if shared_mask else mask[samples]
    index = m.flatten(1) if not shared_mask else m.reshape(n, -1)
    dropped = (~keep.to(device=x.device, dtype=torch.bool)).gather(1, index).view(m.shape)
    if m.dim() == x.dim() - 1:
        dropped = dropped.unsqueeze(1)
    rows = x[samples]  # a new tensor (advanced indexing copies): filled in place below
    if isinstance(baseline, torch.Tensor):
        base = baseline.to(device=x.device, dtype=x.dtype)
        if base.dim() == x.dim() and base.shape[0] == x.shape[0] and x.shape[0] > 1:
            base = base[samples]
        if base.numel() == 1:
            return rows.masked_fill_(dropped, float(base.reshape(())))
        return torch.where(dropped, base, rows)
    return rows.masked_fill_(dropped, float(baseline))


def spread_features(values: torch.Tensor, mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B, F) per-feature values → x-shaped attributions, value of the element's feature."""
    per_element = values.gather(1, mask.flatten(1)).view(mask.shape)
    if mask.dim() == x.dim() - 1:
        per_element = per_element[:, None]
    return per_element.expand(x.shape)


def feature_attributions(
    values: torch.Tensor, mask: torch.Tensor, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Broadcast per-feature values (B, F) over the inputs: (attributions like x, maps).

    Every element of x gets its feature's value (as Captum's `return_input_shape=True`). maps:
    for a mask shared by the channels ((B, H, W) for images, (B, L) for signals, (B, D, H, W)
    for volumes), the feature's value at each position; for a per-element mask, the sum over
    channels; for tabular x (B, F), the attributions themselves. Never an integer dtype.
    """
    values = values.to(x.dtype if x.is_floating_point() else torch.get_default_dtype())
    attributions = spread_features(values, mask, x)
    if x.dim() == 2:  # tabular: one value per column
        return attributions, attributions
    if mask.dim() == x.dim() - 1:  # shared by the channels: the position's feature value
        return attributions, values.gather(1, mask.flatten(1)).view(mask.shape)
    return attributions, attributions.sum(dim=1)


def channels_last_ok(ctx: Context) -> bool:
    """Whether this call's perturbed image rows should be built channels-last (NHWC).

    See `core/layout.py`: on CPU, for 4-D float inputs, when the probe `sl.explain` ran at its
    start found that a row gives the same output either way.
    """
    return channels_last_known(ctx.model.module, ctx.x)


def perturbation_baseline(
    x: torch.Tensor, baseline: Any, method: str, blur_sigma: float = 10.0
) -> torch.Tensor:
    """What removed elements become, in x's dtype and dimensions, (B or 1, ...) broadcastable to x.

    `baseline`: a number (0.0 = "zero"); None = the methods' default, 0.0 (as Captum's
    `baselines=None`); "blur" = a Gaussian blur of each image with `blur_sigma` pixels; "mean" =
    each image's per-channel mean; or a tensor broadcastable to x (one per sample (B, ...) or one
    for all, e.g. (C, 1, 1)). `blur_sigma` is checked whatever the baseline (`check_blur_sigma`).
    For integer inputs (category or token ids) it must hold whole numbers in x's dtype range
    (`integer_baseline`): it is never truncated.
    """
    base = _baseline(x, baseline, method, blur_sigma)
    if x.is_floating_point() or x.is_complex():
        return base.to(x.dtype)
    return integer_baseline(base, x, baseline, method)


def integer_baseline(base: torch.Tensor, x: torch.Tensor, given: Any, method: str) -> torch.Tensor:
    """`base` in integer x's dtype, refused unless it holds whole numbers in the dtype's range
    (a cast would truncate 2.5 to 2, or wrap −1 to 255 for uint8). `given`: the user's option."""
    what = f"{given!r}" if isinstance(given, (str, numbers.Number)) else "tensor"

    def refuse_where(bad: torch.Tensor, values: torch.Tensor, problem: str, wanted: str) -> None:
        if bool(bad.any()):  # an example value where a tensor was given
            value = "" if what != "tensor" else f" (e.g. {float(values[bad][0]):g})"
            raise SaliencelabError(
                f"{method}: the baseline {what} holds values {problem}{value}; give an integer "
                f'baseline {wanted}, e.g. the id of a "missing" or padding category.'
            )

    if base.is_floating_point():  # NaN too
        refuse_where(
            base != base.round(),
            base,
            f"that are not whole numbers, which {x.dtype} inputs would truncate",
            "(a whole number or an integer tensor)",
        )
    info = torch.iinfo(x.dtype) if x.dtype != torch.bool else None
    low, high = (info.min, info.max) if info is not None else (0, 1)
    wide = base.to(torch.float64 if base.is_floating_point() else torch.int64)  # no wrap-around
    refuse_where(
        (wide < low) | (wide > high),
        wide,
        f"outside the {low} to {high} that {x.dtype} inputs hold",
        "in that range",
    )
    return base.to(x.dtype)


def _baseline(x: torch.Tensor, baseline: Any, method: str, blur_sigma: float) -> torch.Tensor:
    """`perturbation_baseline` before the cast to x's dtype: x's float dtype for float x, float64
    for integer x (exact whole numbers up to 2^53; an integer tensor keeps its own dtype), the
    default float dtype for complex x."""
    blur_sigma = check_blur_sigma(blur_sigma, method)
    if x.is_floating_point():
        dtype = x.dtype
    elif x.is_complex():
        dtype = torch.get_default_dtype()
    else:
        dtype = torch.float64
    if isinstance(baseline, np.ndarray):
        baseline = torch.from_numpy(baseline)
    if isinstance(baseline, torch.Tensor):
        integers = not (x.is_floating_point() or x.is_complex()) and not (
            baseline.is_floating_point() or baseline.is_complex()
        )
        b = baseline.to(device=x.device, dtype=baseline.dtype if integers else dtype)
        try:
            fits = b.dim() <= x.dim() and torch.broadcast_shapes(b.shape, x.shape) == x.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise SaliencelabError(
                f"{method}: the baseline tensor has shape {tuple(b.shape)}, which does not "
                f"broadcast to the inputs' shape {tuple(x.shape)}; give one baseline per input or "
                "one for all (e.g. shape (C, 1, 1))."
            )
        return b.view((1,) * (x.dim() - b.dim()) + tuple(b.shape))
    if isinstance(baseline, numbers.Real) and not isinstance(baseline, bool):
        if not math.isfinite(baseline):
            raise SaliencelabError(
                f"{method}: the baseline must be a finite number, got {baseline!r}; use e.g. "
                "baseline=0.0, 'blur' or 'mean'."
            )
        return torch.full((1,) * x.dim(), float(baseline), dtype=dtype, device=x.device)
    if baseline is None or baseline == "zero":
        return torch.zeros((1,) * x.dim(), dtype=dtype, device=x.device)
    if baseline in ("blur", "mean") and x.dim() != 4:
        raise SaliencelabError(
            f"{method}: the {baseline!r} baseline needs image batches (B, C, H, W), but got "
            f"inputs of shape {tuple(x.shape)}; use a number or a tensor."
        )
    if baseline == "mean":
        return x.to(dtype).mean(dim=(2, 3), keepdim=True)
    if baseline == "blur":
        from ..gradient.baselines import gaussian_blur

        return gaussian_blur(x.to(dtype), blur_sigma)
    hint = closest(baseline, BASELINES) if isinstance(baseline, str) else ""
    raise SaliencelabError(
        f"{method}: unknown baseline {baseline!r}.{hint} Use a number, 'blur', 'mean' or a tensor "
        "broadcastable to the inputs."
    )


def clean_scores(ctx: Context) -> torch.Tensor:
    """(B,) target scores of the unperturbed inputs (from the call's clean logits when known)."""
    rows = torch.arange(ctx.batch, device=ctx.x.device)
    if ctx.logits is not None:
        return ctx.target.scores(ctx.logits, rows).to(ctx.x.device)
    # (slices of device tensors per chunk: no chunk waits for a GPU)
    return ctx.engine.scores(ctx.batch, *batch_rows(ctx.x), ctx.target).to(ctx.x.device)
