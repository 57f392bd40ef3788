"""The mean amplitude spectrum of natural photographs, for MACO's fixed Fourier magnitude.

Estimated once from the colour photographs that ship with scikit-image (no download) and stored
in `saliencelab/data/natural_spectrum.json`; rebuild it with
`python -m saliencelab.featurevis.spectrum`.

Estimate (:func:`estimate`): each photo in [0, 1] is taken to decorrelated colour,
z = M⁻¹ rgb with M = :func:`~saliencelab.featurevis.param.color_sqrt` (MACO's images are built in
that space, then mixed by M). Square crops of several sizes at seeded random places have their
per-channel mean removed and a 2-D Hann window applied; the amplitude |rfft2(z·w)| / ‖w‖₂ is
divided by its mean over the band 1/32 ≤ |f| ≤ 1/8 cycles/pixel (which every crop size covers), so
each crop weighs the same. Amplitudes are averaged in bins of log radial frequency and orientation
(0° = horizontal frequencies, 90° = vertical; the spectrum of a real image is symmetric, and
photos are averaged with their mirror images, so one quadrant is enough) and stored as
ln(mean amplitude), with each channel's power-law slope α (|F| ∝ f^-α) fitted over all bins.

:func:`natural_magnitude` reads the table at any image size: bilinear in (ln f, angle), the power
law below the lowest bin, the last value above the highest; the DC term is 0 (MACO standardises
every channel anyway, so only the shape of the spectrum matters).
"""

from __future__ import annotations

import json
import math
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import SaliencelabError

#: The natural colour photographs among scikit-image's bundled data (microscopy, astronomy,
#: retina and synthetic images left out).
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle")
CROP_SIZES = (64, 96, 128, 192, 256)
CROPS_PER_PHOTO = 40
RADIUS_BINS = 20
ANGLE_BINS = 7
F_MIN, F_MAX = 1.0 / 256.0, math.sqrt(0.5)
REFERENCE_BAND = (1.0 / 32.0, 1.0 / 8.0)
FILE = "natural_spectrum.json"


def _photo(name: str) -> np.ndarray:
    import skimage.data

    arr = (
        skimage.data.stereo_motorcycle()[0]
        if name == "motorcycle"
        else getattr(skimage.data, name)()
    )
    return np.asarray(arr, dtype=np.float64)[..., :3] / 255.0


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(ln |f|, angle in degrees) of the rfft2 grid of a size x size image (DC: -inf, 0)."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    with np.errstate(divide="ignore"):
        log_f = np.log(np.sqrt(fy**2 + fx**2))
    angle = np.degrees(np.arctan2(np.abs(fy), fx))
    return log_f, angle


def estimate(crops_per_photo: int = CROPS_PER_PHOTO, seed: int = 0) -> dict[str, Any]:
    """Estimate the binned spectrum from :data:`PHOTOS` (see the module docstring)."""
    from .param import color_sqrt

    m_inv = np.linalg.inv(color_sqrt().double().numpy())
    log_edges = np.linspace(math.log(F_MIN), math.log(F_MAX), RADIUS_BINS + 1)
    log_centers = (log_edges[:-1] + log_edges[1:]) / 2
    angle_centers = np.linspace(0.0, 90.0, ANGLE_BINS)
    sums = np.zeros((3, RADIUS_BINS, ANGLE_BINS))
    counts = np.zeros((RADIUS_BINS, ANGLE_BINS))
    rng = np.random.default_rng(seed)
    for name in PHOTOS:
        rgb = _photo(name)
        z = np.einsum("ij,hwj->ihw", m_inv, rgb)
        for mirror in (False, True):
            img = z[:, :, ::-1] if mirror else z
            h, w = img.shape[1:]
            sizes = [s for s in CROP_SIZES if s <= min(h, w)]
            for _ in range(crops_per_photo):
                s = int(rng.choice(sizes))
                top, left = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
                patch = img[:, top : top + s, left : left + s]
                patch = patch - patch.mean(axis=(1, 2), keepdims=True)
                window = np.outer(np.hanning(s), np.hanning(s))
                amp = np.abs(np.fft.rfft2(patch * window)) / np.sqrt((window**2).sum())
                log_f, angle = _grid(s)
                band = (log_f >= math.log(REFERENCE_BAND[0])) & (
                    log_f <= math.log(REFERENCE_BAND[1])
                )
                amp = amp / amp[:, band].mean(axis=1)[:, None, None]
                r = np.digitize(log_f, log_edges) - 1
                t = np.rint(angle / (90.0 / (ANGLE_BINS - 1))).astype(int)
                keep = (r >= 0) & (r < RADIUS_BINS)
                np.add.at(counts, (r[keep], t[keep]), 1.0)
                for c in range(3):
                    np.add.at(sums[c], (r[keep], t[keep]), amp[c][keep])
    mean = sums / np.maximum(counts, 1.0)
    log_mag = np.log(np.where(counts > 0, mean, np.nan))
    # Bins no frequency fell in (low radii at odd angles): interpolate along the angle.
    for c in range(3):
        for i in range(RADIUS_BINS):
            row = log_mag[c, i]
            ok = np.isfinite(row)
            log_mag[c, i] = np.interp(angle_centers, angle_centers[ok], row[ok])
    # Power-law slope per channel: least squares of ln|F| on ln f over all bins.
    x = np.repeat(log_centers, ANGLE_BINS)
    slope = [float(-np.polyfit(x, log_mag[c].reshape(-1), 1)[0]) for c in range(3)]
    return {
        "about": "Mean amplitude spectrum of natural photographs in decorrelated colour "
        "(saliencelab.featurevis.spectrum); ln(mean |F|) per channel, radius bin and "
        "orientation bin, normalised per crop to mean 1 over 1/32..1/8 cycles/pixel.",
        "photos": [f"skimage.data.{p}" for p in PHOTOS],
        "crop_sizes": list(CROP_SIZES),
        "crops_per_photo": crops_per_photo,
        "mirrored": True,
        "seed": seed,
        "log_radius": [round(float(v), 5) for v in log_centers],
        "angle_degrees": [float(a) for a in angle_centers],
        "log_magnitude": np.round(log_mag, 4).tolist(),
        "slope": [round(s, 4) for s in slope],
    }


