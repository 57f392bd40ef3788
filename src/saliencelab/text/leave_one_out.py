"""Leave-one-out over the words (or tokens) of a text: how much the score drops without each.

    A(u) = S(x) − S(x with unit u removed)

(Li, Monroe & Jurafsky 2016, "Understanding Neural Networks through Representation Erasure";
occlusion of Zeiler & Fergus 2014 with one-word windows). Removed means deleted by default: the
unit's tokens leave the sequence, the tokens after it move up one place (position ids follow)
and the row ends with one more padding position — the model's score on the text typed without
that word, unless its neighbours would then be tokenised anew (deleting "'" from "isn't" keeps
the pieces "isn" and "t"; the typed "isnt" may split otherwise). `removal="pad" | "mask" |
"zero"` instead replaces the unit's token embeddings by the [PAD] / [MASK] embedding or zeros,
in place. Special tokens ([CLS], [SEP]) and a continuation's tokens are never removed; deleting
a text's only word is refused when nothing would be left to read (a model without special
tokens, or a causal LM, which needs a token before its continuation).

Rows are (text, unit) pairs, one forward each (Σ_b U_b rows), built chunk by chunk in one
vectorised gather over the embedding-space inputs and run by `ctx.engine.forwards` (inference
mode, measured chunk sizes).
"""

from __future__ import annotations

import torch

from ..core.batching import row_range, row_slice
from ..core.context import Context, MethodOutput
from ..core.errors import SaliencelabError, closest
from ..core.registry import quoted, register
from ..methods.perturbation.features import clean_scores
from .inputs import with_embeddings

UNITS = ("word", "token")
REMOVALS = ("delete", "pad", "mask", "zero")


def _text_model(ctx: Context):
    from .model import TextModel

    model = ctx.model
    if not isinstance(model, TextModel) or model.batch is None:
        raise SaliencelabError(
            "leave_one_out removes words from texts: give a text model (sl.load_model('minilm') "
            "or 'hf:PATH') and strings; for images use occlusion."
        )
    return model


