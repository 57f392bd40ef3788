"""Neuron and channel targets: explain what makes one unit of a hidden layer fire.

`sl.explain(model, x, methods=["integrated_gradients"], target=sl.channel("_blocks.12", 42))`
attributes the channel's score to the input pixels: "which pixels make channel 42 of block 12
fire". The score of a row is read from the layer, not the logits:

- :func:`channel`: the channel's mean activation, S = (1/hw) Σ_ij A_kij (Erhan et al. 2009's
  "activation maximisation" objective for a whole feature map; Olah et al. 2017, "Feature
  Visualization", Distill, call it the channel objective);
- :func:`neuron`: one unit's value, S = A_kyx (at the map's centre unless y, x are given; on a
  1-D map (B, C, L), a Conv1d's, S = A_kx).

Both are :class:`~saliencelab.core.targets.LayerTarget` s: the engine hooks the layer, stops the
forward right after it, and the pass's "logits" are the readings of every channel (B, K) (means,
or values at (y, x)); the explained column is the channel. Attributions report target -1
("custom"), as for a callable target.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.errors import SaliencelabError
from ..core.targets import LayerTarget
from ..core.tokens import as_layer_map

LayerRef = str | nn.Module


def _layer_name(layer: LayerRef) -> str:
    if isinstance(layer, str):
        return layer
    if isinstance(layer, nn.Module):
        return type(layer).__name__
    raise SaliencelabError(
        f"A layer must be a dotted name or a module of the model, not {type(layer).__name__}."
    )


def _index(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, torch.Tensor)):
        raise SaliencelabError(f"The {what} must be an integer, not {value!r}.")
    value = int(value)
    if value < 0:
        raise SaliencelabError(f"The {what} must be 0 or more, not {value}.")
    return value


def check_channel(name: str, activation: torch.Tensor, channel: int) -> int:
    """The layer's number of channels K (axis 1), after checking that `channel` < K."""
    if not isinstance(activation, torch.Tensor) or activation.dim() < 2:
        shape = tuple(activation.shape) if isinstance(activation, torch.Tensor) else "no tensor"
        raise SaliencelabError(
            f"The layer {name} outputs shape {shape}, which has no channel axis; pick a layer "
            "whose output is (B, C, ...)."
        )
    k = activation.shape[1]
    if not 0 <= channel < k:
        raise SaliencelabError(
            f"Channel {channel} is out of range: the layer {name} has {k} channels (0 to {k - 1})."
        )
    return k


def position_error(
    name: str, y: int, x: int, height: int, width: int, centre: bool = True
) -> SaliencelabError:
    """One sentence for a unit (row y, column x) outside a height x width map; every neuron
    message gives positions in this order, (y, x), as `sl.neuron` takes them. `centre`: the
    caller may leave the position out (then the map's centre)."""
    leave = ", or leave them out for the centre" if centre else ""
    return SaliencelabError(
        f"The position (y={y}, x={x}) (row y, column x) is outside the {height}x{width} map "
        f"(height x width) of the layer {name}; use y in 0..{height - 1} and x in "
        f"0..{width - 1}{leave}."
    )


class ChannelTarget(LayerTarget):
    """The mean activation of channel `channel` of `layer`: S = (1/hw) Σ_ij A_kij."""

    def __init__(self, layer: LayerRef, channel: int) -> None:
        self.layer = layer
        self.name = _layer_name(layer)
        self.channel = _index(channel, "channel")

    def read(self, activation: torch.Tensor) -> torch.Tensor:
        """(n, K): every channel's mean over the positions (the output itself for (n, K))."""
        activation = as_layer_map(self.name, activation)
        check_channel(self.name, activation, self.channel)
        return activation.flatten(2).mean(dim=2) if activation.dim() > 2 else activation

    def __call__(self, readings: torch.Tensor) -> torch.Tensor:
        return readings[:, self.channel]

    def __repr__(self) -> str:
        return f"channel({self.name!r}, {self.channel})"

    def __str__(self) -> str:
        """ "channel 26 of features.3", as galleries, reports and the CLI name it."""
        return f"channel {self.channel} of {self.name}"