def write(path: str | Path | None = None, **kw: Any) -> Path:
    """Estimate and write the JSON table (default: the packaged data file)."""
    if path is None:
        path = Path(__file__).resolve().parent.parent / "data" / FILE
    path = Path(path)
    path.write_text(json.dumps(estimate(**kw), indent=1) + "\n", encoding="utf-8")
    return path


@cache
def load() -> dict[str, Any]:
    """The packaged table (see :func:`estimate`)."""
    try:
        text = resources.files("saliencelab.data").joinpath(FILE).read_text(encoding="utf-8")
    except FileNotFoundError:  # pragma: no cover - a broken install
        raise SaliencelabError(
            f"The data file {FILE} is missing from saliencelab; reinstall the package or run "
            "`python -m saliencelab.featurevis.spectrum` to rebuild it."
        ) from None
    return json.loads(text)


def magnitude_from_table(table: dict[str, Any], h: int, w: int) -> torch.Tensor:
    """The amplitude (3, H, W//2+1) on the rfft2 grid of an HxW image, read from `table`."""
    log_centers = torch.tensor(table["log_radius"], dtype=torch.float64)
    angles = torch.tensor(table["angle_degrees"], dtype=torch.float64)
    log_mag = torch.tensor(table["log_magnitude"], dtype=torch.float64)  # (3, R, T)
    slope = torch.tensor(table["slope"], dtype=torch.float64)
    fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(w, dtype=torch.float64)[None, :]
    f = (fy**2 + fx**2).sqrt()
    log_f = f.clamp(min=1e-12).log()
    angle = torch.rad2deg(torch.atan2(fy.abs(), fx.expand_as(f)))
    step_r = float(log_centers[1] - log_centers[0])
    step_t = float(angles[1] - angles[0])
    pos_r = ((log_f - log_centers[0]) / step_r).clamp(0, len(log_centers) - 1)
    pos_t = ((angle - angles[0]) / step_t).clamp(0, len(angles) - 1)
    r0 = pos_r.floor().long().clamp(max=len(log_centers) - 2)
    t0 = pos_t.floor().long().clamp(max=len(angles) - 2)
    ar, at = pos_r - r0, pos_t - t0
    v = (
        log_mag[:, r0, t0] * (1 - ar) * (1 - at)
        + log_mag[:, r0 + 1, t0] * ar * (1 - at)
        + log_mag[:, r0, t0 + 1] * (1 - ar) * at
        + log_mag[:, r0 + 1, t0 + 1] * ar * at
    )
    below = log_f < log_centers[0]
    v = torch.where(below, v - slope[:, None, None] * (log_f - log_centers[0]), v)
    mag = v.exp()
    mag[:, 0, 0] = 0.0
    return mag.float()


@lru_cache(maxsize=16)
def _magnitude(h: int, w: int) -> torch.Tensor:
    return magnitude_from_table(load(), h, w)


def natural_magnitude(h: int, w: int) -> torch.Tensor:
    """The natural-image amplitude spectrum (3, H, W//2+1) for HxW images (a new tensor)."""
    return _magnitude(int(h), int(w)).clone()


if __name__ == "__main__":  # pragma: no cover
    print(write())