def _units(model, unit: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sample, first position, length, index) of every removable unit, each (U,) long."""
    batch = model.batch
    samples, starts, lengths, index = [], [], [], []
    if unit == "word":
        for b, spans in enumerate(batch.word_spans()):
            for w, (first, end) in enumerate(spans):
                samples.append(b), starts.append(first), lengths.append(end - first)
                index.append(w)
    else:
        removable = batch.mask & ~batch.fixed
        b_idx, t_idx = removable.nonzero(as_tuple=True)
        samples, starts = b_idx.tolist(), t_idx.tolist()
        lengths, index = [1] * len(samples), starts
    return tuple(torch.tensor(v, dtype=torch.long) for v in (samples, starts, lengths, index))


def _check_context_left(model, unit: str, samples, starts, lengths, index) -> None:
    """One sentence when deleting a unit would leave a row no token to read: a text's only word
    on a model without special tokens (GPT-2's classifier), whose row would be empty, or on a
    causal LM, which needs a token before the continuation (its first token's logits would be
    read at a padding position, whose value depends on the batch)."""
    batch = model.batch
    tokens = batch.mask.sum(dim=1) - batch.n_continuation  # (B,) tokens before the continuation
    left = tokens[samples] - lengths
    if not bool((left < 1).any()):
        return
    u = int((left < 1).nonzero()[0, 0])
    b = int(samples[u])
    if unit == "word":
        what = batch.words[b][int(index[u])]
    else:  # a position in the padded row
        what = batch.pieces[b][int(starts[u]) - int(batch.start[b])]
    if batch.continuation is not None:
        why = "a causal language model needs a token before the continuation to predict it from"
    else:
        why = f"{model.name} has no other token (no special tokens) to read without it"
    kinds = [repr(k) for k in ("pad", "mask") if model._token_id(k) is not None]
    use = f"{', '.join(kinds)} or 'zero'" if kinds else "'zero'"
    raise SaliencelabError(
        f"leave_one_out cannot delete {what!r} from text {b + 1}: it is the text's only {unit}, "
        f"and {why}; give a longer text, or removal={use} (replace it in place)."
    )


@register(
    "leave_one_out",
    family="perturbation",
    cost="U forwards (U = words, or tokens, per text)",
    reduction="score drop when the word (token) is removed",
    choices={"unit": quoted(UNITS), "removal": quoted(REMOVALS)},
)
def leave_one_out(ctx: Context, *, unit: str = "word", removal: str = "delete") -> MethodOutput:
    """Leave-one-out for text (Li et al. 2016): A(u) = S(x) − S(x without word or token u).

    Options: `unit` "word" (subword pieces removed together) | "token"; `removal` "delete"
    (the tokens leave the sequence, as if the text were typed without them) | "pad" | "mask" |
    "zero" (their embeddings replaced in place). Special and continuation tokens stay.
    maps (B, W) one drop per word (for unit="token", the sum of its tokens' drops);
    extras["piece_scores"] (B, T) per token.
    """
    if unit not in UNITS:
        raise SaliencelabError(
            f"leave_one_out: unit must be 'word' or 'token', not {unit!r}."
            f"{closest(str(unit), UNITS)}"
        )
    if removal not in REMOVALS:
        raise SaliencelabError(
            f"leave_one_out: removal must be one of {', '.join(REMOVALS)}, not {removal!r}."
            f"{closest(str(removal), REMOVALS)}"
        )
    model = _text_model(ctx)
    batch = model.batch
    x = ctx.x
    dev = x.device
    n_pos, dim = x.shape[1], model.dim
    units = _units(model, unit)
    ref = None  # delete
    if removal == "delete":
        _check_context_left(model, unit, *units)
    else:
        ref = model.reference_embedding(removal, x[..., :dim], "removal")
    u_sample, u_start, u_len, u_index = (t.to(dev) for t in units)
    positions = torch.arange(n_pos, device=dev)
    left = batch.padding_side == "left"

    def make_inputs(rows: torch.Tensor) -> torch.Tensor:
        start, length = row_slice(u_start, rows)[:, None], row_slice(u_len, rows)[:, None]
        rows_x = x[row_slice(u_sample, rows)]
        if ref is not None:  # replace the unit's embeddings in place
            inside = (positions >= start) & (positions < start + length)
            emb = torch.where(inside[..., None], ref, rows_x[..., :dim])
            return with_embeddings(rows_x, emb)
        # Delete: gather each position's new token; positions left without one become padding.
        if left:  # tokens before the unit move right
            source = positions - length * (positions < start + length)
            valid = source >= 0
        else:  # tokens after the unit move left
            source = positions + length * (positions >= start)
            valid = source < n_pos
        idx = source.clamp(0, n_pos - 1)[..., None].expand(-1, -1, x.shape[-1])
        out = rows_x.gather(1, idx)
        out[..., dim:] *= valid[..., None].to(out.dtype)  # no token there: mask 0
        return out

    clean = clean_scores(ctx)
    n_units = len(u_sample)
    drops = torch.empty(n_units, dtype=clean.dtype, device=dev)
    # (a chunk's units are slices of the tables on the device: no chunk waits for a GPU)
    for chunk in ctx.engine.forwards(
        n_units, make_inputs, lambda r: row_slice(u_sample, r), ctx.target
    ):
        lo, hi = row_range(chunk.rows)
        drops[lo:hi] = clean[chunk.samples] - chunk.scores.to(dev)

    pieces = torch.zeros(ctx.batch, n_pos, dtype=drops.dtype, device=dev)
    extras: dict = {"unit": unit, "removal": removal}
    if unit == "word":
        words = torch.zeros(ctx.batch, max(1, max(batch.n_words)), dtype=drops.dtype, device=dev)
        words[u_sample, u_index] = drops
        word = batch.word.to(dev)
        has = word >= 0
        pieces[has] = words.gather(1, word.clamp_min(0))[has]  # each piece shows its word's drop
        extras["word_scores"] = words
    else:
        pieces[u_sample, u_index] = drops
    return MethodOutput(pieces, maps=pieces, extras=extras)
