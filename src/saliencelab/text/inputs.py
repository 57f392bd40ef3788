"""Embedding-space inputs: what the engine and the methods see of a text.

A text model's input to the engine is one float tensor per batch,

    x = [ token embeddings (D) | attention mask × R | fixed-token flag × R ]    shape (B, T, D + 2R)

The first D features of position t are the embedding of token t (the input embedding layer's
output, before position embeddings): gradient methods (saliency, input×gradient, integrated
gradients, SmoothGrad) differentiate with respect to them unchanged. The other 2R features carry,
for each position, whether it is a token (1) or padding (0), and whether it is a fixed token (1:
special tokens and continuation tokens, which baselines keep) — each repeated R = FLAG_WIDTH
times.

Why in the tensor: multi-pass methods build many rows per sample (IG steps, noisy copies, deleted
words), and every row must run with its own sample's attention mask. Carried inside the row, the
mask goes wherever the row goes, whatever method built it, with no bookkeeping of rows → samples.
Methods leave these columns alone as long as they interpolate between the input and a baseline
that keeps them (the text model's baselines do) or select between rows; SmoothGrad's Gaussian
noise does touch them, which is why each flag is repeated R times and read as the mean of its R
copies, thresholded at 0.5: noise of standard deviation σ on every feature becomes σ/√R on the
mean (σ/11 for R = 128), so even σ = 1 — far more than the scale of word embeddings, ~0.05 —
leaves the mask intact. A row whose flag means are not near 0 or 1 was built by something that
rewrote every feature (e.g. random baselines); it is refused with a clear error rather than run
with a wrong mask. The flags get zero gradient, and the text model drops them from the
attributions it returns.
"""

from __future__ import annotations

import torch

from ..core.errors import SaliencelabError

FLAG_WIDTH = 128
_TOLERANCE = 0.35  # a flag mean farther than this from 0 and from 1 is refused


def pack(embeddings: torch.Tensor, mask: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    """(B, T, D) embeddings, (B, T) mask and fixed flags → the engine's input (B, T, D + 2R)."""
    b, t, _ = embeddings.shape
    flags = torch.stack([mask, fixed], dim=-1).to(embeddings.dtype)  # (B, T, 2)
    flags = flags[..., None].expand(b, t, 2, FLAG_WIDTH).reshape(b, t, 2 * FLAG_WIDTH)
    return torch.cat([embeddings, flags], dim=-1)


def read_flags(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, fixed), each (n, T) bool, read from the flag columns of `x` (n, T, dim + 2R)."""
    if x.dim() != 3 or x.shape[-1] != dim + 2 * FLAG_WIDTH:
        raise SaliencelabError(
            f"A text model takes token embeddings with flags, shape (B, T, {dim + 2 * FLAG_WIDTH})"
            f", but got a tensor of shape {tuple(x.shape)}; pass texts (strings) instead."
        )
    with torch.no_grad():
        means = x[..., dim:].detach().float().unflatten(-1, (2, FLAG_WIDTH)).mean(-1)  # (n, T, 2)
        near = (means - means.round()).abs() <= _TOLERANCE
        if not bool(near.all()):
            raise SaliencelabError(
                "A method changed the attention-mask columns of a text input (it rewrites every "
                "input feature, e.g. with random baselines), which a text model cannot follow; "
                "use saliency, input_x_gradient, integrated_gradients, smoothgrad or "
                "leave_one_out."
            )
        flags = means > 0.5
    mask, fixed = flags[..., 0], flags[..., 1]
    if not bool(mask.any(dim=1).all()):
        raise SaliencelabError(
            "A text input row has no token left (its attention-mask columns are all zeros: a "
            "method removed every token, or replaced the whole input, e.g. with DeepLIFT's zero "
            "baseline), which a text model cannot run; use saliency, input_x_gradient, "
            "integrated_gradients, smoothgrad or leave_one_out."
        )
    return mask, fixed


def embeddings_of(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The token embeddings (n, T, dim) of an engine input."""
    return x[..., :dim]


def with_embeddings(x: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """`x` with its embedding columns replaced by `embeddings` (n, T, D), flags kept."""
    return torch.cat([embeddings.to(x.dtype), x[..., embeddings.shape[-1] :]], dim=-1)
