"""Transformer tokens as spatial maps: (B, T, D) activations → (B, D, h, w).

A vision transformer cuts an H×W image into an h×w grid of patches (h = H/p, w = W/p for patch
size p) and usually puts a few extra tokens in front of them: a class token (ViT), a distillation
token (DeiT), register tokens (Darcet et al., "Vision Transformers Need Registers", 2024). Its
layers output a token sequence (B, T, D) with T = n_prefix + h·w. To use such a layer where a
convolutional feature map (B, C, h, w) is expected (the CAM family, channel maps) the prefix
tokens are dropped and the rest reshaped onto the grid:

    tokens (B, T, D) → tokens[:, n_prefix:] (B, h·w, D) → (B, D, h, w)   (row-major patch order).

The grid comes from the token count and the image size: the patch size p is read from the model
when it says (a Conv2d with kernel = stride, timm's `patch_embed.patch_size`, a Hugging Face
`config.patch_size`) and otherwise searched, h = ⌊H/p⌋ or ⌈H/p⌉ and w likewise; the prefix count
comes from the model's class/distillation/register token parameters (or timm's
`num_prefix_tokens`) and otherwise from T − h·w (at most :data:`MAX_PREFIX`). Prefix tokens are
taken to be the first ones, as in ViT, DeiT, DINOv2, timm, torchvision and Hugging Face models.
Channels-last maps (B, h, w, C) (Swin, ConvNeXt blocks) are permuted to (B, C, h, w).

For other layouts give `reshape`: a callable tokens (B, T, D) → maps (B, D, h, w) (as
pytorch-grad-cam's `reshape_transform`), or a grid (h, w) meaning "the last h·w tokens", e.g.
`sl.Model(module, extra={"reshape": (14, 14)})`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .errors import SaliencelabError

Reshape = Callable[[torch.Tensor], torch.Tensor] | tuple[int, int]

# The most tokens before the patch grid when the model does not declare them (class +
# distillation + registers: 1 to 5 in published models; timm and Hugging Face models declare
# theirs, see `model_hints`).
MAX_PREFIX = 8

# Names of parameters holding tokens prepended to the patches (timm, Hugging Face, torchvision,
# this project's TinyViT); a parameter (1, n, D) adds n tokens, a vector (D,) one.
PREFIX_PARAMETERS = frozenset(
    {
        "cls_token",
        "class_token",
        "class_embedding",
        "dist_token",
        "distillation_token",
        "reg_token",
        "register_tokens",
    }
)


@dataclass(frozen=True)
class TokenGrid:
    """How a token sequence lies on the image: `prefix` tokens, then an h×w grid, row-major."""

    prefix: int
    height: int
    width: int

    @property
    def n_tokens(self) -> int:
        return self.prefix + self.height * self.width


# -- what the model says ------------------------------------------------------------------------

_HINTS: weakref.WeakKeyDictionary[nn.Module, tuple[int | None, int | None]] = (
    weakref.WeakKeyDictionary()
)


def model_hints(module: nn.Module | None) -> tuple[int | None, int | None]:
    """(prefix tokens, patch size) as declared by the model, each None when it does not say."""
    if module is None:
        return None, None
    if module not in _HINTS:
        _HINTS[module] = (_prefix_hint(module), _patch_hint(module))
    return _HINTS[module]


def _prefix_hint(module: nn.Module) -> int | None:
    for m in module.modules():
        n = getattr(m, "num_prefix_tokens", None)  # timm VisionTransformer, TinyViT
        if isinstance(n, int) and not isinstance(n, bool):
            return n
    count, found = 0, False
    for name, p in module.named_parameters():
        if name.rsplit(".", 1)[-1] in PREFIX_PARAMETERS:
            count += p.shape[-2] if p.dim() >= 2 else 1
            found = True
    return count if found else None


def _patch_hint(module: nn.Module) -> int | None:
    for m in module.modules():
        size = getattr(getattr(m, "config", None), "patch_size", None)  # Hugging Face
        if size is None:
            size = getattr(getattr(m, "patch_embed", None), "patch_size", None)  # timm
        if isinstance(size, (tuple, list)) and size and len(set(size)) == 1:
            size = size[0]
        if isinstance(size, int) and not isinstance(size, bool) and size > 0:
            return size
    for m in module.modules():  # a patch embedding: non-overlapping square convolution
        if isinstance(m, nn.Conv2d) and m.kernel_size == m.stride and m.kernel_size[0] > 1:
            if m.kernel_size[0] == m.kernel_size[1]:
                return m.kernel_size[0]
    return None


# -- grids --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _grids(image_size: tuple[int, int], patch: int | None) -> tuple[tuple[int, int], ...]:
    """Candidate grids (h, w) for an image, largest first (the declared patch size first)."""
    height, width = image_size
    sizes = ([patch] if patch else []) + list(range(1, max(height, width) + 1))
    grids: dict[tuple[int, int], None] = {}
    for p in sizes:
        for h, w in ((height // p, width // p), (-(-height // p), -(-width // p))):
            if h >= 1 and w >= 1:
                grids.setdefault((h, w))
    return tuple(grids)


def _size(image_size: Sequence[int]) -> tuple[int, int]:
    return int(image_size[-2]), int(image_size[-1])


def is_grid(h: int, w: int, image_size: Sequence[int]) -> bool:
    """Whether an h×w map can be the image cut into p×p patches (rounding down or up)."""
    return (h, w) in _grids(_size(image_size), None)


def token_grid(
    n_tokens: int,
    image_size: Sequence[int],
    prefix: int | None = None,
    patch: int | None = None,
) -> TokenGrid | None:
    """The grid of `n_tokens` tokens over an image of `image_size`, or None if none fits.

    With `prefix` known the grid must hold exactly n_tokens − prefix tokens; otherwise the
    largest grid leaving at most :data:`MAX_PREFIX` tokens in front is taken.
    """
    for h, w in _grids(_size(image_size), patch):
        extra = n_tokens - h * w
        if (extra == prefix) if prefix is not None else (0 <= extra <= MAX_PREFIX):
            return TokenGrid(extra, h, w)
    if prefix is not None:  # the declared count did not fit this layer: infer it
        return token_grid(n_tokens, image_size, None, patch)
    return None


def _grid_message(subject: str, n_tokens: int, image_size: Sequence[int]) -> str:
    return (
        f"{subject} {n_tokens} tokens, which do not form a patch grid of the "
        f"{image_size[0]}x{image_size[1]} input (after at most {MAX_PREFIX} class/register "
        "tokens); give the layout with sl.Model(module, extra={'reshape': fn}), fn mapping tokens "
        "(B, T, D) to maps (B, D, h, w), or extra={'reshape': (h, w)} for the last h*w tokens."
    )


def _apply_reshape(t: torch.Tensor, reshape: Reshape, name: str) -> torch.Tensor:
    name = name or "the per-token attention scores"
    if callable(reshape):
        out = reshape(t)
        if not isinstance(out, torch.Tensor) or out.dim() != 4 or out.shape[0] != t.shape[0]:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise SaliencelabError(
                f"The reshape function turned the output {tuple(t.shape)} of {name} into {got}, "
                "not maps (B, D, h, w); make it return one map per sample, channels first."
            )
        return out
    if (
        isinstance(reshape, (tuple, list))
        and len(reshape) == 2
        and all(isinstance(v, int) and v > 0 for v in reshape)
    ):
        h, w = reshape
        if t.dim() != 3 or t.shape[1] < h * w:
            raise SaliencelabError(
                f"reshape=({h}, {w}) needs at least {h * w} tokens (B, T, D), but {name} outputs "
                f"shape {tuple(t.shape)}; give the grid of this layer or a reshape function."
            )
        return t[:, t.shape[1] - h * w :].transpose(1, 2).reshape(t.shape[0], -1, h, w)
    raise SaliencelabError(
        f"reshape must be a function tokens (B, T, D) → maps (B, D, h, w) or a grid (h, w), not "
        f"{reshape!r}."
    )


def to_grid(
    t: torch.Tensor,
    image_size: Sequence[int],
    *,
    module: nn.Module | None = None,
    reshape: Reshape | None = None,
    name: str = "the layer",
) -> torch.Tensor:
    """A layer output as a channels-first map (B, D, h, w).

    - `reshape` given: applied to tokens (B, T, D) (a callable, or a grid (h, w)); maps are
      handled as below either way;
    - tokens (B, T, D): the prefix tokens dropped, the rest laid on the grid (see module doc);
      a token count that fits no grid raises one sentence suggesting `reshape`;
    - (B, C, h, w) whose (h, w) is a patch grid of the image: as is; (B, h, w, C) whose
      (h, w) is one while (w, C) is not: permuted to channels first; other shapes: as is.

    `module` (the model) supplies the declared prefix count and patch size; `name` names the
    layer in error messages (empty: per-token attention scores).
    """
    if t.dim() == 3:
        if reshape is not None:
            return _apply_reshape(t, reshape, name)
        prefix, patch = model_hints(module)
        grid = token_grid(t.shape[1], image_size, prefix, patch)
        if grid is None:
            subject = f"The layer {name} outputs" if name else "The attention layers attend over"
            raise SaliencelabError(_grid_message(subject, t.shape[1], image_size))
        return t[:, grid.prefix :].transpose(1, 2).reshape(t.shape[0], -1, grid.height, grid.width)
    if t.dim() == 4:
        if not is_grid(t.shape[2], t.shape[3], image_size) and is_grid(
            t.shape[1], t.shape[2], image_size
        ):
            return t.permute(0, 3, 1, 2)
    return t


def token_scores_to_grid(
    scores: torch.Tensor,
    image_size: Sequence[int],
    *,
    module: nn.Module | None = None,
    reshape: Reshape | None = None,
) -> torch.Tensor:
    """Per-token scores (B, T) as maps (B, h, w): the same layout as :func:`to_grid` (a token's
    score is a one-channel feature), so a model's `reshape` serves both."""
    return to_grid(scores[:, :, None], image_size, module=module, reshape=reshape, name="")[:, 0]


