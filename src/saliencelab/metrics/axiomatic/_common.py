"""What the axiomatic metrics share: baselines and output kinds."""

from __future__ import annotations

from typing import Literal

import torch

from ...core.errors import SaliencelabError
from ..checks import check_finite_tensor

BaselineSpec = float | str | torch.Tensor
Output = Literal["logit", "probability"]
_NAMED = ("black", "white", "mean")


def check_baseline(name: str, baseline: BaselineSpec) -> None:
    if isinstance(baseline, str) and baseline not in _NAMED:
        raise SaliencelabError(
            f"baseline must be a number, a tensor or one of {', '.join(_NAMED)}, got {baseline!r}."
        )
    if not isinstance(baseline, (int, float, str, torch.Tensor)) or isinstance(baseline, bool):
        raise SaliencelabError(
            f"baseline must be a number, a tensor or one of {', '.join(_NAMED)}, got "
            f"{type(baseline).__name__}."
        )
    check_finite_tensor(name, "baseline", baseline)


OUTPUTS = ("logit", "probability")  # what the axiomatic metrics may read of the model


def baseline_of(x: torch.Tensor, baseline: BaselineSpec) -> torch.Tensor:
    """The baseline input for each sample, broadcastable to x: a constant, a tensor, or per
    sample the minimum ("black"), maximum ("white") or mean ("mean") of that sample's values
    (Quantus' named baselines)."""
    dims = tuple(range(1, x.dim()))
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    if isinstance(baseline, str):
        fn = {"black": torch.amin, "white": torch.amax, "mean": torch.mean}[baseline]
        return fn(x, dim=dims).reshape(shape)
    if isinstance(baseline, torch.Tensor):
        b = baseline.to(device=x.device, dtype=x.dtype)
        try:
            torch.broadcast_shapes(b.shape, x.shape)
        except RuntimeError:
            raise SaliencelabError(
                f"A baseline of shape {tuple(b.shape)} does not broadcast to the inputs' "
                f"{tuple(x.shape)}; give one of shape (C, H, W) or (B, C, H, W)."
            ) from None
        return b if b.dim() == x.dim() else b.unsqueeze(0)
    return torch.full(shape, float(baseline), dtype=x.dtype, device=x.device)
