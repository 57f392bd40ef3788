"""Signed maps (integrated gradients, input x gradient, guided backprop) over a photo: sparse,
weak evidence stays visible (hue = sign, opacity from |value|, photo in dimmed gray)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from saliencelab.viz.overlay import overlay


def test_weak_signed_evidence_is_clearly_coloured_and_the_photo_is_gray():
    photo = Image.new("RGB", (20, 20), (200, 150, 60))  # a warm, colourful photo
    m = torch.zeros(20, 20)
    m[0, 0], m[0, 1] = 1.0, -1.0  # the strongest evidence sets the scale
    m[10, 10], m[10, 12] = 0.1, -0.1  # weak evidence: a tenth of it
    out = np.asarray(overlay(photo, m, clip_percentile=None)).astype(int)
    weak_pos, weak_neg, empty = out[10, 10], out[10, 12], out[5, 5]
    assert weak_pos[0] - weak_pos[2] > 15 and weak_pos[0] > weak_pos[1]  # reddish on gray
    assert weak_neg[2] - weak_neg[0] > 15  # bluish on gray
    assert empty[0] == empty[1] == empty[2]  # no evidence: the photo in gray
    assert empty[0] < 0.8 * (0.299 * 200 + 0.587 * 150 + 0.114 * 60)  # ... dimmed


def test_unsigned_maps_keep_the_photo_in_colour():
    photo = Image.new("RGB", (8, 8), (200, 150, 60))
    m = torch.zeros(8, 8)
    m[0, 0] = 1.0
    out = np.asarray(overlay(photo, m, clip_percentile=None))
    assert tuple(out[5, 5]) == (200, 150, 60)
