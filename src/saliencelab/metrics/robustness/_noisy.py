"""What the robustness metrics share: seeded input noise and one batched re-explanation of it."""

from __future__ import annotations

from typing import Literal

import torch

from ...core.batching import default_budget
from ...core.errors import SaliencelabError
from ..base import EvalBatch, LastDraw

Noise = Literal["uniform", "gaussian"]
On = Literal["maps", "attributions"]


def draw_noise(
    x: torch.Tensor, n_samples: int, scale: float, noise: Noise, seed: int
) -> torch.Tensor:
    """(B * n_samples, *x.shape[1:]) noise, rows sample-major (row i * n + s is sample i's
    draw s): the same n draws δ_1..δ_n for every sample, so a sample's value does not depend on
    its batch or its position in it (a dataset scored in batches gives the values of one call).

    "uniform": U(-scale, scale) per element (a point of the L∞ ball of radius `scale`);
    "gaussian": N(0, scale²) per element. Drawn in float32 on the CPU from a generator seeded
    `seed`, then moved to x's device and dtype: the same noise, and so the same values, on every
    device and in every floating dtype.
    """
    gen = torch.Generator().manual_seed(seed)
    shape = (n_samples, *x.shape[1:])
    if noise == "uniform":
        d = torch.rand(shape, generator=gen, dtype=torch.float32).mul_(2 * scale).sub_(scale)
    elif noise == "gaussian":
        d = torch.randn(shape, generator=gen, dtype=torch.float32).mul_(scale)
    else:
        raise SaliencelabError(f"noise must be 'uniform' or 'gaussian', got {noise!r}.")
    d = d.to(x.device, x.dtype)
    return d.unsqueeze(0).expand(x.shape[0], *d.shape).reshape(x.shape[0] * n_samples, *d.shape[1:])


def noise_key(x: torch.Tensor, n_samples: int, scale: float, noise: Noise, seed: int) -> tuple:
    """Everything `draw_noise` depends on."""
    return (tuple(x.shape), x.dtype, x.device, n_samples, float(scale), noise, int(seed))


def kept_noise(
    draws: LastDraw, x: torch.Tensor, n_samples: int, scale: float, noise: Noise, seed: int
) -> torch.Tensor:
    """`draw_noise(x, n_samples, scale, noise, seed)`, kept in `draws` for the next batch like x
    (the same noise: it is seeded). Read-only."""
    key = noise_key(x, n_samples, scale, noise, seed)
    return draws.get(key, lambda: draw_noise(x, n_samples, scale, noise, seed))


def noisy_copies(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """(B * n, ...) x_i + δ_(i·n + k), rows sample-major like `draw_noise` (one pass, no
    repeated copy of x)."""
    b = x.shape[0]
    return (x.unsqueeze(1) + delta.view(b, -1, *x.shape[1:])).view(delta.shape)


def distances(explained: torch.Tensor, ref: torch.Tensor, n: int, norm: str) -> torch.Tensor:
    """(B, n) ‖e(x'_(i,k)) − e(x_i)‖ of the (B * n, ...) explanations of the noisy copies,
    sample-major, against the (B, ...) reference (float64, broadcast: no repeated copy of it)."""
    b = ref.shape[0]
    flat = explained.reshape(b, n, -1)
    diff = flat.to(torch.float64, memory_format=torch.contiguous_format, copy=True)
    diff.sub_(ref.double().reshape(b, 1, -1))  # in place: a copy of its own
    return row_norm(diff.view(b * n, -1), norm).view(b, n)


def reference(batch: EvalBatch, on: On) -> torch.Tensor:
    """e(x): the batch's maps, or its full input-space attributions."""
    if on == "maps":
        return batch.maps
    if on == "attributions":
        if batch.attributions is None or batch.attributions.shape != batch.x.shape:
            raise SaliencelabError(
                "on='attributions' needs the method's full input-space attributions of the "
                "inputs; pass attributions=... (an sl.Explanation carries them) or use on='maps'."
            )
        return batch.attributions
    raise SaliencelabError(f"on must be 'maps' or 'attributions', got {on!r}.")


def explain_noisy(batch: EvalBatch, noisy: torch.Tensor, n_samples: int, on: On) -> torch.Tensor:
    """Explanations of all noisy rows (B * n, ...), sample-major, for each row's sample's target.

    All rows go to the explainer in one call (it chunks them through the engine); only when the
    noisy inputs and their explanations would not fit a quarter of the memory budget are they
    split into as few calls as fit. An explainer with tensor options (a feature mask, a
    baselines tensor: they may hold one entry per sample of the batch) is called once per noise
    draw instead, on the batch's B rows in their order, as the method first saw them.
    """
    explainer = batch.explainer
    assert explainer is not None and batch.model is not None
    target = batch.target.repeat_interleave(n_samples)
    n = noisy.shape[0]
    per_draw = any(isinstance(v, torch.Tensor) for v in explainer.options.values())
    if per_draw:  # rows k, n + k, 2n + k, ...: draw k of every sample, in the batch's order
        calls: list[slice] = [slice(k, n, n_samples) for k in range(n_samples)]
    else:
        row_bytes = noisy[0].numel() * noisy.element_size() * 3  # input, attributions, maps
        per_call = max(1, min(n, default_budget(batch.device) // 4 // max(row_bytes, 1)))
        calls = [slice(start, start + per_call) for start in range(0, n, per_call)]
    parts = []
    for rows in calls:
        a = explainer(batch.model, noisy[rows], target[rows])
        parts.append(a.maps if on == "maps" else a.attributions)
    if per_draw:  # (n, B, ...) draw-major back to the rows' sample-major order
        out = torch.stack(parts, dim=1).flatten(0, 1)
    else:
        out = parts[0] if len(parts) == 1 else torch.cat(parts)
    if on == "attributions" and out.shape != noisy.shape:
        raise SaliencelabError(
            f"The method {explainer.method} has no input-space attributions of the inputs' shape "
            "(it explains a layer); use on='maps'."
        )
    return out


def row_norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    """Norm of each row flattened: "fro"/"l2", "l1" or "linf"."""
    ords = {"fro": 2, "l2": 2, "l1": 1, "linf": float("inf")}
    if norm not in ords:
        raise SaliencelabError(f"norm must be one of {', '.join(ords)}, got {norm!r}.")
    return torch.linalg.vector_norm(t.flatten(1).double(), ord=ords[norm], dim=1)
