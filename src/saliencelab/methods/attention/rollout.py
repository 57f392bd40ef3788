"""Attention rollout (Abnar & Zuidema 2020) and gradient-weighted rollout (Chefer et al. 2021b).

Both chain the attention matrices A_l (B, heads, T, T) of a transformer's L self-attention layers,
first layer first, into a token-to-token matrix R (B, T, T) whose row of the class token says how
much each input token flows into it; that row is the map. On images the row is laid on the patch
grid (class, distillation and register tokens dropped; see `core/tokens.py`) and `sl.explain`
upsamples it to the input; on text it is one score per token (B, T), every token included.

The attention weights come from `core/attention.py`, which switches fused attention kernels to
weight-producing ones for the pass and restores them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import closing

import torch

from ...core.attention import attention_forwards, attention_gradients
from ...core.batching import row_range
from ...core.context import Context, MethodOutput
from ...core.errors import SaliencelabError
from ...core.registry import quoted, register
from ...core.tokens import model_hints, token_grid, token_scores_to_grid
from ..options import check_flag, is_number

__all__ = ["attention_rollout", "grad_rollout", "gradient_rollout", "rollout"]

HEAD_FUSIONS = ("mean", "max", "min")
ROWS = ("auto", "mean")  # the named values of `row`; else a token index
Row = int | str


# -- the maths ----------------------------------------------------------------------------------


def _float(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def fuse_heads(a: torch.Tensor, fusion: str = "mean") -> torch.Tensor:
    """(B, heads, T, T) → (B, T, T): the mean, max or min over heads."""
    if fusion == "mean":
        return a.mean(dim=1)
    if fusion == "max":
        return a.amax(dim=1)
    if fusion == "min":
        return a.amin(dim=1)
    raise SaliencelabError(
        f"head_fusion must be one of {', '.join(map(repr, HEAD_FUSIONS))}, not {fusion!r}."
    )


def discard_lowest(a: torch.Tensor, ratio: float, real: torch.Tensor | None = None) -> torch.Tensor:
    """Each sample's ⌊ratio·n²⌋ smallest entries of (B, T, T) set to 0, entry (0, 0) (the class
    token's attention to itself) kept, as in Gildenblat's reference code (vit-explain). With
    `real` (B, T) bool, the real tokens of padded texts, n is each sample's own number of real
    tokens and only entries between real tokens are candidates, so a text's map does not depend
    on the padding its batch gives it; without, n = T."""
    b, t, _ = a.shape
    if ratio == 0:
        return a
    # Every token real: the most entries to drop, known on the host (no wait for a GPU per
    # layer and chunk); else read back from the samples' own counts.
    most = math.floor(t * t * ratio) if real is None else None
    real = torch.ones(b, t, dtype=torch.bool, device=a.device) if real is None else real.bool()
    flat = a.reshape(b, t * t)
    pairs = (real[:, :, None] & real[:, None, :]).reshape(b, t * t).to(a.device)
    n = real.sum(dim=1).double()
    k = torch.floor(n * n * ratio).long().to(a.device)  # per sample
    if most is None:
        most = int(k.max())
    if most == 0:
        return a
    lowest = flat.masked_fill(~pairs, math.inf).topk(most, dim=1, largest=False).indices
    dropped = torch.arange(most, device=a.device)[None] < k[:, None]
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep.scatter_(1, lowest, ~dropped)
    keep[:, 0] = True
    return (flat * keep).view(b, t, t)


def rollout(
    weights: Sequence[torch.Tensor],
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    real: torch.Tensor | None = None,
) -> torch.Tensor:
    """R = Â_L ⋯ Â_2 Â_1 with Â_l = rownorm(0.5·Ā_l + 0.5·I), Ā_l the heads of A_l fused (and
    its lowest `discard_ratio` entries dropped, among the `real` tokens'); rownorm divides each
    row by its sum."""
    r = None
    for a in weights:
        fused = discard_lowest(fuse_heads(_float(a), head_fusion), discard_ratio, real)
        eye = torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
        step = 0.5 * fused + 0.5 * eye
        step = step / step.sum(dim=-1, keepdim=True)
        r = step if r is None else step @ r
    if r is None:
        raise SaliencelabError("No attention weights were recorded; nothing to roll out.")
    return r


def gradient_rollout(
    weights: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], normalize: bool = False
) -> torch.Tensor:
    """R = (I + Ā_L) ⋯ (I + Ā_1), Ā_l = E_h[(∇A_l ⊙ A_l)⁺] (mean over heads of the positive part);
    with `normalize` each (I + Ā_l) is divided by its row sums first, as rollout does."""
    r = None
    for a, g in zip(weights, grads, strict=True):
        a_bar = (_float(g) * _float(a)).clamp(min=0).mean(dim=1)
        step = a_bar + torch.eye(a_bar.shape[-1], dtype=a_bar.dtype, device=a_bar.device)
        if normalize:
            step = step / step.sum(dim=-1, keepdim=True)
        r = step if r is None else step @ r
    if r is None:
        raise SaliencelabError("No attention weights were recorded; nothing to roll out.")
    return r


# -- from the matrix to the map -----------------------------------------------------------------


def _check_row(row: Row) -> None:
    """A named row or a token index; a negative index counts from the end, as in Python (-1:
    the last token, the row a left-padded decoder classifier scores: `text/model.py`)."""
    if isinstance(row, str) and row in ROWS:
        return
    if isinstance(row, bool) or not isinstance(row, int):
        raise SaliencelabError(
            f"row must be {', '.join(quoted(ROWS))} or a token index (0 for the class token), "
            f"not {row!r}."
        )


def _check_discard_ratio(value: float) -> float:
    """`value` as a float if it is a number in [0, 1) (text, None and bools refused)."""
    if not is_number(value) or not 0 <= value < 1:
        raise SaliencelabError(
            f"attention_rollout: discard_ratio must be in [0, 1) (a number such as 0.9), not "
            f"{value!r}."
        )
    return float(value)


def _pick_row(ctx: Context, r: torch.Tensor, row: Row, inputs: torch.Tensor) -> torch.Tensor:
    """(n, T): row `row` of R; "mean" averages the rows (of real tokens only, when the model's
    `extra["token_mask"](inputs)` says which are); "auto" is the model's `extra["rollout_row"]`
    if set, else the class token (row 0), except for images whose tokens have no class token
    in front (mean-pooled models): "mean"."""
    t = r.shape[-1]
    if row == "auto":
        row = ctx.model.extra.get("rollout_row", 0)
        if "rollout_row" not in ctx.model.extra and ctx.x.dim() == 4:
            if ctx.model.extra.get("reshape") is None:
                prefix, patch = model_hints(ctx.model.module)
                grid = token_grid(t, ctx.x.shape[-2:], prefix, patch)
                row = "mean" if grid is not None and grid.prefix == 0 else 0
    if row == "mean":
        token_mask = ctx.model.extra.get("token_mask")
        if token_mask is None:
            return r.mean(dim=1)
        w = token_mask(inputs).to(r.device, r.dtype)  # (n, T): 1 for real tokens
        return (w[:, :, None] * r).sum(dim=1) / w.sum(dim=1, keepdim=True).clamp_min(1.0)
    _check_row(row)
    if not -t <= row < t:
        raise SaliencelabError(
            f"row={row} is out of range for {t} tokens: give 0 to {t - 1}, or -{t} to -1 to "
            "count from the end (-1 the last token)."
        )
    return r[:, row]


def _output(ctx: Context, scores: torch.Tensor, layers: int) -> MethodOutput:
    extras = {"attention_layers": layers}
    if ctx.x.dim() == 4:
        maps = token_scores_to_grid(
            scores,
            ctx.x.shape[-2:],
            module=ctx.model.module,
            reshape=ctx.model.extra.get("reshape"),
        )
        return MethodOutput(maps, extras=extras)
    return MethodOutput(scores, maps=scores, extras=extras)


def _gather(ctx: Context, chunks, reduce) -> MethodOutput:
    """Each chunk's recorded attention reduced to (n, T) scores, collected per sample."""
    out, layers = None, 0
    with closing(chunks):  # restores the model at once, also if `reduce` raises
        for chunk, *recorded in chunks:
            scores = reduce(chunk.inputs, *recorded)
            layers = len(recorded[0])
            if out is None:
                out = scores.new_zeros(ctx.batch, scores.shape[1])
            lo, hi = row_range(chunk.rows)  # (a range read on the host: no wait for a GPU)
            out[lo:hi] = scores
    return _output(ctx, out, layers)


# -- methods ------------------------------------------------------------------------------------

_ROW_CHOICES = (*quoted(ROWS), "a token index (0 for the class token, -1 for the last)")


@register(
    "attention_rollout",
    family="attention",
    cost="1 forward (no backward)",
    signed=False,
    reduction="rollout",
    choices={"head_fusion": quoted(HEAD_FUSIONS), "row": _ROW_CHOICES},
)
def attention_rollout(
    ctx: Context,
    *,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    row: Row = "auto",
) -> MethodOutput:
    """Attention rollout: the attention matrices chained through the layers (Abnar & Zuidema 2020).

    R = Â_L ⋯ Â_1,  Â_l = rownorm(0.5·Ā_l + 0.5·I),  Ā_l = fuse_heads(A_l)

    where A_l (B, heads, T, T) is layer l's attention, the identity accounts for the residual
    connection, and rownorm makes each row sum to 1. The map is the class token's row of R. It is
    class-agnostic (the target is not used) and costs one forward pass.

    Options: `head_fusion` "mean" (the paper), "max" or "min" over heads; `discard_ratio` r sets
    each fused matrix's ⌊r·T²⌋ smallest entries to 0 before adding I (Gildenblat's vit-explain,
    which keeps the class token's own entry); `row` the token whose row is the map ("auto": the
    model's `extra["rollout_row"]` if set, e.g. "mean" for a mean-pooled sentence encoder, else
    the class token, or the mean of the rows for images without one; "mean": the mean of the
    rows of real tokens, per the model's `extra["token_mask"]`; or an index, negative ones
    counting from the end as in Python: -1 the last token). Images give a map
    on the patch grid (B, h, w), other inputs one score per token (B, T).

    Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020.
    """
    discard_ratio = _check_discard_ratio(discard_ratio)
    fuse_heads(torch.zeros(1, 1, 1, 1), head_fusion)  # validates before any pass
    _check_row(row)
    chunks = attention_forwards(ctx.engine, ctx.x, ctx.target, method="attention_rollout")
    token_mask = ctx.model.extra.get("token_mask")  # padded texts: their real tokens

    def reduce(x: torch.Tensor, w: Sequence[torch.Tensor]) -> torch.Tensor:
        real = token_mask(x) if token_mask is not None else None
        return _pick_row(ctx, rollout(w, head_fusion, discard_ratio, real), row, x)

    return _gather(ctx, chunks, reduce)


@register(
    "grad_rollout",
    family="attention",
    cost="1",
    signed=False,
    reduction="rollout",
    choices={"row": _ROW_CHOICES},
)
def grad_rollout(ctx: Context, *, normalize: bool = False, row: Row = "auto") -> MethodOutput:
    """Gradient-weighted attention rollout, class-specific (Chefer, Gur & Wolf 2021b).

    R = (I + Ā_L) ⋯ (I + Ā_1),  Ā_l = E_h[(∇A_l ⊙ A_l)⁺]

    where ∇A_l = ∂S/∂A_l is the gradient of the target score S (the class logit, or a target
    function's score) with respect to layer l's attention, ⊙ the element-wise product, (·)⁺ the
    positive part and E_h the mean over heads: the self-attention rule R ← R + Ā R of the paper,
    starting from R = I. The map is the class token's row of R. `normalize=True` divides each
    (I + Ā_l) by its row sums before chaining (as rollout does; Chefer et al. 2021a's code);
    `row` as for attention_rollout. One forward+backward pass.

    Chefer, Gur & Wolf, "Generic Attention-model Explainability for Interpreting Bi-Modal and
    Encoder-Decoder Transformers", ICCV 2021.
    """
    _check_row(row)
    normalize = check_flag(normalize, "normalize", "grad_rollout")
    chunks = attention_gradients(ctx.engine, ctx.x, ctx.target, method="grad_rollout")
    return _gather(
        ctx,
        chunks,
        lambda x, w, g: _pick_row(ctx, gradient_rollout(w, g, normalize), row, x),
    )
