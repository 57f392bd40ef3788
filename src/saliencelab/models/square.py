"""Square-crop preprocessing: the largest central square of an image, resized, then normalised.

Used by the bundled EfficientNet-Lite0 (224 x 224, x = (pixel - 127) / 128) and by the CLI's
`--input-size N --normalize ...` for models that bring no preprocessing (x = (pixel / 255 -
mean) / std per channel).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..core.errors import SaliencelabError
from ..data.images import as_rgb_image

Stat = float | Sequence[float]


class SquarePreprocess:
    """Images → float32 (B, 3, H, W): the largest central square, resized to `size` (bilinear;
    PIL widens the filter when shrinking, so downscaling is antialiased), then
    x = (pixel / divisor − mean) / std (`mean`, `std`: one number or one per RGB channel; None:
    no normalisation).

    `display(image)` is the image as the model sees it (for overlays); `normalize(x)` the last
    step alone, on values already divided (feature visualization optimises images in that
    range).
    """

    def __init__(
        self,
        size: int | tuple[int, int],
        mean: Stat | None = None,
        std: Stat | None = None,
        divisor: float = 1.0,
    ) -> None:
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.mean, self.std, self.divisor = mean, std, divisor

    def display(self, image: Any) -> Image.Image:
        # any mode to 8-bit RGB as `sl.load_image` reads files: 16-bit and float grayscale
        # stretched (a plain convert made them white), transparency composited on white
        pil = as_rgb_image(image, "to preprocess")
        w, h = pil.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        square = pil.crop((left, top, left + side, top + side))  # crop first: no outside pixels
        return square.resize(self.size[::-1], Image.Resampling.BILINEAR)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(x − mean) / std per channel, on x's device (identity without mean and std)."""
        if self.mean is None or self.std is None:
            return x
        if isinstance(self.mean, (int, float)) and isinstance(self.std, (int, float)):
            return (x - self.mean) / self.std
        mean, std = (x.new_tensor(v).view(1, -1, 1, 1) for v in (self.mean, self.std))
        return (x - mean) / std

    def __call__(self, images: Any) -> torch.Tensor:
        batch = list(images) if isinstance(images, (list, tuple)) else [images]
        if not batch:
            raise SaliencelabError("Got an empty list of images; pass at least one image.")
        arrays = [np.asarray(self.display(im), dtype=np.float32) for im in batch]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
        if self.divisor != 1.0:
            x = x / self.divisor
        return self.normalize(x).contiguous()
