"""Image parameterizations: learnable parameters -> images (N, 3, H, W) with values in [0, 1].

What is optimised changes which images are easy to reach (Olah et al., "Feature Visualization",
Distill 2017, section "Preconditioning and Parameterization"):

- :class:`PixelParam` — the pixels themselves (optionally in decorrelated colour);
- :class:`FourierParam` — the 2-D Fourier spectrum, scaled by 1/f^decay so that every frequency
  moves about as fast under gradient descent as natural images vary at it (Lucid's "fft" image);
- :class:`MacoParam` — MACO (Fel et al., "Unlocking Feature Visualization for Deeper Networks with
  MAgnitude-Constrained Optimization", NeurIPS 2023): only the Fourier *phase* is optimised; the
  magnitude stays fixed to the mean spectrum of natural images (:mod:`.spectrum`).

Colour: with `decorrelate=True` the three parameter channels are mixed by the square root of the
ImageNet RGB covariance (:func:`color_sqrt`), so independent parameter channels give pixels whose
colours correlate like those of natural images. The result is mapped into [0, 1] by a sigmoid, or
by clipping with gradients that may push values back into range (:func:`to_valid`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..core.errors import SaliencelabError

Size = int | Sequence[int]

#: Eigen-decomposition of the RGB covariance of ImageNet training pixels (values in [0, 1]), from
#: the PCA colour augmentation of AlexNet (Krizhevsky, Sutskever & Hinton, NeurIPS 2012, section
#: 4.1), as published with fb.resnet.torch (`datasets/imagenet.lua`, "Lighting"). Columns of
#: `IMAGENET_EIGVEC` are the eigenvectors (R, G, B components), `IMAGENET_EIGVAL` their variances.
#: Lucid's `color_correlation_svd_sqrt` is V·sqrt(Λ) of these same numbers (rounded); ours
#: (:func:`color_sqrt`) is the symmetric root V·sqrt(Λ)·Vᵀ, another square root of the same Σ.
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)

VALID = ("sigmoid", "clip")


def imagenet_covariance() -> torch.Tensor:
    """Σ = V diag(λ) Vᵀ, the 3x3 ImageNet RGB covariance (float64), from the published pairs."""
    v = torch.tensor(IMAGENET_EIGVEC, dtype=torch.float64)
    v = v / v.norm(dim=0, keepdim=True)  # the published vectors are rounded to 4 digits
    return v @ torch.diag(torch.tensor(IMAGENET_EIGVAL, dtype=torch.float64)) @ v.T


def color_sqrt(normalize: bool = True) -> torch.Tensor:
    """The symmetric square root of the ImageNet colour covariance, M = V diag(√λ) Vᵀ (float32).

    M Mᵀ = Σ, so if z has independent unit-variance channels, M z has the colour covariance of
    ImageNet pixels. With `normalize`, M is divided by its largest column norm, max_j √Σ_jj
    (Lucid divides its V·√Λ by its largest column norm too): unit-variance z then gives RGB
    channels of standard deviation 0.98, 0.95 and 1, and the eigen-directions (luminance, then
    two colour-opponent ones) gains √λᵢ / max_j √Σ_jj ≈ 1.61, 0.47 and 0.23, in Lucid's
    proportions √(λᵢ/λ₁) ≈ 1 : 0.29 : 0.14 but not its scale (Lucid's luminance gain is 1, its
    columns being the scaled eigenvectors). The defaults (`contrast`, learning rates) are tuned
    to this scale.
    """
    v = torch.tensor(IMAGENET_EIGVEC, dtype=torch.float64)
    v = v / v.norm(dim=0, keepdim=True)
    m = v @ torch.diag(torch.tensor(IMAGENET_EIGVAL, dtype=torch.float64).sqrt()) @ v.T
    if normalize:
        m = m / m.norm(dim=0).max()
    return m.float()


def decorrelated_to_rgb(t: torch.Tensor) -> torch.Tensor:
    """Mix the channels of (N, 3, H, W) `t` by :func:`color_sqrt`: rgb[:, i] = Σ_j M_ij t[:, j]."""
    m = color_sqrt().to(device=t.device, dtype=t.dtype)
    return torch.einsum("ij,njhw->nihw", m, t)


class _ClipInward(torch.autograd.Function):
    """clamp(x, 0, 1) forward; backward passes a gradient where x is inside [0, 1], or outside it
    when a descent step (x - lr·g) moves x back towards the range (Lucid's `constrain_L_inf`)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        ctx.save_for_backward(x)
        return x.clamp(0.0, 1.0)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:  # noqa: D102
        (x,) = ctx.saved_tensors
        inward = ((x >= 0) & (x <= 1)) | ((x > 1) & (g > 0)) | ((x < 0) & (g < 0))
        return g * inward


def to_valid(t: torch.Tensor, valid: str = "sigmoid") -> torch.Tensor:
    """Map unconstrained values into [0, 1]: sigmoid(t), or clip(t + 0.5) with inward gradients."""
    if valid == "sigmoid":
        return torch.sigmoid(t)
    if valid == "clip":
        return _ClipInward.apply(t + 0.5)
    raise SaliencelabError(f"valid must be one of {', '.join(VALID)}, not {valid!r}.")


def image_size(size: Size, minimum: int = 8) -> tuple[int, int]:
    """(H, W) from an int or a pair; each must be at least `minimum` pixels."""
    if isinstance(size, bool):
        raise SaliencelabError(f"size must be an int or (height, width), not {size!r}.")
    if isinstance(size, int):
        size = (size, size)
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise SaliencelabError(
            f"size must be an int or (height, width), not {size!r}; use e.g. 224."
        ) from None
    if h < minimum or w < minimum:
        raise SaliencelabError(
            f"The image size must be at least {minimum}x{minimum} pixels, got {h}x{w}."
        )
    return h, w


def _generator(seed: int | torch.Generator | None) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    g = torch.Generator()
    g.manual_seed(0 if seed is None else int(seed))
    return g


def frequencies(h: int, w: int) -> torch.Tensor:
    """|f| = √(fy² + fx²) in cycles per pixel for the `rfft2` grid of an HxW image: (H, W//2+1)."""
    fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(w, dtype=torch.float64)[None, :]
    return (fy**2 + fx**2).sqrt()


def fourier_scale(h: int, w: int, decay: float = 1.0) -> torch.Tensor:
    """s(f) = 1 / max(f, 1/max(H, W))^decay, normalised so white coefficients keep their variance.

    With `torch.fft.irfft2(..., norm="ortho")` and independent coefficients c = a + ib
    (a, b ~ N(0, σ²)), pixel variance = (σ²/HW)·Σ_k w_k s_k² over the half plane, where w_k = 4
    for columns 0 < fx < 1/2 (each stands for two full-plane frequencies of variance 2σ²s²) and
    w_k = 1 for the columns fx = 0 and fx = 1/2 (irfft2 keeps only their Hermitian part, which
    halves the variance). Dividing s by √(Σ w s² / HW) makes the pixel variance σ² at any size
    or decay.
    """
    f = frequencies(h, w)
    s = 1.0 / f.clamp(min=1.0 / max(h, w)) ** decay
    weight = torch.full_like(s, 4.0)
    weight[:, 0] = 1.0
    if w % 2 == 0:
        weight[:, -1] = 1.0
    return (s / ((weight * s**2).sum() / (h * w)).sqrt()).float()


class ImageParam(nn.Module):
    """Base class: `forward()` returns the current images (N, 3, H, W) in [0, 1].

    Subclasses keep their learnable tensors as `nn.Parameter`s, so `param.parameters()` is what
    the optimiser updates.
    """

    batch: int
    size: tuple[int, int]

    def forward(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class PixelParam(ImageParam):
    """Pixels: x = valid(t), or valid(M t) with decorrelated colour; t ~ N(0, sd²) at the start."""

    def __init__(
        self,
        batch: int,
        size: Size,
        decorrelate: bool = False,
        valid: str = "sigmoid",
        sd: float = 0.01,
        seed: int | torch.Generator | None = 0,
    ) -> None:
        super().__init__()
        self.batch, self.size = int(batch), image_size(size)
        self.decorrelate, self.valid = decorrelate, valid
        to_valid(torch.zeros(1), valid)  # validate the name now
        g = _generator(seed)
        pixels = [
            torch.randn(3, *self.size, generator=g, dtype=torch.float32) for _ in range(self.batch)
        ]
        self.pixels = nn.Parameter(torch.stack(pixels) * sd)  # image i: the i-th draw

    def forward(self) -> torch.Tensor:
        t = self.pixels
        if self.decorrelate:
            t = decorrelated_to_rgb(t)
        return to_valid(t, self.valid)


class FourierParam(ImageParam):
    """Fourier: t = irfft2(s(f) ⊙ (a + ib)) with s(f) ∝ 1/f^decay (:func:`fourier_scale`).

    Natural images have an amplitude spectrum falling roughly as 1/f, so scaling the coefficients
    by 1/f^decay makes a gradient step change low and high frequencies in those proportions
    instead of favouring high-frequency noise (Olah et al. 2017; Lucid's `fft_image`). The image
    is periodic (what wraps around one edge continues at the other). `decorrelate` mixes colours
    by :func:`color_sqrt` before `valid` maps into [0, 1]. `spectrum` is (N, 2, 3, H, W//2+1),
    real and imaginary parts; image i's are the i-th draw of the seeded generator, so an image
    does not depend on the batch size.
    """

    def __init__(
        self,
        batch: int,
        size: Size,
        decay: float = 1.0,
        decorrelate: bool = True,
        valid: str = "sigmoid",
        sd: float = 0.01,
        seed: int | torch.Generator | None = 0,
    ) -> None:
        super().__init__()
        self.batch, self.size = int(batch), image_size(size)
        self.decay, self.decorrelate, self.valid = float(decay), decorrelate, valid
        to_valid(torch.zeros(1), valid)
        h, w = self.size
        g = _generator(seed)
        spectra = [
            torch.randn(2, 3, h, w // 2 + 1, generator=g, dtype=torch.float32)
            for _ in range(self.batch)
        ]
        self.spectrum = nn.Parameter(torch.stack(spectra) * sd)
        self.register_buffer("scale", fourier_scale(h, w, self.decay), persistent=False)

    def spatial(self) -> torch.Tensor:
        """The unconstrained image t (N, 3, H, W) before colour mixing and `valid`."""
        c = torch.complex(self.spectrum[:, 0], self.spectrum[:, 1]) * self.scale
        return torch.fft.irfft2(c, s=self.size, norm="ortho")

    def forward(self) -> torch.Tensor:
        t = self.spatial()
        if self.decorrelate:
            t = decorrelated_to_rgb(t)
        return to_valid(t, self.valid)


def standardize(t: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Each channel of each image to zero mean and unit variance over its pixels."""
    mean = t.mean(dim=(-2, -1), keepdim=True)
    std = t.std(dim=(-2, -1), keepdim=True, unbiased=False)
    return (t - mean) / (std + eps)


def edge_columns(h: int, w: int) -> torch.Tensor:
    """True on the `rfft2` columns of which irfft2 keeps only the Hermitian part: (H, W//2+1).

    These are the column fx = 0 and, for even W, the Nyquist column fx = W/2: a real image has
    F(-ky, fx) = conj(F(ky, fx)) there, and irfft2 keeps (c(ky) + conj(c(-ky)))/2 of any other
    column values given to it.
    """
    edges = torch.zeros(h, w // 2 + 1, dtype=torch.bool)
    edges[:, 0] = True
    if w % 2 == 0:
        edges[:, -1] = True
    return edges


def mirror_rows(t: torch.Tensor) -> torch.Tensor:
    """t at the opposite vertical frequency: out[..., ky, :] = t[..., (-ky) mod H, :]."""
    h = t.shape[-2]
    return t[..., (-torch.arange(h, device=t.device)) % h, :]


def hermitian_phase(phase: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """φ'(ky) = (φ(ky) − φ(−ky)) / 2 on the `edges` columns (:func:`edge_columns`), φ elsewhere.

    φ' is antisymmetric in ky there, hence 0 on the self-conjugate rows ky = 0 and (even H)
    ky = H/2, so r(ky)·e^{iφ'(ky)} = conj(r(−ky)·e^{iφ'(−ky)}) for a magnitude symmetric in ky:
    the coefficients are Hermitian and irfft2 realises them exactly, |F| = r for any φ. The
    gradient through φ' is antisymmetric as well, so a phase that starts Hermitian stays so
    under (S)GD or Adam.
    """
    return torch.where(edges, (phase - mirror_rows(phase)) / 2, phase)


class MacoParam(ImageParam):
    """MACO: t = standardize(irfft2(r ⊙ e^{iφ})); only the phase φ is learned (Fel et al. 2023).

    r is the mean magnitude spectrum of natural images in decorrelated colour, fixed
    (:func:`~saliencelab.featurevis.spectrum.natural_magnitude`), so the images keep a natural
    spectrum however long the optimisation runs; the objective can only arrange *where* the
    structure is. Each channel is standardised, mixed by :func:`color_sqrt`, multiplied by
    `contrast` (1.5: the sigmoid then spans most of [0, 1] without saturating much) and mapped
    into [0, 1] by `valid`. φ starts uniform in [-π, π), image i's from the i-th draw.

    The magnitude is kept exactly on every column, fx = 0 and Nyquist included: on those two
    columns irfft2 realises only the Hermitian part of the coefficients, which has amplitude
    r·|cos((φ(ky) + φ(−ky))/2)|, so a free phase there could change the amplitude (from 0 to r).
    The phase used is therefore φ'(ky) = (φ(ky) − φ(−ky))/2 on those columns
    (:func:`hermitian_phase`): antisymmetric in ky, 0 on the real coefficients ky = 0 and
    ky = H/2, so |rfft2(irfft2(r ⊙ e^{iφ'}))| = r everywhere and standardize scales it by one
    factor per channel. The starting φ is already of that form (on those columns the draw of
    0 < ky < H/2 is mirrored to −ky with the opposite sign, the real rows set to 0), so `phase`
    is the phase actually used. A given magnitude is made symmetric in ky on those columns,
    r(ky) ← (r(ky) + r(−ky))/2 (irfft2 realises that average anyway; the natural one already is).

    Simplified from the authors' implementation (Xplique's `maco`): there φ starts N(0, 1) and
    is standardised (zero mean, unit std) at every forward, the whole image is standardised at
    once (here each channel), colours are mixed by Lucid's normalised V·√Λ without a contrast
    factor, and the image is 512 x 512 (here the model's input size), optimised by Nadam with
    learning rate 1 (here Adam, 0.2) under 32 crops per step (:func:`~.transforms.maco`).
    """

    def __init__(
        self,
        batch: int,
        size: Size,
        magnitude: torch.Tensor | None = None,
        contrast: float = 1.5,
        valid: str = "sigmoid",
        seed: int | torch.Generator | None = 0,
    ) -> None:
        super().__init__()
        self.batch, self.size = int(batch), image_size(size)
        self.contrast, self.valid = float(contrast), valid
        to_valid(torch.zeros(1), valid)
        h, w = self.size
        if magnitude is None:
            from .spectrum import natural_magnitude

            magnitude = natural_magnitude(h, w)
        if tuple(magnitude.shape) != (3, h, w // 2 + 1):
            raise SaliencelabError(
                f"A MACO magnitude for {h}x{w} images must have shape (3, {h}, {w // 2 + 1}), "
                f"got {tuple(magnitude.shape)}."
            )
        edges = edge_columns(h, w)
        self.register_buffer("edges", edges, persistent=False)
        magnitude = magnitude.float()
        on_edges = edges.to(magnitude.device)
        magnitude = torch.where(on_edges, (magnitude + mirror_rows(magnitude)) / 2, magnitude)
        self.register_buffer("magnitude", magnitude, persistent=False)
        g = _generator(seed)
        phase = [
            torch.rand(3, h, w // 2 + 1, generator=g, dtype=torch.float32)
            for _ in range(self.batch)
        ]
        phase = (torch.stack(phase) * 2 - 1) * math.pi
        # Hermitian on the edge columns, each coefficient's phase still uniform: the rows
        # ky > H/2 (negative frequencies) take minus the draw of -ky, the real rows take 0.
        rows = torch.arange(h)[:, None]
        phase = torch.where(edges & (2 * rows > h), -mirror_rows(phase), phase)
        phase = torch.where(edges & ((rows == 0) | (2 * rows == h)), 0.0, phase)
        self.phase = nn.Parameter(phase)

    def spatial(self) -> torch.Tensor:
        """standardize(irfft2(r ⊙ e^{iφ'})), φ' = :func:`hermitian_phase` (N, 3, H, W)."""
        phase = hermitian_phase(self.phase, self.edges)
        c = torch.polar(self.magnitude.expand_as(phase), phase)
        return standardize(torch.fft.irfft2(c, s=self.size, norm="ortho"))

    def forward(self) -> torch.Tensor:
        return to_valid(decorrelated_to_rgb(self.spatial()) * self.contrast, self.valid)


PARAMS = ("fft", "maco", "pixel", "decorrelated")


def make_param(
    param: str | ImageParam,
    batch: int,
    size: Size,
    seed: int | torch.Generator | None = 0,
    decay: float = 1.0,
    valid: str = "sigmoid",
) -> ImageParam:
    """The parameterization named `param` ("fft", "maco", "pixel", "decorrelated"), or `param`.

    "fft" is :class:`FourierParam` with decorrelated colour, "decorrelated" is
    :class:`PixelParam` with decorrelated colour, "pixel" is plain pixels.
    """
    if isinstance(param, ImageParam):
        if param.batch != batch:
            raise SaliencelabError(
                f"The parameterization holds {param.batch} images but the run has {batch}; build "
                f"it with batch={batch}."
            )
        if tuple(param.size) != image_size(size):
            h, w = param.size
            raise SaliencelabError(
                f"The parameterization makes {h}x{w} images but size={size!r} was asked for; "
                f"pass size=({h}, {w})."
            )
        return param
    if param == "fft":
        return FourierParam(batch, size, decay=decay, decorrelate=True, valid=valid, seed=seed)
    if param == "decorrelated":
        return PixelParam(batch, size, decorrelate=True, valid=valid, seed=seed)
    if param == "pixel":
        return PixelParam(batch, size, decorrelate=False, valid=valid, seed=seed)
    if param == "maco":
        return MacoParam(batch, size, valid=valid, seed=seed)
    from ..core.errors import closest

    raise SaliencelabError(
        f"Unknown parameterization {param!r}; use one of {', '.join(PARAMS)} or an ImageParam."
        f"{closest(str(param), PARAMS)}"
    )
