"""Bounding boxes to (B, H, W) bool masks, for the localisation metrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from ...core.errors import SaliencelabError


def boxes_to_masks(
    boxes: torch.Tensor | Sequence[torch.Tensor | Sequence[Sequence[float]]],
    size: int | tuple[int, int],
    format: Literal["xyxy", "xywh"] = "xyxy",
) -> torch.Tensor:
    """(B, H, W) bool masks, True inside any of each image's boxes.

    `boxes` is a (B, 4) tensor (one box per image), a (B, K, 4) tensor, or a list of B
    (K_i, 4) boxes (several boxes per image, united; an image with no box gets an empty mask).
    Coordinates are in pixels, `"xyxy"` = (x0, y0, x1, y1) or `"xywh"` = (x0, y0, width, height),
    with x along the width; pixel (row i, column j) covers [j, j+1) × [i, i+1) and is inside a
    box when its centre (j + 0.5, i + 0.5) is, so integer boxes include x0..x1-1 (end
    exclusive, like torchvision). `size` is (H, W) or an int for square maps.
    """
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if isinstance(boxes, torch.Tensor):
        b = boxes.double()
        if b.dim() == 2:
            b = b[:, None]
    else:
        try:
            parts = [torch.as_tensor(x, dtype=torch.double) for x in boxes]
        except (TypeError, ValueError, RuntimeError):
            raise SaliencelabError(
                "Boxes must be (B, 4), (B, K, 4) or a list of (K, 4) numbers per image."
            ) from None
        if any(p.dim() == 0 for p in parts):
            raise SaliencelabError(
                "Boxes must be (B, 4), (B, K, 4) or a list of (K, 4) numbers per image, not a "
                "flat list of numbers; give one image's box as [[x0, y0, x1, y1]]."
            )
        for p in parts:
            if p.numel() and p.shape[-1] != 4:
                raise SaliencelabError(
                    f"A box has {p.shape[-1]} numbers, got shape {tuple(p.shape)}; each box is 4 "
                    "(x0, y0, x1, y1 for xyxy, or x0, y0, width, height for xywh)."
                )
        parts = [p.reshape(-1, 4) for p in parts]
        if not parts:
            raise SaliencelabError("No boxes given; give one (K, 4) tensor of boxes per image.")
        k = max(p.shape[0] for p in parts)
        b = torch.zeros((len(parts), max(k, 1), 4), dtype=torch.double)  # padding: empty boxes
        for i, p in enumerate(parts):
            b[i, : p.shape[0]] = p
    if b.dim() != 3 or b.shape[-1] != 4:
        raise SaliencelabError(
            f"Boxes must be (B, 4), (B, K, 4) or a list of (K, 4), got shape {tuple(b.shape)}."
        )
    x0, y0, x1, y1 = b.unbind(-1)  # (B, K)
    if format == "xywh":
        x1, y1 = x0 + x1, y0 + y1
    elif format != "xyxy":
        raise SaliencelabError(f"Unknown box format {format!r}; use 'xyxy' or 'xywh'.")
    if bool(((x1 < x0) | (y1 < y0)).any()):
        raise SaliencelabError(
            f"Some boxes end before they start; give {format} boxes with x1 ≥ x0 and y1 ≥ y0."
        )
    cy = torch.arange(h, dtype=torch.double, device=b.device) + 0.5
    cx = torch.arange(w, dtype=torch.double, device=b.device) + 0.5
    in_y = (cy >= y0[..., None]) & (cy <= y1[..., None])  # (B, K, H)
    in_x = (cx >= x0[..., None]) & (cx <= x1[..., None])  # (B, K, W)
    return (in_y[..., :, None] & in_x[..., None, :]).any(1)
