"""The peers — Captum and pytorch-grad-cam — called as their documentation shows.

Each peer runs on the same `nn.Module` (eval mode, parameters as loaded, i.e. requiring grad,
as a user would have them), the same inputs and the same explicit targets as saliencelab.
Inputs are cloned per call because Captum sets `requires_grad` on the tensors it is given.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

NOT_INSTALLED = "not installed"


def captum_version() -> str | None:
    try:
        import captum
    except ImportError:
        return None
    return captum.__version__


# -- pytorch-grad-cam --------------------------------------------------------------------------


def _stub_torchvision() -> list[str]:
    """Put a minimal stand-in `torchvision` into `sys.modules`; return the names added.

    pytorch-grad-cam 1.5.7 imports torchvision at package import time (`utils/image.py`:
    transforms for its `preprocess_image` helper; `utils/model_targets.py`: `ops.box_iou` for
    detection targets; `sess.py`: `resize`), but none of it is used by `GradCAM` on a classifier.
    `make bench` installs grad-cam with `--no-deps` because torchvision's wheel would pull a
    multi-GB CUDA build of torch. The stub is used only here, only when torchvision is missing,
    and is removed from `sys.modules` again right after the import; calling any stubbed function
    raises.
    """

    def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("torchvision is stubbed out in the benchmark; install torchvision")

    def module(name: str, package: bool = False, **attrs: Any) -> types.ModuleType:
        m = types.ModuleType(name)
        m.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=package)
        if package:
            m.__path__ = []
        m.__dict__.update(attrs)
        return m

    functional = module("torchvision.transforms.functional", resize=unavailable)
    transforms = module(
        "torchvision.transforms",
        package=True,
        Compose=unavailable,
        Normalize=unavailable,
        ToTensor=unavailable,
        functional=functional,
    )
    ops = module("torchvision.ops", box_iou=unavailable)
    tv = module("torchvision", package=True, transforms=transforms, ops=ops)
    added = {m.__name__: m for m in (tv, transforms, functional, ops)}
    sys.modules.update(added)
    return list(added)


def import_grad_cam() -> tuple[Any, str]:
    """(pytorch_grad_cam module or None, a note: its version, or why it is missing)."""
    if importlib.util.find_spec("pytorch_grad_cam") is None:
        return None, NOT_INSTALLED
    stubbed: list[str] = []
    if importlib.util.find_spec("torchvision") is None:
        stubbed = _stub_torchvision()
    try:
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: F401
    except ImportError as e:  # e.g. cv2 / ttach missing: `make bench` installs them
        return None, f"{NOT_INSTALLED} ({e})"
    finally:
        for name in stubbed:
            sys.modules.pop(name, None)
    try:
        from importlib.metadata import version

        note = version("grad-cam")
    except Exception:  # noqa: BLE001
        note = "unknown version"
    if stubbed:
        note += " (torchvision stubbed: not installed)"
    return pytorch_grad_cam, note


# -- callables ---------------------------------------------------------------------------------


def captum_saliency(module: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> Callable:
    from captum.attr import Saliency

    sal = Saliency(module)
    return lambda: sal.attribute(x.clone(), target=targets, abs=True).detach()


def captum_ig(
    module: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    n_steps: int,
    internal_batch_size: int | None,
) -> Callable:
    from captum.attr import IntegratedGradients

    ig = IntegratedGradients(module)
    return lambda: ig.attribute(
        x.clone(),
        target=targets,
        n_steps=n_steps,
        method="gausslegendre",
        internal_batch_size=internal_batch_size,
    ).detach()


def captum_smoothgrad(
    module: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    n_samples: int,
    stdev: float,
    absolute: bool,
    nt_samples_batch_size: int | None,
) -> Callable:
    from captum.attr import NoiseTunnel, Saliency

    nt = NoiseTunnel(Saliency(module))
    return lambda: nt.attribute(
        x.clone(),
        nt_type="smoothgrad",
        nt_samples=n_samples,
        nt_samples_batch_size=nt_samples_batch_size,
        stdevs=float(stdev),
        target=targets,
        abs=absolute,
    ).detach()


@contextmanager
def captum_fixed_noise(noisy: torch.Tensor) -> Iterator[None]:
    """Make Captum's NoiseTunnel use the given noisy inputs (rows sample-major, as Captum's
    `repeat_interleave` lays them out) instead of drawing its own noise."""
    from captum.attr import NoiseTunnel

    original = NoiseTunnel.__dict__["_add_noise_to_input"]

    def given(inp: torch.Tensor, stdev: float, n: int) -> torch.Tensor:
        if noisy.shape[0] != inp.shape[0] * n:
            raise ValueError(f"recorded {noisy.shape[0]} noisy rows, Captum wants {len(inp) * n}")
        return noisy.clone()

    NoiseTunnel._add_noise_to_input = staticmethod(given)
    try:
        yield
    finally:
        NoiseTunnel._add_noise_to_input = original


def captum_layer_gradcam(
    module: nn.Module, layer: nn.Module, x: torch.Tensor, targets: torch.Tensor
) -> Callable:
    from captum.attr import LayerAttribution, LayerGradCam

    cam = LayerGradCam(module, layer)
    size = tuple(x.shape[-2:])

    def run() -> torch.Tensor:
        a = cam.attribute(x.clone(), target=targets, relu_attributions=True)
        return LayerAttribution.interpolate(a, size, "bilinear").detach()[:, 0]

    return run


def grad_cam_gradcam(
    pgc: Any, module: nn.Module, layer: nn.Module, x: torch.Tensor, targets: torch.Tensor
) -> Callable:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    def run() -> Any:
        # Built per call, as in its README: the object keeps hooks on the layer until released,
        # which would otherwise also slow down the other contenders.
        with pgc.GradCAM(model=module, target_layers=[layer]) as cam:
            out = cam(
                input_tensor=x.clone(),
                targets=[ClassifierOutputTarget(int(t)) for t in targets],
            )
        module.zero_grad(set_to_none=True)  # it calls loss.backward(): drop the weight grads
        return out

    return run