class NeuronTarget(LayerTarget):
    """One unit: S = A_kyx, channel `channel` of `layer` at row `y`, column `x`.

    y, x default to the centre of the map (h // 2, w // 2). On a 1-D map (B, K, L) (a Conv1d's)
    the unit is at x along L (default L // 2; no y). On a layer without positions (B, K) leave
    them out: the unit is the channel itself.
    """

    def __init__(
        self, layer: LayerRef, channel: int, y: int | None = None, x: int | None = None
    ) -> None:
        self.layer = layer
        self.name = _layer_name(layer)
        self.channel = _index(channel, "channel")
        self.y = None if y is None else _index(y, "row y")
        self.x = None if x is None else _index(x, "column x")
        # (y, x) of the last read (the centre when left out); y is None on a 1-D map.
        self.read_at: tuple[int | None, int] | None = None

    def position(self, height: int, width: int) -> tuple[int, int]:
        """(y, x) on a map of this size: the given one (checked) or the centre."""
        y = height // 2 if self.y is None else self.y
        x = width // 2 if self.x is None else self.x
        if not (0 <= y < height and 0 <= x < width):
            raise position_error(self.name, y, x, height, width)
        return y, x

    def read(self, activation: torch.Tensor) -> torch.Tensor:
        """(n, K): every channel's value at (y, x); on a 1-D map (n, K, L) at position x."""
        activation = as_layer_map(self.name, activation)
        check_channel(self.name, activation, self.channel)
        shape = tuple(activation.shape)
        if activation.dim() == 2:
            if self.y is None and self.x is None:
                return activation
            raise SaliencelabError(
                f"The layer {self.name} outputs shape {shape} (B, C), which has no positions, so "
                "a neuron there needs no (y, x); leave y and x out (the unit is the channel)."
            )
        if activation.dim() == 3:  # a 1-D map (B, C, L), e.g. a Conv1d's: x along L
            length = shape[-1]
            if self.y is not None:
                raise SaliencelabError(
                    f"The layer {self.name} outputs a 1-D map {shape} (B, C, L), which has no "
                    f"rows; leave y out and give the position along L as x (0..{length - 1}), or "
                    "leave both out for the centre."
                )
            x = length // 2 if self.x is None else self.x
            if x >= length:
                raise SaliencelabError(
                    f"The position x={x} is outside the 1-D map of length {length} of the layer "
                    f"{self.name}; use x in 0..{length - 1}, or leave it out for the centre."
                )
            self.read_at = (None, x)
            return activation[:, :, x]
        if activation.dim() != 4:
            raise SaliencelabError(
                f"The layer {self.name} outputs shape {shape}, which is neither a map "
                "(B, C, h, w), a 1-D map (B, C, L) nor (B, C); pick such a layer, or use "
                "sl.channel for the channel's mean."
            )
        y, x = self.position(*activation.shape[-2:])
        self.read_at = (y, x)
        return activation[:, :, y, x]

    def __call__(self, readings: torch.Tensor) -> torch.Tensor:
        return readings[:, self.channel]

    def __repr__(self) -> str:
        where = "" if self.y is None and self.x is None else f", y={self.y}, x={self.x}"
        return f"neuron({self.name!r}, {self.channel}{where})"

    def __str__(self) -> str:
        """ "channel 26 of features.3 at (y=3, x=4)": row y, column x of the channel's map (where
        it was last read: the centre when y and x were left out)."""
        at: tuple[int | None, int | None] | None = self.read_at
        if at is None and (self.y is not None or self.x is not None):
            at = (self.y, self.x)  # not read yet
        if at is None:  # a layer without positions (B, K)
            return f"channel {self.channel} of {self.name}"
        where = ", ".join(f"{k}={v}" for k, v in zip("yx", at, strict=True) if v is not None)
        return f"channel {self.channel} of {self.name} at ({where})"


def channel(layer: LayerRef, c: int) -> ChannelTarget:
    """Target the mean activation of channel `c` of `layer` (a dotted name or a module).

    >>> sl.explain(model, x, methods="integrated_gradients", target=sl.channel("_blocks.12", 42))
    """
    return ChannelTarget(layer, c)


def neuron(
    layer: LayerRef, channel: int, y: int | None = None, x: int | None = None
) -> NeuronTarget:
    """Target one unit: channel `channel` of `layer` at (y, x) (default: the map's centre; on a
    1-D map (B, C, L) give only x)."""
    return NeuronTarget(layer, channel, y, x)
