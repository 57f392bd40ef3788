"""Composites: *where* each LRP rule applies, by layer type and position.

A :class:`Composite` maps layer types to rules (first match wins) and may give the *first*
Conv / Linear layer (in module order: the one that reads the input) its own rule. Layers with no
rule pass the modified gradient on unchanged, which is right for flatten, dropout (eval),
padding, max pooling (winner takes all) and LRP-0 for any other bias-free linear operation.

Presets (Montavon et al. 2019, "Layer-Wise Relevance Propagation: An Overview"; Kohlbrenner et
al. 2020, "Towards Best Practice in Explaining Neural Network Decisions with LRP", IJCNN; names as
in zennit):

    epsilon               every layer LRP-ε (ε = 0: LRP-0 = gradient × input on ReLU nets)
    epsilon_plus          convolutions z⁺, dense layers LRP-ε
    epsilon_plus_flat     as epsilon_plus, the first layer flat
    epsilon_gamma_box     first layer z^B, convolutions LRP-γ, dense layers LRP-ε
    epsilon_alpha2_beta1  convolutions LRP-α2β1, dense layers LRP-ε

In every preset average pooling and residual sums (`ResidualSum`) get LRP-ε (linear maps with
non-negative weights, so ε just stabilises). A BatchNorm that could not be merged into the layer
before it (e.g. one after a ReLU; `canonize=False`) gets LRP-ε as the affine map it is: its
shift absorbs relevance and a negative scale flips its sign, as a layer's bias and weights do,
and LRP-0 stays gradient × input (zennit gives such a BatchNorm the pass-through rule instead,
which conserves relevance but breaks that identity). Elementwise activations other than ReLU /
LeakyReLU / PReLU (for those the gradient is the pass-through) get the pass-through rule
(`PASS_ACTIVATIONS`: tanh, sigmoid, softplus, GELU, SiLU, …): R(z) = R(f(z)), so relevance is
conserved through them. Where f(0) ≠ 0 (sigmoid, softplus) a unit with z exactly 0 passes none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ....core.errors import SaliencelabError, closest
from .canonizers import ResidualSum
from .rules import ZERO_AT_ZERO, AlphaBeta, Epsilon, Flat, Gamma, Pass, Rule, ZBox, ZPlus

LayerTypes = type | tuple[type, ...]

DENSE = (nn.Linear,)
CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
LINEAR_LAYERS = DENSE + CONVOLUTIONS
AVERAGE_POOLS = (
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
)
# Elementwise activations whose gradient is not already the pass-through g·f(z)/z (ReLU,
# LeakyReLU, PReLU and RReLU in eval mode are piecewise z·c: their gradient is f(z)/z): those
# with f(0) = 0 (ReLU6 is a Hardtanh) and those without.
PASS_ACTIVATIONS = tuple(t for t in ZERO_AT_ZERO if t not in (nn.ReLU, nn.ReLU6, nn.LeakyReLU)) + (
    nn.Hardtanh,
    nn.Threshold,
    nn.Sigmoid,
    nn.Hardsigmoid,
    nn.LogSigmoid,
    nn.Softplus,
)


@dataclass(frozen=True, eq=False)
class Composite:
    """Which rule each layer gets: `layer_rules` ((types, rule), ...) in order, first match wins;
    `first` (optional) for the first Conv / Linear in module order."""

    layer_rules: Sequence[tuple[LayerTypes, Rule]]
    first: Rule | None = None
    name: str = "custom"

    def assign(self, model: nn.Module) -> list[tuple[str, nn.Module, Rule]]:
        """(name, module, rule) for every module of `model` that gets a rule."""
        assigned = []
        first_done = self.first is None
        for name, module in model.named_modules():
            rule = None
            if not first_done and _is_linear_layer(module):
                rule, first_done = self.first, True
            else:
                for types, r in self.layer_rules:
                    if isinstance(module, types):
                        rule = r
                        break
            if rule is not None:
                assigned.append((name, module, rule))
        return assigned


def _is_linear_layer(module: nn.Module) -> bool:
    return isinstance(module, LINEAR_LAYERS)


def _common(epsilon: float) -> list[tuple[LayerTypes, Rule]]:
    eps = Epsilon(epsilon)
    return [
        (DENSE, eps),
        (AVERAGE_POOLS + (_BatchNorm, ResidualSum), eps),
        (PASS_ACTIVATIONS, Pass()),
    ]


def composite_from_name(
    name: str,
    epsilon: float = 1e-6,
    gamma: float = 0.25,
    low: float | torch.Tensor | None = None,
    high: float | torch.Tensor | None = None,
) -> Composite:
    """A preset composite (see the module docstring) with these parameters."""
    if name == "epsilon":
        return Composite([(CONVOLUTIONS, Epsilon(epsilon)), *_common(epsilon)], name=name)
    if name == "epsilon_plus":
        return Composite([(CONVOLUTIONS, ZPlus()), *_common(epsilon)], name=name)
    if name == "epsilon_plus_flat":
        return Composite([(CONVOLUTIONS, ZPlus()), *_common(epsilon)], first=Flat(), name=name)
    if name == "epsilon_gamma_box":
        return Composite(
            [(CONVOLUTIONS, Gamma(gamma)), *_common(epsilon)], first=ZBox(low, high), name=name
        )
    if name == "epsilon_alpha2_beta1":
        return Composite([(CONVOLUTIONS, AlphaBeta(2.0, 1.0)), *_common(epsilon)], name=name)
    raise SaliencelabError(
        f"lrp: unknown composite {name!r}.{closest(str(name), PRESETS)} Use one of "
        f"{', '.join(PRESETS)}, or a Composite."
    )


PRESETS = (
    "epsilon",
    "epsilon_plus",
    "epsilon_plus_flat",
    "epsilon_gamma_box",
    "epsilon_alpha2_beta1",
)
