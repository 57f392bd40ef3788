"""Objectives: what a feature visualization maximises, composable with +, - and * a number.

An :class:`Objective` maps what one step captured (:class:`Capture`: hooked layer outputs, the
logits, the images) to one value per image, shape (N,). `sl.visualize` maximises the sum over the
batch (or, given a list of objectives, objective i on image i).

- :func:`neuron`: one unit, A[n, c, y, x] (the centre unless y, x are given);
- :func:`channel`: a channel's mean, (1/hw) Σ_yx A[n, c, y, x] (Erhan et al. 2009);
- :func:`layer`: DeepDream, the mean square of the whole layer, mean(A²) (Mordvintsev et al. 2015);
- :func:`direction`: a direction in activation space, mean_yx ⟨A[n, :, y, x], v⟩ / ‖v‖;
- :func:`class_logit`: a class's pre-softmax score z[n, c] (Simonyan et al. 2014);
- :func:`diversity`: -mean_{j≠n} cos(G_n, G_j), G the Gram matrix of a layer (Olah et al. 2017);
- regularisers, to subtract: :func:`total_variation`, :func:`l1`, :func:`l2`, :func:`blur`.

>>> obj = channel("_blocks.12", 7) - 0.05 * total_variation()
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import SaliencelabError
from ..models.model import check_labels_fit

LayerRef = str | nn.Module


@dataclass
class Capture:
    """What one optimisation step exposes to objectives.

    Attributes:
        activations: layer name -> that layer's output on the transformed batch.
        logits: the model's logits (None when no objective needs them and the forward stopped
            early).
        images: the images (N, 3, H, W) in [0, 1] before the random transforms.
        labels: the model's class names, if any.
    """

    activations: dict[str, torch.Tensor] = field(default_factory=dict)
    logits: torch.Tensor | None = None
    images: torch.Tensor | None = None
    labels: Sequence[str] | None = None
    names: dict[int, str] = field(default_factory=dict)  # id(module) -> its dotted name

    def activation(self, layer: str) -> torch.Tensor:
        try:
            return self.activations[layer]
        except KeyError:
            raise SaliencelabError(
                f"The layer {layer} produced no output in this forward; check that the model "
                "uses it."
            ) from None


class Objective:
    """A function Capture -> (N,) values, with the layers it reads and whether it needs logits.

    Objectives add and subtract (`a + b`, `a - b`, `-a`) and scale by numbers (`2 * a`, `a / 4`);
    `sum([...])` works. The result needs the union of the layers. `batchwise` marks objectives
    whose value for one image depends on the other images (:func:`diversity`): the whole batch
    must then go through the model together.
    """

    def __init__(
        self,
        fn: Callable[[Capture], torch.Tensor],
        name: str,
        layers: Sequence[LayerRef] = (),
        logits: bool = False,
        batchwise: bool = False,
    ) -> None:
        self.fn, self.name = fn, name
        self.layers: tuple[LayerRef, ...] = tuple(layers)
        self.logits = bool(logits)
        self.batchwise = bool(batchwise)

    def __call__(self, capture: Capture) -> torch.Tensor:
        return self.fn(capture)

    def __repr__(self) -> str:
        return self.name

    # -- arithmetic ----------------------------------------------------------------------------

    def _join(self, other: Objective, sign: float, op: str) -> Objective:
        def fn(c: Capture, a: Objective = self, b: Objective = other) -> torch.Tensor:
            return a(c) + sign * b(c)

        layers = self.layers + tuple(x for x in other.layers if x not in self.layers)
        return Objective(
            fn,
            f"{self.name} {op} {other.name}",
            layers,
            self.logits or other.logits,
            self.batchwise or other.batchwise,
        )

    def __add__(self, other: object) -> Objective:
        if isinstance(other, Objective):
            return self._join(other, 1.0, "+")
        if isinstance(other, numbers.Real) and not isinstance(other, bool):
            if other == 0:  # sum([...]) starts from 0
                return self
        return NotImplemented

    __radd__ = __add__

    def __sub__(self, other: object) -> Objective:
        if isinstance(other, Objective):
            return self._join(other, -1.0, "-")
        return NotImplemented

    def __neg__(self) -> Objective:
        return self * -1.0

    def __mul__(self, k: object) -> Objective:
        if isinstance(k, bool) or not isinstance(k, numbers.Real):
            if isinstance(k, Objective):
                raise SaliencelabError(
                    "Objectives can be added, subtracted and scaled by numbers, not multiplied "
                    "together; write e.g. 2 * channel(...) + class_logit(...)."
                )
            return NotImplemented
        k = float(k)

        def fn(c: Capture, a: Objective = self) -> torch.Tensor:
            return k * a(c)

        name = self.name if " " not in self.name else f"({self.name})"
        return Objective(fn, f"{k:g} * {name}", self.layers, self.logits, self.batchwise)

    __rmul__ = __mul__

    def __truediv__(self, k: object) -> Objective:
        if isinstance(k, bool) or not isinstance(k, numbers.Real) or float(k) == 0:
            raise SaliencelabError(f"An objective can be divided by a nonzero number, not {k!r}.")
        return self * (1.0 / float(k))


# -- helpers -------------------------------------------------------------------------------------


def layer_key(layer: LayerRef) -> str | nn.Module:
    """How an objective refers to a layer before the model is known: a name or the module."""
    if isinstance(layer, (str, nn.Module)):
        return layer
    raise SaliencelabError(
        f"A layer must be a dotted name (e.g. '_blocks.12') or a module, not "
        f"{type(layer).__name__}."
    )


def _label(layer: LayerRef) -> str:
    return layer if isinstance(layer, str) else type(layer).__name__


def _index(value: object, what: str) -> int:
    one_int = (
        isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point()
    )
    if isinstance(value, bool) or not (isinstance(value, numbers.Integral) or one_int):
        raise SaliencelabError(f"The {what} must be an integer, not {value!r}.")
    value = int(value)
    if value < 0:
        raise SaliencelabError(f"The {what} must be 0 or more, not {value}.")
    return value


def _channels(name: str, a: torch.Tensor, c: int) -> None:
    if a.dim() < 2:
        raise SaliencelabError(
            f"The layer {name} outputs shape {tuple(a.shape)}, which has no channel axis; pick a "
            "layer whose output is (N, C, ...)."
        )
    if not 0 <= c < a.shape[1]:
        raise SaliencelabError(
            f"Channel {c} is out of range: the layer {name} has {a.shape[1]} channels "
            f"(0 to {a.shape[1] - 1})."
        )


def _read(capture: Capture, layer: LayerRef) -> torch.Tensor:
    key = layer if isinstance(layer, str) else capture_name(capture, layer)
    return capture.activation(key)


def capture_name(capture: Capture, module: nn.Module) -> str:
    try:
        return capture.names[id(module)]
    except KeyError:
        raise SaliencelabError(
            f"The layer {type(module).__name__} is not part of the model; pass a submodule of the "
            "model or its dotted name."
        ) from None


# -- layer objectives ------------------------------------------------------------------------------


def neuron(
    layer: LayerRef, channel: int, *, y: int | None = None, x: int | None = None
) -> Objective:
    """One unit: A[n, channel, y, x] (row y, column x, keywords only, as `sl.neuron`'s order);
    the centre (h // 2, w // 2) of the map when y, x are None.

    The transforms change the map's size a little from step to step, so the centre follows it.
    """
    layer = layer_key(layer)
    c = _index(channel, "channel")
    y = None if y is None else _index(y, "y")
    x = None if x is None else _index(x, "x")
    name = _label(layer)

    def fn(cap: Capture) -> torch.Tensor:
        a = _read(cap, layer)
        _channels(name, a, c)
        if a.dim() != 4:
            raise SaliencelabError(
                f"neuron() needs a spatial layer (N, C, H, W), but {name} outputs "
                f"{tuple(a.shape)}; use channel() for it."
            )
        h, w = a.shape[-2:]
        yy = h // 2 if y is None else y
        xx = w // 2 if x is None else x
        if not (0 <= yy < h and 0 <= xx < w):
            from ..neurons.targets import position_error

            raise position_error(name, yy, xx, h, w)
        return a[:, c, yy, xx]

    where = "" if x is None and y is None else f", y={y}, x={x}"
    return Objective(fn, f"neuron({name}, {c}{where})", [layer])


def channel(layer: LayerRef, channel: int) -> Objective:
    """A channel's mean activation: (1/hw) Σ_yx A[n, c, y, x] (A[n, c] for an (N, C) output)."""
    layer = layer_key(layer)
    c = _index(channel, "channel")
    name = _label(layer)

    def fn(cap: Capture) -> torch.Tensor:
        a = _read(cap, layer)
        _channels(name, a, c)
        return a[:, c].reshape(a.shape[0], -1).mean(dim=1)

    return Objective(fn, f"channel({name}, {c})", [layer])


def layer(layer: LayerRef) -> Objective:
    """DeepDream: the mean square of the layer's output, (1/|A|) Σ A² (Mordvintsev et al. 2015)."""
    layer = layer_key(layer)

    def fn(cap: Capture) -> torch.Tensor:
        a = _read(cap, layer)
        return a.reshape(a.shape[0], -1).pow(2).mean(dim=1)

    return Objective(fn, f"layer({_label(layer)})", [layer])


def direction(layer: LayerRef, vector: torch.Tensor | Sequence[float]) -> Objective:
    """A direction v in the layer's channel space: mean over positions of ⟨A[n, :, y, x], v⟩/‖v‖.

    For a (N, C) output it is ⟨A[n], v⟩/‖v‖. Olah et al. 2017 ("Interaction between neurons").
    """
    layer = layer_key(layer)
    v = torch.as_tensor(vector, dtype=torch.float32).flatten()
    norm = float(v.norm())
    if v.numel() == 0 or not norm > 0:
        raise SaliencelabError("A direction needs a nonzero vector with one value per channel.")
    v = v / norm
    name = _label(layer)

    def fn(cap: Capture) -> torch.Tensor:
        a = _read(cap, layer)
        if a.dim() < 2 or a.shape[1] != v.numel():
            raise SaliencelabError(
                f"The direction has {v.numel()} values but the layer {name} outputs "
                f"{tuple(a.shape)}; give one value per channel (axis 1)."
            )
        u = v.to(device=a.device, dtype=a.dtype)
        proj = torch.einsum("nc...,c->n...", a, u)
        return proj.reshape(a.shape[0], -1).mean(dim=1)

    return Objective(fn, f"direction({name})", [layer])


def _class_index(c: int | str, labels: Sequence[str] | None, n: int) -> int:
    from ..core.targets import _class_index as resolve

    if isinstance(c, int) and not 0 <= c < n:  # (the core's sentence offers target=None)
        raise SaliencelabError(
            f"Class {c} is out of range: the model has {n} classes (0 to {n - 1}); pass a class "
            "in that range or a class name."
        )
    return resolve(c, labels, n)


def class_logit(c: int | str) -> Objective:
    """A class's logit z[n, c], by index or name (pre-softmax: other classes are not pushed down).

    Simonyan, Vedaldi & Zisserman, "Deep Inside Convolutional Networks", ICLR 2014 workshop.
    """
    if isinstance(c, bool) or not isinstance(c, (numbers.Integral, str, torch.Tensor)):
        raise SaliencelabError(f"A class must be an index or a class name, not {c!r}.")
    c = c if isinstance(c, str) else int(c)
    cache: dict[tuple, int] = {}  # (classes, labels) -> index: a name means another index
    # on a model whose labels come in another order

    def fn(cap: Capture) -> torch.Tensor:
        z = cap.logits
        if z is None or z.dim() != 2:
            shape = None if z is None else tuple(z.shape)
            raise SaliencelabError(
                f"class_logit needs (N, classes) logits from the model, got {shape}; pass a "
                "classifier or use a layer objective."
            )
        key = (z.shape[1], None if cap.labels is None else tuple(cap.labels))
        if key not in cache:
            check_labels_fit(cap.labels, z)  # else a name could point past the logits
            cache[key] = _class_index(c, cap.labels, z.shape[1])
        return z[:, cache[key]]

    return Objective(
        fn, f"class_logit({c})" if isinstance(c, int) else f"class_logit({c!r})", logits=True
    )


def diversity(layer: LayerRef) -> Objective:
    """Diversity across the batch: d_n = -1/(N-1) Σ_{j≠n} ⟨Ĝ_n, Ĝ_j⟩ (0 when N = 1).

    G_n = A_n A_nᵀ is the (C, C) Gram matrix of image n's activations at `layer` (A_n:
    C x positions), Ĝ = G / ‖G‖_F; ⟨Ĝ_n, Ĝ_j⟩ is the cosine similarity of the two images'
    "styles" (Gatys et al. 2015). Maximising d pushes the batch's images apart (Olah et al. 2017,
    "Diversity"). Add it with a weight, e.g. `channel(...) + 100 * diversity(layer)`. The loss
    sums over images, so weight w weighs the similarity of each pair by 2w/(N-1) against the
    summed objective; Lucid's `channel - 1e2 * diversity` (a batch mean of the channel, a sum of
    pair similarities over N) matches w = 100·(N-1).
    """
    layer = layer_key(layer)

    def fn(cap: Capture) -> torch.Tensor:
        a = _read(cap, layer)
        n = a.shape[0]
        if n < 2:
            return a.new_zeros(n)
        flat = a.reshape(n, a.shape[1], -1)
        gram = flat @ flat.transpose(1, 2)
        g = F.normalize(gram.reshape(n, -1), dim=1, eps=1e-10)
        sim = g @ g.T
        off = sim.sum(dim=1) - sim.diagonal()
        return -off / (n - 1)

    return Objective(fn, f"diversity({_label(layer)})", [layer], batchwise=True)


# -- regularisers on the images ---------------------------------------------------------------


def _images(cap: Capture) -> torch.Tensor:
    if cap.images is None:  # pragma: no cover - visualize always sets it
        raise SaliencelabError("This objective reads the images, but none were captured.")
    return cap.images


def total_variation() -> Objective:
    """Total variation, mean |x[y+1, x] - x[y, x]| + mean |x[y, x+1] - x[y, x]| per image.

    Means over channels and the pixel pairs of each direction (Mahendran & Vedaldi, CVPR 2015, with
    β = 1). A penalty: subtract it, e.g. `channel(...) - 0.5 * total_variation()`.
    """

    def fn(cap: Capture) -> torch.Tensor:
        x = _images(cap)
        dy = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(dim=1)
        dx = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(dim=1)
        return dy + dx

    return Objective(fn, "total_variation()")


def l1(constant: float = 0.5) -> Objective:
    """mean |x - constant| per image (a penalty: subtract it)."""
    k = float(constant)

    def fn(cap: Capture) -> torch.Tensor:
        return (_images(cap) - k).abs().flatten(1).mean(dim=1)

    return Objective(fn, f"l1({k:g})")


def l2(constant: float = 0.5) -> Objective:
    """mean (x - constant)² per image (a penalty: subtract it)."""
    k = float(constant)

    def fn(cap: Capture) -> torch.Tensor:
        return (_images(cap) - k).pow(2).flatten(1).mean(dim=1)

    return Objective(fn, f"l2({k:g})")


def box_blur(x: torch.Tensor) -> torch.Tensor:
    """3x3 mean filter per channel, edges replicated."""
    c = x.shape[1]
    kernel = torch.full((c, 1, 3, 3), 1.0 / 9.0, dtype=x.dtype, device=x.device)
    return F.conv2d(F.pad(x, [1, 1, 1, 1], mode="replicate"), kernel, groups=c)


def blur() -> Objective:
    """mean (x - stopgrad(blur₃ₓ₃(x)))² per image: pulls each pixel towards its neighbours' mean.

    A penalty: subtract it. Its gradient 2(x - blur(x)) / (C·H·W) (the loss is a mean over the
    image's C·H·W values) points from the 3x3 blur to x, so a descent step moves each pixel
    towards its blurred value (Nguyen, Yosinski & Clune 2015's "blur every few steps", as a smooth
    term).
    """

    def fn(cap: Capture) -> torch.Tensor:
        x = _images(cap)
        return (x - box_blur(x).detach()).pow(2).flatten(1).mean(dim=1)

    return Objective(fn, "blur()")


def as_objective(obj: object) -> Objective:
    """`obj` if it is an Objective; an int or class name becomes :func:`class_logit`; the
    explain targets `sl.channel(layer, c)` and `sl.neuron(layer, c, y, x)` become the same
    quantity as an objective (:func:`channel`, :func:`neuron`)."""
    from ..neurons.targets import ChannelTarget, NeuronTarget

    if isinstance(obj, Objective):
        return obj
    if isinstance(obj, (str, numbers.Integral)) and not isinstance(obj, bool):
        return class_logit(obj)
    if isinstance(obj, ChannelTarget):
        return channel(obj.layer, obj.channel)
    if isinstance(obj, NeuronTarget):
        return neuron(obj.layer, obj.channel, y=obj.y, x=obj.x)
    raise SaliencelabError(
        f"Expected an objective (e.g. sl.objectives.channel('_blocks.12', 7)), a class index or a "
        f"class name, not {type(obj).__name__}."
    )
