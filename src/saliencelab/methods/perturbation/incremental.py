"""Incremental inference for local perturbations (Nakandala, Kumar & Papakonstantinou,
"Incremental and Approximate Inference for Faster Occlusion-based Deep CNN Explanations",
SIGMOD 2019).

An occluded input differs from x only inside a small box, so the output of an early layer L
differs from its clean output only inside the box's *influence region*. For each perturbed row
we therefore run the layers up to L (the prefix P) on a crop around the box, paste the cells of
the influence region into the clean activation P(x), and run the model from L on. The result is
the full forward's, up to float rounding: the crop is wide enough that every pasted cell sees
its whole receptive field, and the crop's edges are either image edges or far enough away.

How the prefix is found, for any `nn.Module` (nothing is assumed about the architecture):

1. One probe forward records the tree of module calls. The prefix is the longest chain of calls
   starting at the model's input where each call's input is the previous call's output (the same
   tensor object), descending into a module when its children form such a chain themselves
   (e.g. `nn.Sequential`s, a block without a skip connection). Running the chain's modules one
   after another is then exactly what the model does up to L.
2. For every candidate L with a spatial output (K, h, w), h = H / S_h, w = W / S_w: a block of
   the input aligned to every candidate's stride is set to NaN (and, separately, to noise); the
   output cells that change give how many cells before (α) and after (β) the changed blocks
   are influenced. A box
   covering blocks [b0, b1] changes cells [b0 − α, b1 + β]; cell j depends on blocks
   [j − β, j + α]; so a crop of blocks [b0 − α − β, b1 + α + β] (shifted to stay inside the
   image) computes every changed cell exactly. A layer whose output depends on the whole input
   (global pooling, attention) gets a crop as large as the image and is never chosen.
3. L is chosen where the prefix's share of a forward times the fraction of it saved is
   largest, less the cost of writing each row's activations at L (a forward's cost taken as
   the elements its leaf modules write: CPU and GPU inference of such networks is mostly
   memory-bound); the plan is used only if it saves at least 15 % of a forward.
4. Checks before use: the model run from L on the clean P(x) must reproduce the clean logits, and
   a few real perturbed rows (corners and centre) must score as their full forwards. Any failure
   falls back to full forwards.

During the passes a forward hook on L replaces L's output by the pasted activations, and the
model's own input is a tiny dummy batch, so the layers before L cost next to nothing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from ...core.context import Context
from ...core.engine import PassChunk
from ...core.state import Hooks
from ...core.targets import layer_target
from ...models.model import logits_of
from .features import channels_last_ok, clean_scores

log = logging.getLogger("saliencelab")

MIN_SAVING = 0.15  # use the plan only if it saves at least this fraction of a forward
PASTE_COST = 1.5  # cost of building a row's activations at the layer, per element written


@dataclass
class _Call:
    module: nn.Module
    name: str
    inp: int | None
    out: int | None = None
    shape: tuple[int, ...] | None = None
    children: list[_Call] = field(default_factory=list)


def _record_calls(root: nn.Module, x: torch.Tensor) -> tuple[_Call, dict[int, int]]:
    """The tree of module calls of one forward, and how often each module was called."""
    top = _Call(root, "", None)
    stack = [top]
    alive: list[object] = []  # keep tensors alive so their ids are not reused
    counts: dict[int, int] = {}

    def pre(name):
        def hook(module, args):
            first = args[0] if args else None
            alive.append(first)
            call = _Call(module, name, id(first) if isinstance(first, torch.Tensor) else None)
            stack[-1].children.append(call)
            stack.append(call)
            counts[id(module)] = counts.get(id(module), 0) + 1

        return hook

    def post(module, args, out):
        call = stack.pop()
        alive.append(out)
        if isinstance(out, torch.Tensor):
            call.out, call.shape = id(out), tuple(out.shape)

    with Hooks() as hooks:
        for name, m in root.named_modules():
            hooks.add(m.register_forward_pre_hook(pre(name or "(model)")))
            hooks.add(m.register_forward_hook(post))
        root(x)
    return top.children[0], counts


def _atoms(call: _Call) -> list[_Call]:
    """The finest chain of calls equivalent to `call` (itself when its children do not chain)."""
    kids = call.children
    chained = (
        kids
        and kids[0].inp == call.inp
        and all(b.inp == a.out and a.out is not None for a, b in zip(kids, kids[1:], strict=False))
        and kids[-1].out == call.out
    )
    if not chained:
        return [call]
    return [atom for kid in kids for atom in _atoms(kid)]


def _prefix_chain(root_call: _Call) -> list[_Call]:
    """The longest chain of calls from the model's input (the model's first children)."""
    chain: list[_Call] = []
    current = root_call.inp
    for kid in root_call.children:
        if kid.inp != current or kid.out is None:
            break
        chain.extend(_atoms(kid))
        current = kid.out
    return chain


@dataclass
class LocalPrefix:
    """A prefix P of the model (up to `layer`) and how to recompute it on crops."""

    modules: list[nn.Module]
    layer: nn.Module
    name: str
    stride: tuple[int, int]  # input pixels per output cell
    grid: tuple[int, int]  # (h, w) output cells
    before: tuple[int, int]  # α: cells before a changed block that change
    after: tuple[int, int]  # β: cells after a changed block that change
    crop: tuple[int, int]  # crop size in cells
    clean: torch.Tensor  # (B, K, h, w) = P(x)
    dummy: torch.Tensor  # (1, C, t, t) tiny input that runs the model to `layer`
    saving: float  # estimated fraction of a forward saved
    busy: bool = False
    used: bool = False  # whether it passed the check on real rows and ran

    @property
    def crop_px(self) -> tuple[int, int]:
        return self.crop[0] * self.stride[0], self.crop[1] * self.stride[1]

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """P(x): the prefix modules one after another."""
        self.busy = True
        try:
            for m in self.modules:
                x = m(x)
        finally:
            self.busy = False
        return x

    def cells(self, boxes: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """For boxes (n, 4) = (top, left, bottom, right) px, bottom/right exclusive: the crop's
        first cell (row, col) and the changed cells [r0, r1] × [c0, c1], inclusive."""
        (sh, sw), (h, w) = self.stride, self.grid
        (ah, aw), (bh, bw), (lh, lw) = self.before, self.after, self.crop
        b0, b1 = boxes[:, 0] // sh, (boxes[:, 2] - 1) // sh
        q0, q1 = boxes[:, 1] // sw, (boxes[:, 3] - 1) // sw
        top = (b0 - ah - bh).clamp(0, h - lh)
        left = (q0 - aw - bw).clamp(0, w - lw)
        return (
            top,
            left,
            (b0 - ah).clamp_min(0),
            (b1 + bh).clamp_max(h - 1),
            (q0 - aw).clamp_min(0),
            (q1 + bw).clamp_max(w - 1),
        )

    def activations(
        self,
        samples: torch.Tensor,
        boxes: torch.Tensor,
        crops_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """(n, K, h, w) activations at `layer` of the perturbed rows.

        `crops_of(top_px, left_px)` builds the perturbed inputs cropped to `crop_px` at those
        origins (n, C, crop_h, crop_w); `boxes` (n, 4) bound what each row perturbs."""
        top, left, r0, r1, c0, c1 = self.cells(boxes)
        out = self.run(crops_of(top * self.stride[0], left * self.stride[1]))
        lh, lw = self.crop
        if tuple(out.shape[-2:]) != (lh, lw):
            raise RuntimeError(f"crop output {tuple(out.shape)} is not {lh}×{lw} cells")
        dev = out.device
        rows = top[:, None] + torch.arange(lh, device=dev)  # (n, lh)
        cols = left[:, None] + torch.arange(lw, device=dev)  # (n, lw)
        n = torch.arange(len(samples), device=dev)[:, None, None]
        s = samples[:, None, None]
        clean_crop = self.clean.permute(0, 2, 3, 1)[s, rows[:, :, None], cols[:, None, :]]
        in_r = (rows >= r0[:, None]) & (rows <= r1[:, None])
        in_c = (cols >= c0[:, None]) & (cols <= c1[:, None])
        changed = (in_r[:, :, None] & in_c[:, None, :])[..., None]  # (n, lh, lw, 1)
        values = torch.where(changed, out.permute(0, 2, 3, 1), clean_crop)
        acts = self.clean[samples]  # a new tensor (advanced indexing copies)
        acts.permute(0, 2, 3, 1)[n, rows[:, :, None], cols[:, None, :]] = values
        return acts


def crop(t: torch.Tensor, samples, top, left, size: tuple[int, int]) -> torch.Tensor:
    """(n, C, size) crops of t (B or 1, C, H, W) at per-row pixel origins (top, left); a
    broadcastable t without spatial extent (B or 1, C, 1, 1) is returned per row as is."""
    dev = t.device
    if t.shape[-2:] == (1, 1):
        return t[samples.to(dev)] if t.shape[0] > 1 else t
    if tuple(size) == tuple(t.shape[-2:]):  # the whole input: origins are 0
        return t[samples.to(dev)] if t.shape[0] > 1 else t.expand(len(samples), *t.shape[1:])
    rows = top.to(dev)[:, None] + torch.arange(size[0], device=dev)
    cols = left.to(dev)[:, None] + torch.arange(size[1], device=dev)
    s = (
        samples.to(dev)[:, None, None]
        if t.shape[0] > 1
        else torch.zeros(1, 1, 1, dtype=torch.long, device=dev)
    )
    return t[s, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def _blocks_spanned(boxes: torch.Tensor, stride: tuple[int, int]) -> tuple[int, int]:
    sh, sw = stride
    nh = (boxes[:, 2] - 1) // sh - boxes[:, 0] // sh + 1
    nw = (boxes[:, 3] - 1) // sw - boxes[:, 1] // sw + 1
    return int(nh.max()), int(nw.max())


@dataclass
class _Candidate:
    index: int  # position in the chain
    stride: tuple[int, int]
    grid: tuple[int, int]


def _candidates(chain: list[_Call], counts: dict[int, int], size) -> list[_Candidate]:
    """Chain positions with a spatial output (K, h, w), h and w dividing the input's H and W,
    whose module runs once per forward (so a hook on it fires exactly once)."""
    out = []
    for i, call in enumerate(chain):
        shape = call.shape
        if shape is None or len(shape) != 4 or counts.get(id(call.module)) != 1:
            continue
        h, w = shape[-2:]
        if h >= 2 and w >= 2 and size[0] % h == 0 and size[1] % w == 0:
            out.append(_Candidate(i, (size[0] // h, size[1] // w), (h, w)))
    return out


def _volume(call: _Call) -> int:
    """Elements written by the leaf modules of a call: the cost proxy (inference on these
    networks is mostly memory-bound, so time follows the activations written)."""
    if call.children:
        return sum(_volume(c) for c in call.children)
    return math.prod(call.shape) if call.shape else 0


def _probe_batch(x: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, tuple]:
    """The clean sample, then the same with a centre block (aligned to `block` pixels) set to
    NaN, and to noise. Returns the batch and the block's pixel box."""
    bh, bw = block
    top, left = (x.shape[-2] // bh) // 2 * bh, (x.shape[-1] // bw) // 2 * bw
    nan, noise = x[:1].clone(), x[:1].clone()
    nan[:, :, top : top + bh, left : left + bw] = float("nan")
    gen = torch.Generator(device="cpu").manual_seed(0)
    values = torch.randn((1, x.shape[1], bh, bw), generator=gen) * 3 + 1
    noise[:, :, top : top + bh, left : left + bw] = values.to(noise)
    return torch.cat([x[:1], nan, noise]), (top, left, top + bh, left + bw)


def plan_local_prefix(ctx: Context, boxes: torch.Tensor) -> LocalPrefix | None:
    """A prefix that saves work for perturbations inside `boxes` (M, 4) px, or None."""
    x = ctx.x
    if x.dim() != 4 or not x.is_floating_point() or not any(ctx.model.module.children()):
        return None  # not images, or no layers to split at (e.g. a black-box function)
    with ctx.engine.session(), torch.inference_mode():
        try:
            return _plan(ctx, boxes)
        except Exception as e:  # noqa: BLE001  (any model: full forwards rather than a failure)
            log.info("incremental inference not used: %s", e)
            return None


def _plan(ctx: Context, boxes: torch.Tensor) -> LocalPrefix | None:
    x, module = ctx.x, ctx.model.module
    size = tuple(x.shape[-2:])
    root, counts = _record_calls(module, x[:1])
    chain = _prefix_chain(root)
    candidates = _candidates(chain, counts, size)
    block = (
        math.lcm(*(c.stride[0] for c in candidates)) if candidates else 0,
        math.lcm(*(c.stride[1] for c in candidates)) if candidates else 0,
    )
    if not candidates or 2 * block[0] > size[0] or 2 * block[1] > size[1]:
        return None
    total = _volume(root)
    done = 0

    # One batch (clean, NaN block, noise block) through the chain; at each candidate, how far
    # the block's influence reaches and what a crop would save. Stop once crops are the image.
    batch, probe_box = _probe_batch(x, block)
    best, by_index = None, {c.index: c for c in candidates}
    for i, call in enumerate(chain[: candidates[-1].index + 1]):
        batch = call.module(batch)
        done += _volume(call)
        c = by_index.get(i)
        if c is None:
            continue
        (sh, sw), (h, w) = c.stride, c.grid
        b0, b1 = probe_box[0] // sh, probe_box[2] // sh - 1
        q0, q1 = probe_box[1] // sw, probe_box[3] // sw - 1
        changed = (batch[1:].isnan() | (batch[1:] != batch[:1])).any(dim=1).any(dim=0)
        ys, xs = changed.nonzero(as_tuple=True)
        if len(ys):
            ah, bh = max(0, b0 - int(ys.min())), max(0, int(ys.max()) - b1)
            aw, bw = max(0, q0 - int(xs.min())), max(0, int(xs.max()) - q1)
        else:
            ah = bh = aw = bw = 0
        nh, nw = _blocks_spanned(boxes, c.stride)
        lh, lw = min(h, nh + 2 * (ah + bh)), min(w, nw + 2 * (aw + bw))
        if lh == h and lw == w:
            break
        # Saved: the prefix outside the crop; spent: writing each row's activations.
        pasted = PASTE_COST * math.prod(call.shape)
        saving = (done * (1 - (lh * lw) / (h * w)) - pasted) / total
        if best is None or saving > best[0]:
            best = (saving, c, (ah, aw), (bh, bw), (lh, lw))
    if best is None or best[0] < MIN_SAVING:
        return None
    saving, c, before, after, crop_cells = best
    prefix = LocalPrefix(
        modules=[call.module for call in chain[: c.index + 1]],
        layer=chain[c.index].module,
        name=chain[c.index].name,
        stride=c.stride,
        grid=c.grid,
        before=before,
        after=after,
        crop=crop_cells,
        clean=torch.empty(0),
        dummy=x[:1, :, : c.stride[0], : c.stride[1]].clone(),
        saving=saving,
    )
    # The model run from the layer on the clean P(x) must give the clean logits.
    prefix.clean = prefix.run(x)
    with _replacing(prefix, lambda rows: prefix.clean):
        logits = logits_of(module(prefix.dummy.expand(len(x), -1, -1, -1)))
    known = ctx.logits is not None and layer_target(ctx.target) is None
    reference = ctx.logits if known else logits_of(module(x))
    if logits.shape != reference.shape or not _close(logits, reference.to(logits.device)):
        log.info("incremental inference: the model run from %s differs", prefix.name)
        return None
    log.info(
        "incremental inference from %s: crops of %s of %s cells, ~%.0f%% of each forward saved",
        prefix.name,
        prefix.crop,
        prefix.grid,
        100 * saving,
    )
    return prefix


def _close(a: torch.Tensor, b: torch.Tensor, spread: float = 0.0) -> bool:
    """Equal up to float rounding: |a − b| ≤ 1e-5 · max |b| + 1e-4 · spread, where `spread` is
    the size of the effects being measured (the score drops)."""
    tol = 1e-5 * float(b.abs().max()) + 1e-4 * spread
    return bool(((a - b).abs() <= tol).all())


class _replacing:
    """Forward hook on the prefix's layer returning `acts(rows)` (except inside `prefix.run`)."""

    def __init__(self, prefix: LocalPrefix, acts: Callable[[object], torch.Tensor]) -> None:
        self.prefix, self.acts = prefix, acts
        self.hooks = Hooks()

    def __enter__(self) -> _replacing:
        def hook(module, args, out):
            if self.prefix.busy:
                return out
            return self.acts(None)

        self.hooks.add(self.prefix.layer.register_forward_hook(hook))
        return self

    def __exit__(self, *exc) -> None:
        self.hooks.remove()


Perturbed = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]], torch.Tensor]


