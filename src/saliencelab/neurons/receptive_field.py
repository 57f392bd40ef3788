"""The receptive field of a layer: which input pixels one unit of its map can see.

Computed analytically from the convolution and pooling modules on the path to the layer, per
axis, with the usual recurrence (Araujo, Norris & Sim, "Computing Receptive Fields of
Convolutional Neural Networks", Distill 2019): a module with kernel k, dilation d
(k_eff = d·(k-1)+1), stride s and padding p_before maps the field (size r, jump j, first pixel f)
of its input to

    r' = r + (k_eff - 1)·j,   j' = j·s,   f' = f - p_before·j,

and unit u of the layer's map sees input pixels f + u·j ... f + u·j + r - 1 (clipped to the
image; a unit that sees only padding gets the image's nearest pixel). The padding is read from
the shapes the module saw: a module that padded more than its `padding` attribute says
(TensorFlow "same" convolutions such as EfficientNet's `Conv2dSame`) padded `total // 2` before,
as TensorFlow and PyTorch's padding="same" do. A pool with `ceil_mode=True` pads only at the end
for its extra last window (PyTorch), so p_before stays its `padding`.

Pad modules (nn.ZeroPad2d, ConstantPad2d, ReflectionPad2d, ReplicationPad2d) only move the
field: r and j stay, f' = f - p_before·j (the padding is an offset, Araujo et al. 2019).
Reflection and replication pads are taken as zero padding, exact when a unit that reads the
padding also reads the pixels it mirrors (pad p before a kernel of at least 2p + 1, their usual
use). Adaptive pooling from n to m cells has windows [floor(i·n/m), ceil((i+1)·n/m)) (PyTorch);
they get the smallest evenly spaced boxes (stride max(1, n // m)) that contain them, exact when
the windows are evenly spaced (n a multiple of m, 10 → 3, 7 → 3) and an upper bound otherwise
(5 → 3: windows of 2, 3 and 2 pixels get boxes of 3).

The path is found by one forward (stopped after the layer) with a hook on every module, tracking
tensors: a module's input field is that of the tensor it received. A tensor no module made
(`h + x` of a residual block, `torch.cat`, a squeeze-and-excitation product `x * gate`) gets the
widest field among the tensors of its size recorded since the map last changed size (1 × 1 gates
skipped, so a global gate is not counted), the union of its branches. A size change the analysis
cannot follow is refused in one sentence: pooling or convolution written as functional calls
(`F.max_pool2d`, `F.conv2d`, `F.pad`) in a forward, and resampling (nn.Upsample,
`F.interpolate`, transposed convolutions), whose field has no integer stride; a module that
keeps the resolution (h, w) is taken as keeping the field, whatever it does to the channels. A
functional resize to the size of the map computed just before it is not noticed. The field is
the theoretical one (every pixel that can influence the unit), an upper bound on the pixels with
a nonzero gradient.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..core.errors import SaliencelabError
from ..core.explain import input_errors_explained
from ..core.layers import resolve_layer
from ..core.state import Hooks, eval_mode, submodules
from ..models.model import Model, as_model, as_model_input, size_error
from .targets import position_error

POOLS = (nn.MaxPool2d, nn.AvgPool2d)
ADAPTIVE_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
PADS = (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d)
FOLLOWED = (nn.Conv2d, *POOLS, *ADAPTIVE_POOLS, *PADS)


@dataclass(frozen=True)
class _Field:
    """Per axis (y, x): size r, jump j (the stride in input pixels), first pixel f of unit 0."""

    size: tuple[int, int] = (1, 1)
    jump: tuple[int, int] = (1, 1)
    first: tuple[int, int] = (0, 0)


def _pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _adaptive(n_in: int, n_out: int) -> tuple[int, int, int]:
    """(kernel, stride, padding before) of evenly spaced windows containing adaptive pooling's
    windows [floor(i·n_in/n_out), ceil((i+1)·n_in/n_out)), i < n_out (PyTorch's)."""
    stride = max(1, n_in // n_out)
    starts = [i * n_in // n_out - i * stride for i in range(n_out)]
    ends = [-(-(i + 1) * n_in // n_out) - i * stride for i in range(n_out)]
    first = min(starts)
    return max(ends) - first, stride, -first


def _out_size(n_in: int, k_eff: int, stride: int, padding: int, ceil: bool) -> int:
    """PyTorch's output size of a convolution or pooling with `padding` on both sides:
    ⌊(n + 2p - k_eff) / s⌋ + 1, or with `ceil` ⌈·⌉ + 1 less a last window that would start in
    the end padding."""
    span = n_in + 2 * padding - k_eff
    if not ceil:
        return span // stride + 1
    n_out = -(-span // stride) + 1
    return n_out - 1 if (n_out - 1) * stride >= n_in + padding else n_out


def _through(field: _Field, module: nn.Module, size_in, size_out) -> _Field:
    """The field after a convolution, pooling or pad module that mapped size_in to size_out."""
    if isinstance(module, PADS):
        left, _, top, _ = module.padding  # (left, right, top, bottom): only an offset
        before = (top, left)
        firsts = tuple(field.first[a] - before[a] * field.jump[a] for a in range(2))
        return _Field(field.size, field.jump, firsts)
    sizes, jumps, firsts = [], [], []
    for axis in range(2):
        n_in, n_out = size_in[axis], size_out[axis]
        if isinstance(module, ADAPTIVE_POOLS):
            k_eff, stride, before = _adaptive(n_in, n_out)
        else:
            kernel = _pair(module.kernel_size)[axis]
            stride = _pair(module.stride if module.stride is not None else module.kernel_size)
            stride = stride[axis]
            k_eff = _pair(getattr(module, "dilation", 1))[axis] * (kernel - 1) + 1
            padding = module.padding
            if isinstance(padding, str):
                before = 0 if padding == "valid" else (k_eff - 1) // 2
            else:
                p = _pair(padding)[axis]
                ceil = bool(getattr(module, "ceil_mode", False))
                if n_out == _out_size(n_in, k_eff, stride, p, ceil):
                    before = p  # as it says (ceil mode's extra window pads only at the end)
                else:  # it padded more than it says ("same"): total // 2 before
                    before = max((n_out - 1) * stride + k_eff - n_in, 0) // 2
        r, j, f = field.size[axis], field.jump[axis], field.first[axis]
        sizes.append(r + (k_eff - 1) * j)
        jumps.append(j * stride)
        firsts.append(f - before * j)
    return _Field(tuple(sizes), tuple(jumps), tuple(firsts))


@dataclass(frozen=True)
class ReceptiveField:
    """The receptive field of a layer's units on an input of `input_size`.

    Attributes:
        layer: the layer's dotted name.
        size: (height, width) in input pixels of one unit's field (may exceed the input).
        stride: (y, x) input pixels between neighbouring units.
        first: (y, x) input pixel where unit (0, 0)'s field starts (negative: in the padding).
        map_size: (h, w) of the layer's map.
        input_size: (H, W) of the input.
        tokens: True for a transformer's token layer (tokens laid on the patch grid): `size`
            is then each token's own patch, where it sits; through attention a token sees the
            whole image, so it has no smaller field.
    """

    layer: str
    size: tuple[int, int]
    stride: tuple[int, int]
    first: tuple[int, int]
    map_size: tuple[int, int]
    input_size: tuple[int, int]
    tokens: bool = False

    @staticmethod
    def token_patches(
        layer: str, map_size: Sequence[int], input_size: Sequence[int]
    ) -> ReceptiveField:
        """The patches of a token grid `map_size` over an input of `input_size` (see `tokens`)."""
        (h, w), (height, width) = map_size, input_size
        patch = (-(-int(height) // int(h)), -(-int(width) // int(w)))
        return ReceptiveField(
            layer, patch, patch, (0, 0), (int(h), int(w)), (int(height), int(width)), tokens=True
        )

    def describe(self) -> str:
        """In words, e.g. "receptive field 27x27 px, stride 4", or for tokens "token patches
        8x8 px (through attention a token sees the whole image)"."""
        (h, w), (sy, sx) = self.size, self.stride
        if self.tokens:
            return f"token patches {h}x{w} px (through attention a token sees the whole image)"
        return f"receptive field {h}x{w} px, stride {sy}" + ("" if sy == sx else f"x{sx}")

    def box(self, y: int, x: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of unit (y, x)'s field in input pixels, clipped to the
        input; right and bottom are exclusive (PIL's crop box).

        The field of unit u spans f + u·j ... f + u·j + r - 1 on each axis. A unit whose field
        lies wholly in the padding (it sees no pixel) gets the nearest pixel of the image, so
        the box is never empty.
        """
        height, width = self.map_size
        if not all(_whole(v) for v in (y, x)):
            raise SaliencelabError(
                f"A unit's position (y, x) must be two integers, not ({y!r}, {x!r})."
            )
        y, x = int(y), int(x)
        if not (0 <= y < height and 0 <= x < width):
            raise position_error(self.layer, y, x, height, width, centre=False)
        top, bottom = _span(self.first[0] + y * self.stride[0], self.size[0], self.input_size[0])
        left, right = _span(self.first[1] + x * self.stride[1], self.size[1], self.input_size[1])
        return left, top, right, bottom


def _whole(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _span(start: int, size: int, n: int) -> tuple[int, int]:
    """[start, start + size) clipped to [0, n), at least one pixel (the nearest) wide."""
    low = min(max(start, 0), n - 1)
    return low, max(min(start + size, n), low + 1)


class _Stop(Exception):
    pass


def receptive_field(
    model: Model | nn.Module,
    layer: str | nn.Module | None,
    x: torch.Tensor | tuple[int, int] | None = None,
) -> ReceptiveField:
    """The receptive field of `layer`'s units, analytically (see the module docstring).

    `x` is an example input (1, C, H, W) or an input size (H, W) (then a zero image with as many
    channels as the model's first convolution takes); None: the model's `input_size`, else
    224 × 224. "Same" paddings, and so the fields' positions, depend on the input size.
    """
    from .activations import refuse_unsupported

    model = as_model(model)
    refuse_unsupported(model, "A receptive field")
    if x is None:
        x = tuple(model.input_size) if model.input_size is not None else (224, 224)
    if isinstance(x, list):
        x = tuple(x)
    if isinstance(x, tuple):
        if len(x) != 2 or not all(_whole(v) and v >= 1 for v in x):
            raise SaliencelabError(
                f"The input size must be two whole numbers of pixels (H, W), 1 or more, not {x}."
            )
        x = (int(x[0]), int(x[1]))
        convs = [m for m in submodules(model.module) if isinstance(m, nn.Conv2d)]
        channels = convs[0].in_channels if convs else 3
        x = torch.zeros(1, channels, *x, device=model.device)
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] < 1:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise SaliencelabError(
            f"x must be an example input (1, C, H, W) or an input size (H, W), not {got}."
        )
    x = as_model_input(model, x[:1])
    name, target = resolve_layer(model.module, layer, x, model.default_layer)
    fields: dict[int, _Field | None] = {}  # None: derived from the input, cannot be followed
    seen: list[tuple[torch.Tensor, _Field | None]] = []  # keeps tensors alive: ids not reused
    result: list[torch.Tensor] = []

    def record(t: torch.Tensor, f: _Field | None) -> None:
        fields[id(t)] = f
        seen.append((t, f))

    def field_of(t: torch.Tensor) -> _Field | None:
        """t's recorded field; for a tensor no module made, the widest field among the tensors
        of its size recorded since the map last changed size (1 x 1 gates skipped); None when
        there are none or one of them cannot be followed."""
        if id(t) in fields:
            return fields[id(t)]
        same = []
        for s, f in reversed(seen):
            if s.shape[-2:] == t.shape[-2:]:
                same.append(f)
            elif tuple(s.shape[-2:]) != (1, 1):
                break
        if not same or None in same:
            return None
        return max(same, key=lambda f: f.size[0] * f.size[1])

    def hook(module: nn.Module, inputs, out) -> None:
        if not isinstance(out, torch.Tensor) or out.dim() != 4 or id(out) in fields:
            return
        inp = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
        if inp is None or inp.dim() != 4 or list(module.children()):
            f = field_of(out)  # a block's functional result (a residual sum): see field_of
            if f is not None:
                record(out, f)
            return
        f_in = field_of(inp)
        if isinstance(module, FOLLOWED):
            # None when the input came through a size change not followed (F.pad, F.interpolate).
            f = None if f_in is None else _through(f_in, module, inp.shape[-2:], out.shape[-2:])
            record(out, f)
        elif f_in is not None and inp.shape[-2:] == out.shape[-2:]:
            # The same resolution (BatchNorm, ReLU, a channel concatenation): the same field.
            record(out, f_in)
        elif f_in is not None and sorted(inp.shape) != sorted(out.shape):
            record(out, None)  # a resampling module (nn.Upsample, ConvTranspose2d): not followed

    def stop(module: nn.Module, inputs, out) -> None:
        result.append(out if isinstance(out, torch.Tensor) else out[0])
        raise _Stop

    with Hooks() as hooks, eval_mode(model.module), torch.inference_mode():
        for _, m in model.module.named_modules():
            hooks.add(m.register_forward_hook(hook))
        hooks.add(target.register_forward_hook(stop))
        record(x, _Field())
        try:
            with input_errors_explained(model, x):
                model.module(x)
        except RuntimeError as err:  # e.g. a linear head built for another image size
            raise size_error(x, err, "x=(H, W)") from err
        except _Stop:
            pass
    if not result:
        raise SaliencelabError(
            f"The layer {name} was not run by the model's forward; pick a layer the forward uses "
            "(see `saliencelab layers MODEL`)."
        )
    out = result[0]
    if not isinstance(out, torch.Tensor) or out.dim() != 4:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise SaliencelabError(
            f"The layer {name} outputs {shape}, not a spatial map (B, C, h, w), so its units have "
            "no receptive field in the image; pick a 2-D convolutional layer."
        )
    f = field_of(out)
    if f is None:
        raise SaliencelabError(
            f"The receptive field of {name} cannot be followed: on the way to it the map's size "
            "changed in an operation that is not a module (e.g. F.max_pool2d, F.conv2d or F.pad "
            "in forward) or in upsampling (nn.Upsample, F.interpolate, a transposed "
            "convolution); write pooling, convolutions and padding as modules (nn.MaxPool2d, "
            "nn.Conv2d, nn.ZeroPad2d) to get receptive fields."
        )
    return ReceptiveField(name, f.size, f.jump, f.first, tuple(out.shape[-2:]), tuple(x.shape[-2:]))
