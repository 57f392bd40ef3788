"""Finding the layer a layer method (the CAM family, channel maps) works on."""

from __future__ import annotations

import logging

import torch
from torch import nn

from .backward import compiled_kind
from .errors import SaliencelabError, closest
from .state import Hooks, eval_mode

log = logging.getLogger("saliencelab")

LayerSpec = str | nn.Module | None

# Worded as `saliencelab layers` words it for a compiled model (cli.py).
SCRIPT_LAYERS = (
    "A TorchScript model runs as one compiled graph, so layer methods (CAMs, layer targets) "
    "cannot hook its layers; load the Python model from 'file.py:build' (or a torch.export .pt2 "
    "file) to use them, or use a method without layers such as saliency."
)


FLAT_EXPORT_LAYERS = (
    "A torch.export program's module() is one flat graph of operators, so layer methods (CAMs, "
    "layer targets) find no layers to hook; load the .pt2 file with sl.load_model (which "
    "unflattens it) or pass torch.export.unflatten(program), or use a method without layers "
    "such as saliency."
)


def refuse_unhookable(module: nn.Module) -> None:
    """One sentence instead of PyTorch's `register_forward_hook is not supported on
    ScriptModules` for a layer (or model) that is TorchScript, and instead of "no spatial
    layer" / "layer not reached" for a flat torch.export graph (`ExportedProgram.module()`),
    whose submodules only hold weights (the graph calls operators, never them)."""
    if isinstance(module, torch.jit.ScriptModule):
        raise SaliencelabError(SCRIPT_LAYERS)
    if isinstance(module, torch.fx.GraphModule) and compiled_kind(module) == "torch.export":
        raise SaliencelabError(FLAT_EXPORT_LAYERS)


def module_name(root: nn.Module, layer: nn.Module) -> str:
    refuse_unhookable(root)
    refuse_unhookable(layer)
    for name, m in root.named_modules():
        if m is layer:
            return name or "(model)"
    raise SaliencelabError(
        f"The layer {type(layer).__name__} is not part of the model; pass a submodule of the "
        "model or its dotted name."
    )


def get_layer(root: nn.Module, name: str) -> nn.Module:
    """The submodule at a dotted name; an unknown name fails with the closest names suggested,
    an empty one (which `get_submodule` reads as the whole model) with one sentence."""
    refuse_unhookable(root)
    if not name.strip():
        examples = [n for n, _ in root.named_modules() if n][:3]
        example = f" such as {', '.join(map(repr, examples))}" if examples else ""
        raise SaliencelabError(
            f"The layer name is empty ({name!r}); give a layer's dotted name{example} (run "
            "`saliencelab layers MODEL` or list `model.named_modules()` to see them)."
        )
    try:
        return root.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in root.named_modules() if n]
        hint = closest(name, names)
        if not hint and names and len(names) <= 20:  # a small model: all its layers
            hint = f" Its layers: {', '.join(names)}."
        raise SaliencelabError(
            f"The model has no layer named {name!r}.{hint} "
            "Run `saliencelab layers MODEL` or list `model.named_modules()` to see the names."
        ) from None


def find_spatial_layer(root: nn.Module, x: torch.Tensor) -> str:
    """The last layer to produce a spatial output (B, C, h, w) with h*w > 1, by one forward.

    That is the layer just before global pooling in a CNN: where Grad-CAM is usually computed.
    Among modules producing the same final tensor (a block and its last activation), the outer
    one wins, so the name is the readable one. A module that runs more than once (shared or
    weight-tied) has no single output, and is passed over.
    """
    refuse_unhookable(root)
    order: list[tuple[str, torch.Tensor]] = []  # tensors kept alive: ids are not reused
    calls: dict[str, int] = {}
    with Hooks() as hooks, eval_mode(root), torch.inference_mode():
        for name, m in root.named_modules():
            if not name:
                continue

            def record(mod, inputs, out, name=name):
                calls[name] = calls.get(name, 0) + 1
                if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[-2:].numel() > 1:
                    order.append((name, out))

            hooks.add(m.register_forward_hook(record))
        root(x[:1].clone())  # (a copy: a model may change its input)
    order = [(name, out) for name, out in order if calls[name] == 1]
    if not order:
        raise SaliencelabError(
            "The model has no layer with a spatial (B, C, H, W) output, which CAM methods need; "
            "use a gradient method such as saliency or integrated_gradients instead."
        )
    return order[-1][0]  # an outer block fires after its last layer, with the same tensor


def resolve_layer(root: nn.Module, layer: LayerSpec, x: torch.Tensor, default: str | None = None):
    """(name, module) of a layer given as a module, a dotted name, or None (found by a probe)."""
    if isinstance(layer, nn.Module):
        return module_name(root, layer), layer
    if isinstance(layer, str):
        return layer, get_layer(root, layer)
    if layer is None:
        name = default or find_spatial_layer(root, x)
        log.info("using layer %s", name)
        return name, get_layer(root, name)
    raise SaliencelabError(
        f"A layer must be a module, a dotted name or None, not {type(layer).__name__}."
    )
