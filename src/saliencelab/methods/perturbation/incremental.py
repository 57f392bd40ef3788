"""Incremental inference for local perturbations (Nakandala, Kumar & Papakonstantinou,
"Incremental and Approximate Inference for Faster Occlusion-based Deep CNN Explanations",
SIGMOD 2019).

An occluded input differs from x only inside a small box, so each layer's output differs from
its clean output only inside the box's *influence region*, which grows layer by layer. While that
region is small, a layer need only be computed on a crop around it. The early layers are split
into *levels*: level 1 runs on crops of the perturbed image; each later level on crops of the
previous level's map, built from its clean map (computed once per image) with the cells the
previous level recomputed pasted in; the cells the last level recomputed are pasted into its
clean map, and the model runs from there on whole maps. Each crop is wide enough that every
cell kept sees its whole receptive field, and its edges are the map's edges or far enough away,
so the result is the full forward's up to float rounding.

How the levels are found, for any `nn.Module` (nothing is assumed about the architecture):

1. One probe forward records the tree of module calls. The prefix is the longest chain of calls
   starting at the model's input where each call's input is the previous call's output (the same
   tensor object), descending into a module when its children form such a chain themselves
   (e.g. `nn.Sequential`s, a block without a skip connection). Running the chain's modules one
   after another is then exactly what the model does. (A block with a skip connection is one
   call of the chain.)
2. Each call of the chain with maps in and out, (K, H, W) → (K', h, w), H = s·h, W = s'·w, is
   probed on its clean input with a block of s × s' cells set to NaN (and, separately, to
   noise): the output cells that change give how far a changed block reaches, α cells before
   and β after it. A changed range of input cells [r0, r1] then changes at most the output
   cells [⌊r0/s⌋ − α, ⌊r1/s⌋ + β], and output cell j depends only on input blocks
   [j − β, j + α]; composed over the calls of a level, these give its changed ranges and its
   receptive field (lo cells before, hi after), so a crop of the level's output cells
   [o0 − ⌈lo/S⌉, o1 + ⌈hi/S⌉] (S: the level's stride; shifted to stay inside the map)
   computes the changed cells [o0, o1] exactly. A global operation (pooling, attention,
   normalisation over the map) reaches the whole map: crops as large as the map, no saving.
3. The split into levels minimises an estimated cost per row (dynamic programming over where
   levels end): each level's calls scaled by its crop's share of their maps, plus building each
   later level's input, plus a fixed 1 % of a forward per level, plus pasting into the last
   level's map, plus the rest of the model on whole maps; a call's cost taken as the elements it
   writes (CPU and GPU inference of such networks is mostly memory-bound; BatchNorm counts
   nothing, the engine folds it). The plan is used only if it saves at least 25 % of a forward
   (below that, measured on a small ViT's patch embedding, the crops' fixed costs ate the
   saving).
4. Checks before use: the model run from the last level on the clean maps must reproduce the
   clean logits, and a few real perturbed rows (corners and centre) must score as their full
   forwards. Any failure falls back to full forwards.

During the passes a forward hook on the last level's layer replaces its output by the pasted
activations, and the model's own input is a tiny dummy batch, so the layers before it cost next
to nothing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ...core.batching import row_slice
from ...core.context import Context
from ...core.engine import PassChunk
from ...core.errors import SaliencelabError
from ...core.state import Hooks
from ...core.targets import layer_target
from ...models.model import logits_of
from .features import channels_last_ok, clean_scores

log = logging.getLogger("saliencelab")

MIN_SAVING = 0.25  # use the plan only if it saves at least this fraction of a forward
PASTE_COST = 1.5  # cost of pasting into the last level's map, per element of the map
WINDOW_COST = 3.0  # cost of building a later level's input, per element (two gathers, a select)
LEVEL_COST = 0.01  # fixed cost of a level (indices, small kernels), as a share of a forward

Pair = tuple[int, int]
Ranges = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # r0, r1, c0, c1 (n,)


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


def _volume(call: _Call) -> int:
    """Elements written by the leaf modules of a call: the cost proxy (inference on these
    networks is mostly memory-bound, so time follows the activations written). BatchNorm
    counts nothing: the engine folds it into the layer before (core/fused.py)."""
    if call.children:
        return sum(_volume(c) for c in call.children)
    if isinstance(call.module, _BatchNorm) or not call.shape:
        return 0
    return math.prod(call.shape)


# -- changed ranges and receptive fields ------------------------------------------------------


@dataclass(frozen=True)
class _Step:
    """A layer (or a layer and the stride-1 layers after it): a block of `stride` input cells
    changes the output cells from `before` cells before its index to `after` cells after."""

    stride: Pair
    before: Pair
    after: Pair


def _merged(steps: list[_Step]) -> list[_Step]:
    """The same steps with each stride-1 step folded into the one before (margins add)."""
    out: list[_Step] = []
    for st in steps:
        if out and st.stride == (1, 1):
            last = out[-1]
            before = (last.before[0] + st.before[0], last.before[1] + st.before[1])
            after = (last.after[0] + st.after[0], last.after[1] + st.after[1])
            out[-1] = _Step(last.stride, before, after)
        else:
            out.append(st)
    return out


def _spread(ranges: Ranges, steps: list[_Step], grid: Pair) -> Ranges:
    """Changed cell ranges (inclusive, per row) through `steps`, then clipped to `grid`.

    Each step maps [r0, r1] to [⌊r0/s⌋ − α, ⌊r1/s⌋ + β]; clipping once at the end equals
    clipping after every step, because ⌊max(0, r)/s⌋ = max(0, ⌊r/s⌋) (and likewise at the far
    edge, the maps' sizes being multiples of the strides)."""
    r0, r1, c0, c1 = ranges
    for st in steps:
        (sh, sw), (ah, aw), (bh, bw) = st.stride, st.before, st.after
        r0, r1 = r0 // sh - ah, r1 // sh + bh
        c0, c1 = c0 // sw - aw, c1 // sw + bw
    h, w = grid
    return r0.clamp_min(0), r1.clamp_max(h - 1), c0.clamp_min(0), c1.clamp_max(w - 1)


# -- levels ---------------------------------------------------------------------------------


@dataclass
class Level:
    """Calls of the chain run on crops: `stride` input cells (the image's pixels, or the
    previous level's cells) per output cell, `grid` output cells, `crop` of them per row."""

    modules: list[nn.Module]
    name: str
    steps: list[_Step]
    stride: Pair
    grid: Pair
    crop: Pair
    margin: Pair  # output cells a crop starts before the first changed one: ⌈lo / S⌉
    clean: torch.Tensor = field(default_factory=lambda: torch.empty(0))  # (B, K, h, w)

    @property
    def crop_in(self) -> Pair:
        """The crop in input cells."""
        return self.crop[0] * self.stride[0], self.crop[1] * self.stride[1]

    def origin(self, changed: Ranges) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's crop origin (top, left) in output cells, kept inside the map."""
        (h, w), (lh, lw), (mh, mw) = self.grid, self.crop, self.margin
        return (changed[0] - mh).clamp(0, h - lh), (changed[2] - mw).clamp(0, w - lw)


@dataclass
class _Patch:
    """A level's output on crops at (top, left), recomputed cells `changed` (per row)."""

    level: Level
    out: torch.Tensor  # (n, K, lh, lw)
    top: torch.Tensor
    left: torch.Tensor
    changed: Ranges

    def values(self, samples: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor):
        """(n, len rows, len cols, K): the level's map of each row's perturbed input at the cells
        rows (n, a) × cols (n, b): recomputed where changed, clean elsewhere."""
        (lh, lw), dev = self.level.crop, self.out.device
        r0, r1, c0, c1 = (t[:, None] for t in self.changed)
        inside = ((rows >= r0) & (rows <= r1))[:, :, None] & ((cols >= c0) & (cols <= c1))[:, None]
        n = torch.arange(len(rows), device=dev)[:, None, None]
        at_r = (rows - self.top[:, None]).clamp(0, lh - 1)[:, :, None]
        at_c = (cols - self.left[:, None]).clamp(0, lw - 1)[:, None, :]
        new = self.out.permute(0, 2, 3, 1)[n, at_r, at_c]
        clean = self.level.clean.permute(0, 2, 3, 1)[
            samples[:, None, None], rows[:, :, None], cols[:, None, :]
        ]
        return torch.where(inside[..., None], new, clean)

    def window(self, samples, top, left, size: Pair) -> torch.Tensor:
        """(n, K, size) crops of the map at cell origins (top, left): the next level's input."""
        dev = self.out.device
        rows = top[:, None] + torch.arange(size[0], device=dev)
        cols = left[:, None] + torch.arange(size[1], device=dev)
        return self.values(samples, rows, cols).permute(0, 3, 1, 2)

    def pasted(self, samples: torch.Tensor) -> torch.Tensor:
        """(n, K, h, w): the whole map of each row, the recomputed cells pasted in."""
        (lh, lw), dev = self.level.crop, self.out.device
        rows = self.top[:, None] + torch.arange(lh, device=dev)
        cols = self.left[:, None] + torch.arange(lw, device=dev)
        n = torch.arange(len(samples), device=dev)[:, None, None]
        acts = self.level.clean[samples]  # a new tensor (advanced indexing copies)
        acts.permute(0, 2, 3, 1)[n, rows[:, :, None], cols[:, None, :]] = self.values(
            samples, rows, cols
        )
        return acts


@dataclass
class LocalPrefix:
    """The levels run on crops, and how the model is run from the last one on."""

    levels: list[Level]
    dummy: torch.Tensor  # (1, C, t, t) tiny input that runs the model to the last level
    saving: float  # estimated fraction of a forward saved
    busy: bool = False
    used: bool = False  # whether it passed the check on real rows and ran

    @property
    def layer(self) -> nn.Module:
        """The module whose output the passes replace (the last level's last call)."""
        return self.levels[-1].modules[-1]

    @property
    def name(self) -> str:
        return self.levels[-1].name

    def _run(self, modules: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
        self.busy = True
        try:
            for m in modules:
                x = m(x)
        finally:
            self.busy = False
        return x

    def compute_clean(self, x: torch.Tensor) -> None:
        """Each level's map of the clean inputs x (B, C, H, W)."""
        for level in self.levels:
            x = level.clean = self._run(level.modules, x)

    def activations(
        self,
        samples: torch.Tensor,
        boxes: torch.Tensor,
        crops_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        layout: torch.memory_format = torch.contiguous_format,
    ) -> torch.Tensor:
        """(n, K, h, w) activations at the last level of the perturbed rows.

        `crops_of(top_px, left_px)` builds the perturbed inputs cropped to the first level's
        `crop_in` at those origins (n, C, crop_h, crop_w); `boxes` (n, 4) px (top, left,
        bottom, right; bottom/right exclusive) bound what each row perturbs."""
        ranges: Ranges = (boxes[:, 0], boxes[:, 2] - 1, boxes[:, 1], boxes[:, 3] - 1)
        patch: _Patch | None = None
        for level in self.levels:
            changed = _spread(ranges, level.steps, level.grid)
            top, left = level.origin(changed)
            (sh, sw), size = level.stride, level.crop_in
            if patch is None:
                inputs = crops_of(top * sh, left * sw)
            else:
                inputs = patch.window(samples, top * sh, left * sw, size)
            out = self._run(level.modules, inputs.contiguous(memory_format=layout))
            if tuple(out.shape[-2:]) != level.crop:
                raise RuntimeError(f"crop output {tuple(out.shape)} is not {level.crop} cells")
            patch, ranges = _Patch(level, out, top, left, changed), changed
        return patch.pasted(samples)


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


# -- planning -----------------------------------------------------------------------------------


@dataclass
class _Atom:
    """A call of the chain with maps in and out, and how far a changed block reaches."""

    call: _Call
    step: _Step
    grid: Pair
    volume: int


def _probe_atoms(chain: list[_Call], x: torch.Tensor) -> list[_Atom]:
    """The chain's calls from the input on, each run on its clean input with a centre block of
    its stride set to NaN and to noise; the output cells that change give its margins. Stops
    at the first call whose input or output is not a map dividing evenly."""
    atoms: list[_Atom] = []
    h = x[:1].clone()  # (a copy: a layer may change its input)
    gen = torch.Generator(device="cpu").manual_seed(0)
    for call in chain:
        if call.shape is None or len(call.shape) != 4 or h.dim() != 4:
            break
        (height, width), (oh, ow) = h.shape[-2:], call.shape[-2:]
        if oh < 1 or ow < 1 or height % oh or width % ow:
            break
        sh, sw = height // oh, width // ow
        qh, qw = oh // 2, ow // 2  # the centre block
        block = (slice(None), slice(qh * sh, (qh + 1) * sh), slice(qw * sw, (qw + 1) * sw))
        batch = h.expand(3, *h.shape[1:]).clone()
        batch[1][block] = float("nan")
        noise = torch.randn((h.shape[1], sh, sw), generator=gen) * 3 + 1
        batch[2][block] = noise.to(batch)
        out = call.module(batch)
        if not isinstance(out, torch.Tensor) or tuple(out.shape[1:]) != tuple(call.shape[1:]):
            break
        changed = (out[1:].isnan() | (out[1:] != out[:1])).any(dim=1).any(dim=0)
        ys, xs = changed.nonzero(as_tuple=True)
        before, after = (0, 0), (0, 0)
        if len(ys):
            before = (max(0, qh - int(ys.min())), max(0, qw - int(xs.min())))
            after = (max(0, int(ys.max()) - qh), max(0, int(xs.max()) - qw))
        atoms.append(_Atom(call, _Step((sh, sw), before, after), (oh, ow), _volume(call)))
        h = out[:1]
    return atoms


@dataclass
class _Option:
    cost: float  # estimated cost per row of the levels up to here
    start: int  # the atom the level starts after (−1: the image)
    crop: Pair
    margin: Pair
    stride: Pair


def _plan_levels(
    atoms: list[_Atom], boxes: torch.Tensor, last_ok: Callable[[int], bool], total: int
) -> tuple[list[tuple[int, int, _Option]], float] | None:
    """The levels (first atom, last atom, option) minimising the estimated cost per row, and
    the fraction of a forward they save; None if no split saves anything."""
    ranges: Ranges = (boxes[:, 0], boxes[:, 2] - 1, boxes[:, 1], boxes[:, 3] - 1)
    spans: list[Pair] = []  # the widest changed range at each atom, in its cells
    for atom in atoms:
        ranges = _spread(ranges, [atom.step], atom.grid)
        r0, r1, c0, c1 = ranges
        spans.append((int((r1 - r0).max()) + 1, int((c1 - c0).max()) + 1))
    cum = [0]
    for atom in atoms:
        cum.append(cum[-1] + atom.volume)
    channels = [atom.call.shape[1] for atom in atoms]
    best: dict[int, _Option] = {-1: _Option(0.0, -1, (0, 0), (0, 0), (1, 1))}
    for b, atom in enumerate(atoms):
        (h, w) = atom.grid
        if h < 2 or w < 2:
            continue
        # Levels ending at b, starting after a = b − 1, b − 2, …: the receptive field of
        # atoms a+1..b grows one atom at a time (output cell 0 needs input cells [u, v]).
        options, u, v, stride = [], [0, 0], [0, 0], [1, 1]
        for a in range(b - 1, -2, -1):
            step = atoms[a + 1].step
            for d in range(2):
                s = step.stride[d]
                u[d], v[d] = (u[d] - step.after[d]) * s, (v[d] + step.before[d]) * s + s - 1
                stride[d] *= s
            if a not in best:
                continue
            # ⌈lo / S⌉ cells before the changed ones, ⌈hi / S⌉ after (lo = −u, hi = v − S + 1)
            mh, mw = -(u[0] // stride[0]), -(u[1] // stride[1])
            lh = min(h, spans[b][0] + mh + -(-(v[0] - stride[0] + 1) // stride[0]))
            lw = min(w, spans[b][1] + mw + -(-(v[1] - stride[1] + 1) // stride[1]))
            cost = best[a].cost + (cum[b + 1] - cum[a + 1]) * (lh * lw) / (h * w)
            cost += LEVEL_COST * total
            if a >= 0:
                cost += WINDOW_COST * channels[a] * lh * stride[0] * lw * stride[1]
            options.append(_Option(cost, a, (lh, lw), (mh, mw), (stride[0], stride[1])))
        best[b] = min(options, key=lambda o: o.cost)
    ends = [b for b in best if b >= 0 and last_ok(b)]
    if not ends:
        return None

    def planned(b: int) -> float:
        (h, w) = atoms[b].grid
        return best[b].cost + PASTE_COST * channels[b] * h * w + total - cum[b + 1]

    last = min(ends, key=planned)
    levels = []
    b = last
    while b >= 0:
        option = best[b]
        levels.append((option.start + 1, b, option))
        b = option.start
    return levels[::-1], 1 - planned(last) / total


def plan_local_prefix(ctx: Context, boxes: torch.Tensor) -> LocalPrefix | None:
    """Levels that save work for perturbations inside `boxes` (M, 4) px, or None."""
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
    root, counts = _record_calls(module, x[:1].clone())  # (a model may change its input)
    atoms = _probe_atoms(_prefix_chain(root), x)
    if not atoms:
        return None

    def hookable(b: int) -> bool:  # its output can be replaced: the module runs once
        return counts.get(id(atoms[b].call.module)) == 1

    found = _plan_levels(atoms, boxes.to(x.device), hookable, _volume(root))
    if found is None or found[1] < MIN_SAVING:
        return None
    chosen, saving = found
    levels = [
        Level(
            modules=[atom.call.module for atom in atoms[first : last + 1]],
            name=atoms[last].call.name,
            steps=_merged([atom.step for atom in atoms[first : last + 1]]),
            stride=option.stride,
            grid=atoms[last].grid,
            crop=option.crop,
            margin=option.margin,
        )
        for first, last, option in chosen
    ]
    total = (math.prod(lv.stride[0] for lv in levels), math.prod(lv.stride[1] for lv in levels))
    prefix = LocalPrefix(levels, dummy=x[:1, :, : total[0], : total[1]].clone(), saving=saving)
    # The model run from the last level on its clean map must give the clean logits.
    prefix.compute_clean(x)
    with _replacing(prefix, lambda rows: prefix.levels[-1].clean):
        logits = logits_of(module(prefix.dummy.expand(len(x), -1, -1, -1)))
    known = ctx.logits is not None and layer_target(ctx.target) is None
    reference = ctx.logits if known else logits_of(module(x))
    if logits.shape != reference.shape or not _close(logits, reference.to(logits.device)):
        log.info("incremental inference: the model run from %s differs", prefix.name)
        return None
    log.info(
        "incremental inference in %d level(s), %s, ~%.0f%% of each forward saved",
        len(levels),
        ", ".join(f"to {lv.name}: crops of {lv.crop} of {lv.grid} cells" for lv in levels),
        100 * saving,
    )
    return prefix


def _close(a: torch.Tensor, b: torch.Tensor, spread: float = 0.0) -> bool:
    """Equal up to float rounding: |a − b| ≤ 1e-5 · max |b| + 1e-4 · spread, where `spread` is
    the size of the effects being measured (the score drops)."""
    tol = 1e-5 * float(b.abs().max()) + 1e-4 * spread
    return bool(((a - b).abs() <= tol).all())


class _replacing:
    """Forward hook on the prefix's layer returning `acts(rows)` (except while the levels run)."""

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

    The callbacks get rows as indices on the inputs' device: `sample_of(rows)` their samples,
    `perturbed(rows, top, left, size)` their perturbed inputs cropped to `size` at pixel origins
    (top, left) (n,) (the whole input: zeros and (H, W)), `boxes_of(rows)` (n, 4) px bounds what
    each row perturbs. (The engine's chunk rows are CPU ranges: each chunk's indices are a
    slice of a table on the device, as moving them to a GPU would wait for it every chunk.)
    """
    dev = ctx.x.device
    size = tuple(ctx.x.shape[-2:])
    stash: list[torch.Tensor] = []
    # Channels-last rows where the model allows it (faster on CPU, `channels_last_ok`): the full
    # inputs, the crops through the prefix, and the pasted activations the rest runs from.
    layout = torch.channels_last if channels_last_ok(ctx) else torch.contiguous_format

    def full_inputs(rows: torch.Tensor) -> torch.Tensor:
        zero = torch.zeros(len(rows), dtype=torch.long, device=dev)
        return perturbed(rows, zero, zero, size).contiguous(memory_format=layout)

    def local_inputs(rows: torch.Tensor) -> torch.Tensor:
        first = prefix.levels[0].crop_in
        acts = prefix.activations(
            sample_of(rows),
            boxes_of(rows),
            lambda top, left: perturbed(rows, top, left, first),
            layout,
        )
        stash[:] = [acts.contiguous(memory_format=layout)]
        return prefix.dummy.expand(len(rows), -1, -1, -1)

    def passes(local: bool, table: torch.Tensor) -> Iterator[PassChunk]:
        """Forwards over the rows `table` (indices on the device; a chunk is a slice of it)."""
        make = local_inputs if local else full_inputs
        chunks = ctx.engine.forwards(
            len(table),
            lambda r: make(row_slice(table, r)),
            lambda r: sample_of(row_slice(table, r)),
            ctx.target,
        )
        if not local:
            yield from chunks
            return
        with _replacing(prefix, lambda _: stash[0]):
            yield from chunks

    all_rows = torch.arange(n_rows, device=dev)
    if prefix is None:
        yield from passes(False, all_rows)
        return
    # The engine folds BatchNorm only into passes of an unhooked model; these passes hook the
    # model (the pasting), so the fold is set up here, before the hook, for all of them, and
    # the clean maps are recomputed folded (pasted and recomputed cells then come from the
    # same weights), in the rows' layout.
    with _session(ctx):
        with torch.inference_mode():
            prefix.compute_clean(ctx.x.contiguous(memory_format=layout))
        check_rows = check_rows.to(dev)
        full = torch.cat([c.scores for c in passes(False, check_rows)])
        drops = clean_scores(ctx)[sample_of(check_rows)] - full.to(dev)
        try:
            inc = torch.cat([c.scores for c in passes(True, check_rows)])
            prefix.used = _close(inc, full, float(drops.abs().max()))
        except (RuntimeError, SaliencelabError):  # e.g. a neuron's layer ran on a crop
            prefix.used = False
        if not prefix.used:
            log.info("incremental inference from %s disagrees with full forwards", prefix.name)
        yield from passes(prefix.used, all_rows)


def _session(ctx: Context) -> AbstractContextManager:
    """The passes' session: BatchNorm folded in, except for a channel or neuron target, whose
    layer may be a convolution that folding would change (it would read the BatchNorm's output)."""
    if layer_target(ctx.target) is not None:
        return ctx.engine.session()
    return ctx.engine.folded_session(ctx.x)


def used_layer(prefix: LocalPrefix | None) -> str | None:
    """The layer incremental inference ran from, or None if it did not run."""
    return prefix.name if prefix is not None and prefix.used else None
