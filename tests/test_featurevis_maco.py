"""MACO keeps the Fourier magnitude fixed on every rfft2 column, fx = 0 and Nyquist included.

irfft2 keeps only the Hermitian part of the columns fx = 0 and (even W) fx = W/2, whose
amplitude is r·|cos((φ(ky) + φ(−ky))/2)|: with a free phase there the realised magnitude varied
from 0 to r and optimising the phase alone could change it. MacoParam now uses a phase that is
antisymmetric in ky on those columns, so |rfft2(spatial)| = k·r everywhere (k: one factor per
channel and image, from the standardisation).
"""

from __future__ import annotations

import math

import pytest
import torch

from saliencelab.featurevis.param import MacoParam

SIZES = [(16, 16), (15, 17), (32, 24), (17, 14)]


def _mirror(h: int) -> torch.Tensor:
    """Row index of -ky for each ky of an H-row rfft2 grid."""
    return (-torch.arange(h)) % h


def _edge_columns(w: int) -> list[int]:
    return [0, w // 2] if w % 2 == 0 else [0]


def _assert_magnitude_kept(p: MacoParam) -> None:
    """|rfft2(spatial)| / r is one constant per (image, channel) on every coefficient with r > 0
    (all but DC), to 1e-5 relative; the DC coefficient is 0 (standardised mean)."""
    with torch.no_grad():
        amp = torch.fft.rfft2(p.spatial().double(), norm="ortho").abs()
    r = p.magnitude.double()
    assert float(r[:, 0, 0].abs().max()) == 0.0 and bool((r.flatten(1)[:, 1:] > 0).all())
    ratio = (amp / r.clamp(min=1e-30)).flatten(2)[..., 1:]  # (N, 3, H*(W//2+1) - 1), DC left out
    k = ratio.mean(dim=-1, keepdim=True)
    torch.testing.assert_close(ratio, k.expand_as(ratio), rtol=1e-5, atol=0)
    assert float(amp[..., 0, 0].max()) < 1e-4


def _edge_amplitude(p: MacoParam) -> torch.Tensor:
    """Σ|F| over the columns fx = 0 and Nyquist, per image and channel."""
    with torch.no_grad():
        amp = torch.fft.rfft2(p.spatial(), norm="ortho").abs()
    return amp[..., _edge_columns(p.size[1])].sum(dim=(-2, -1))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_maco_magnitude_is_kept_on_every_column_for_random_phases(size):
    p = MacoParam(2, size, seed=3)
    _assert_magnitude_kept(p)  # the starting phase
    g = torch.Generator().manual_seed(11)
    for _ in range(3):  # arbitrary phases, not Hermitian on any column
        with torch.no_grad():
            p.phase.copy_((torch.rand(p.phase.shape, generator=g) * 2 - 1) * math.pi)
        _assert_magnitude_kept(p)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_maco_magnitude_is_kept_while_optimising_the_phase(size):
    """Adam on the phase, maximising the amplitude of the fx = 0 and Nyquist columns plus an image
    term: neither changes the magnitude; the edge columns' amplitude stays what it was."""
    h, w = size
    p = MacoParam(2, size, seed=5)
    before = _edge_amplitude(p)
    opt = torch.optim.Adam(p.parameters(), lr=0.2)
    target = torch.linspace(0, 1, h)[:, None].expand(h, w)  # favours horizontal stripes
    for _ in range(10):
        opt.zero_grad()
        t = p.spatial()
        amp = torch.fft.rfft2(t, norm="ortho").abs()
        loss = -amp[..., _edge_columns(w)].sum() - (p() * target).sum()
        loss.backward()
        opt.step()
    assert float(p.phase.grad.abs().sum()) > 0
    _assert_magnitude_kept(p)
    torch.testing.assert_close(_edge_amplitude(p), before, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_maco_phase_is_hermitian_on_the_edge_columns_and_stays_so(size):
    """The parameter is the phase actually used: on the fx = 0 and Nyquist columns
    φ(−ky) = −φ(ky) (0 on the real rows ky = 0 and ky = H/2), at the start and after Adam."""
    h, w = size
    p = MacoParam(2, size, seed=7)
    opt = torch.optim.Adam(p.parameters(), lr=0.3)
    for _ in range(6):
        edge = p.phase.detach()[..., _edge_columns(w)]
        torch.testing.assert_close(edge, -edge[..., _mirror(h), :], rtol=0, atol=0)
        opt.zero_grad()
        (p()[:, 0] * torch.linspace(-1, 1, w)).sum().backward()
        opt.step()
    real_rows = [0, h // 2] if h % 2 == 0 else [0]
    assert float(p.phase.detach()[..., real_rows, :][..., _edge_columns(w)].abs().max()) == 0.0


def test_maco_keeps_the_interior_draw_and_a_uniform_phase_on_the_edges():
    """For a seed the interior columns start from the same draw as before the fix; on the edge
    columns the rows 0 < ky < H/2 keep their draw (uniform in [-π, π)) and −ky mirrors it."""
    h, w = 15, 16
    p = MacoParam(2, (h, w), seed=9)
    g = torch.Generator().manual_seed(9)
    draw = torch.stack([torch.rand(3, h, w // 2 + 1, generator=g) for _ in range(2)])
    draw = (draw * 2 - 1) * math.pi
    torch.testing.assert_close(p.phase.detach()[..., 1:-1], draw[..., 1:-1], rtol=0, atol=0)
    upper = slice(1, (h + 1) // 2)
    edges = _edge_columns(w)
    torch.testing.assert_close(
        p.phase.detach()[..., upper, :][..., edges], draw[..., upper, :][..., edges]
    )


def test_maco_symmetrises_a_given_magnitude_and_realises_it_exactly():
    """A magnitude that is not symmetric in ky on the edge columns cannot be realised as given;
    it is replaced there by (r(ky) + r(−ky))/2, which is then kept exactly."""
    h, w = 12, 10
    g = torch.Generator().manual_seed(2)
    given = torch.rand(3, h, w // 2 + 1, generator=g) + 0.1
    given[:, 0, 0] = 0.0
    p = MacoParam(1, (h, w), magnitude=given, seed=0)
    edges = _edge_columns(w)
    expected = given.clone()
    expected[..., edges] = (given[..., edges] + given[..., _mirror(h), :][..., edges]) / 2
    torch.testing.assert_close(p.magnitude, expected)
    torch.testing.assert_close(p.magnitude[..., 1:-1], given[..., 1:-1], rtol=0, atol=0)
    _assert_magnitude_kept(p)