def local_forwards(
    ctx: Context,
    prefix: LocalPrefix | None,
    n_rows: int,
    sample_of: Callable[[torch.Tensor], torch.Tensor],
    boxes_of: Callable[[torch.Tensor], torch.Tensor],
    perturbed: Perturbed,
    check_rows: torch.Tensor,
) -> Iterator[PassChunk]:
    """Forward passes over `n_rows` perturbed rows (as `ctx.engine.forwards`), run incrementally
    from `prefix` when it reproduces the full forwards on `check_rows`.

    `perturbed(rows, top, left, size)` builds the rows' perturbed inputs cropped to `size` at
    pixel origins (top, left) (n,) (the whole input: zeros and (H, W)); `boxes_of(rows)` (n, 4)
    px bounds what each row perturbs.
    """
    dev = ctx.x.device
    size = tuple(ctx.x.shape[-2:])
    stash: list[torch.Tensor] = []
    # Channels-last rows where the model allows it (faster on CPU, `channels_last_ok`): the full
    # inputs, the crops through the prefix, and the pasted activations the rest runs from.
    layout = torch.channels_last if channels_last_ok(ctx) else torch.contiguous_format

    def full_inputs(rows: torch.Tensor) -> torch.Tensor:
        zero = torch.zeros(len(rows), dtype=torch.long, device=dev)
        return perturbed(rows.to(dev), zero, zero, size).contiguous(memory_format=layout)

    def local_inputs(rows: torch.Tensor) -> torch.Tensor:
        rows = rows.to(dev)
        acts = prefix.activations(
            sample_of(rows).to(dev),
            boxes_of(rows),
            lambda top, left: perturbed(rows, top, left, prefix.crop_px).contiguous(
                memory_format=layout
            ),
        )
        stash[:] = [acts.contiguous(memory_format=layout) if acts.dim() == 4 else acts]
        return prefix.dummy.expand(len(rows), -1, -1, -1)

    def passes(local: bool, rows_total: int, rows_map=None) -> Iterator[PassChunk]:
        make = local_inputs if local else full_inputs
        mapped_make = make if rows_map is None else (lambda r: make(rows_map[r.to(dev)]))
        mapped_of = sample_of if rows_map is None else (lambda r: sample_of(rows_map[r.to(dev)]))
        chunks = ctx.engine.forwards(rows_total, mapped_make, mapped_of, ctx.target)
        if not local:
            yield from chunks
            return
        with _replacing(prefix, lambda _: stash[0]):
            yield from chunks

    if prefix is None:
        yield from passes(False, n_rows)
        return
    # The engine folds BatchNorm only into passes of an unhooked model; these passes hook the
    # model (the pasting), so the fold is set up here, before the hook, for all of them, and
    # P(x) is recomputed folded: pasted and recomputed cells then come from the same weights.
    with ctx.engine.folded_session(ctx.x) as fold:
        if fold:
            with torch.inference_mode():
                prefix.clean = prefix.run(ctx.x)
        check_rows = check_rows.to(dev)
        full = torch.cat([c.scores for c in passes(False, len(check_rows), check_rows)])
        drops = clean_scores(ctx)[sample_of(check_rows).to(dev)] - full.to(dev)
        try:
            inc = torch.cat([c.scores for c in passes(True, len(check_rows), check_rows)])
            prefix.used = _close(inc, full, float(drops.abs().max()))
        except RuntimeError:
            prefix.used = False
        if not prefix.used:
            log.info("incremental inference from %s disagrees with full forwards", prefix.name)
        yield from passes(prefix.used, n_rows)


def used_layer(prefix: LocalPrefix | None) -> str | None:
    """The layer incremental inference ran from, or None if it did not run."""
    return prefix.name if prefix is not None and prefix.used else None
