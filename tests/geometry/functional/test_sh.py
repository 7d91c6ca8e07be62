"""Real spherical harmonics (the one copy): orthonormality, zonal values, and gsplat's CPU reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from geometry.functional.sh import SH_C0, SH_C1, spherical_harmonics


def _unit_dirs(n: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    return F.normalize(torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=dtype), dim=-1)


def test_orthonormal_and_zonal_values():
    d = _unit_dirs(400_000, 5)
    y = spherical_harmonics(d, 4)
    gram = 4 * math.pi * (y.T @ y) / d.shape[0]  # Monte Carlo ∫ Y_i Y_j dω
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=0.03, rtol=0)
    # On the +z axis only m = 0 survives, with Y_l0 = sqrt((2l + 1) / 4π).
    up = spherical_harmonics(torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64), 4)[0]
    expected = torch.zeros(16, dtype=torch.float64)
    for band in range(4):
        expected[band * band + band] = math.sqrt((2 * band + 1) / (4 * math.pi))
    torch.testing.assert_close(up, expected, atol=1e-7, rtol=0)
    assert SH_C0 == pytest.approx(1 / (2 * math.sqrt(math.pi))) and SH_C1 == pytest.approx(
        math.sqrt(3 / (4 * math.pi))
    )


@pytest.mark.parametrize("bands", [1, 2, 3, 4])
def test_every_band_matches_gsplat_reference(bands):
    """gsplat's CPU reference (Sloan 2013 polynomials, the 3DGS basis order and signs) for each band count."""
    from gsplat.cuda._torch_impl import _eval_sh_bases_fast

    d = _unit_dirs(3000, bands)
    ours = spherical_harmonics(d, bands)
    assert ours.shape == (3000, bands * bands)
    torch.testing.assert_close(ours, _eval_sh_bases_fast(bands * bands, d), atol=1e-12, rtol=0)
    # Batched leading dims are kept.
    torch.testing.assert_close(spherical_harmonics(d.view(3, 1000, 3), bands), ours.view(3, 1000, -1))


def test_bands_are_nested_and_out_of_range_is_refused():
    d = _unit_dirs(50, 1)
    full = spherical_harmonics(d, 4)
    for bands in (1, 2, 3):
        torch.testing.assert_close(spherical_harmonics(d, bands), full[:, : bands * bands])
    for bad in (0, 5):
        with pytest.raises(ValueError, match="bands"):
            spherical_harmonics(d, bad)