def spatial_maps(
    activations: Mapping[str, torch.Tensor],
    gradients: Mapping[str, torch.Tensor],
    image_size: Sequence[int],
    module: nn.Module,
    reshape: Reshape | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Captured layer activations and their gradients as maps (B, D, h, w) (see :func:`to_grid`);
    both go through the same (linear) reshaping, so the gradients stay those of the maps."""
    acts, grads = {}, {}
    for name, a in activations.items():
        acts[name] = to_grid(a, image_size, module=module, reshape=reshape, name=name)
        grads[name] = to_grid(
            gradients[name], image_size, module=module, reshape=reshape, name=name
        )
    return acts, grads


def find_token_layer(
    root: nn.Module, x: torch.Tensor, reshape: Reshape | None = None
) -> str | None:
    """For a transformer on images, the layer CAM methods use by default; None for other models.

    That is the last layer whose output is a token grid (or a channels-last map) computed before
    the last attention layer starts: the last block's first normalisation (timm's
    `blocks[-1].norm1`, Hugging Face's `layernorm_before`, torchvision's `ln_1`), as commonly
    used with Grad-CAM on ViTs. Later layers do not work: after the last attention only the class
    token reaches the classifier, so the patch tokens' gradients are zero. One probe forward on
    the first sample; no forward at all for a model without attention layers.
    """
    from .attention import attention_layers, mha_fastpath_off
    from .state import Hooks, eval_mode

    if x.dim() != 4:
        return None
    attention = {id(layer.module) for layer in attention_layers(root)}
    if not attention:
        return None
    image_size = _size(x.shape)
    prefix, patch = model_hints(root)
    order: list[str] = []
    before_last_attention = [0]

    def is_tokens(out: object) -> bool:
        t = out[0] if isinstance(out, (tuple, list)) and out else out
        if not isinstance(t, torch.Tensor) or t.shape[0] != 1:
            return False
        if t.dim() == 3:
            return (
                reshape is not None or token_grid(t.shape[1], image_size, prefix, patch) is not None
            )
        return (
            t.dim() == 4
            and not is_grid(t.shape[2], t.shape[3], image_size)
            and is_grid(t.shape[1], t.shape[2], image_size)
        )

    def record(name: str):
        def hook(module, inputs, out):
            if is_tokens(out):
                order.append(name)

        return hook

    def attention_starts(module, inputs):
        before_last_attention[0] = len(order)

    with Hooks() as hooks, eval_mode(root), torch.inference_mode():
        mha_fastpath_off(hooks)
        for name, m in root.named_modules():
            if not name:
                continue
            if id(m) in attention:
                hooks.add(m.register_forward_pre_hook(attention_starts))
            hooks.add(m.register_forward_hook(record(name)))
        root(x[:1].clone())  # (a copy: a model may change its input)
    n = before_last_attention[0]
    return order[n - 1] if n > 0 else None


# -- channel and neuron targets on token layers ------------------------------------------------

#: How the current call lays a layer's token sequence (B, T, D) on the image: (image size (H, W),
#: the model), set by :func:`token_layout`; None outside.
_LAYOUT: contextvars.ContextVar[tuple[tuple[int, int], object] | None] = contextvars.ContextVar(
    "saliencelab_token_layout", default=None
)


def model_reshape(model: object) -> Reshape | None:
    """The token layout a model declares (`sl.Model(module, extra={"reshape": ...})`), or None."""
    extra = getattr(model, "extra", None)
    return extra.get("reshape") if isinstance(extra, dict) else None


def model_to_grid(
    model: object, t: torch.Tensor, image_size: Sequence[int], name: str = "the layer"
) -> torch.Tensor:
    """:func:`to_grid` with what the model declares: its module's prefix tokens and patch size,
    and its `extra["reshape"]` (an `sl.Model`, or a plain module)."""
    module = getattr(model, "module", model)
    return to_grid(t, image_size, module=module, reshape=model_reshape(model), name=name)


@contextlib.contextmanager
def token_layout(model: object, x: object) -> Iterator[None]:
    """Within the block, channel and neuron targets read a 3-D layer output of an image model
    (inputs `x` (B, C, H, W)) as a vision transformer's tokens (B, T, D) laid on the patch grid
    (B, D, h, w), as `sl.activations` and the CAMs do: channel c is feature c of the patch
    tokens, not token c. For other inputs (e.g. signals (B, C, L)) nothing changes: a (B, C, L)
    output's channels are its axis 1. The engine reads layer targets inside it."""
    layout = None
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        layout = ((int(x.shape[-2]), int(x.shape[-1])), model)
    token = _LAYOUT.set(layout)
    try:
        yield
    finally:
        _LAYOUT.reset(token)


def as_layer_map(name: str, activation: torch.Tensor) -> torch.Tensor:
    """`activation`, with a token sequence (B, T, D) laid on the patch grid (B, D, h, w) inside a
    :func:`token_layout` of image inputs; anything else as it is."""
    layout = _LAYOUT.get()
    if layout is None or not isinstance(activation, torch.Tensor) or activation.dim() != 3:
        return activation
    size, model = layout
    return model_to_grid(model, activation, size, name)
