"""Per-Gaussian math: rotations and covariances, and SH colours against gsplat's CPU reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from scipy.spatial.transform import Rotation

from geometry.functional.sh import SH_C0
from geometry.gaussians.functional import covariance_3d, quat_to_rotmat, rgb_to_sh_dc, sh_to_rgb


def test_quat_to_rotmat_matches_scipy_and_normalizes():
    q = torch.randn(20, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = Rotation.from_quat(
        F.normalize(q, dim=-1)[:, [1, 2, 3, 0]].numpy()
    ).as_matrix()  # scipy: x y z w
    torch.testing.assert_close(quat_to_rotmat(3.0 * q), torch.from_numpy(expected))


def test_covariance_is_r_s2_rt():
    q = torch.randn(10, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    s = torch.rand(10, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64) + 0.1
    R = quat_to_rotmat(q)
    torch.testing.assert_close(covariance_3d(q, s), R @ torch.diag_embed(s**2) @ R.transpose(1, 2))
    eig = torch.linalg.eigvalsh(covariance_3d(q, s))
    torch.testing.assert_close(eig, (s**2).sort(-1).values)


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_sh_colours_match_gsplat_reference(degree):
    """Ours: sh_dc (N,3) + sh_rest (N,K,3) in band order; gsplat: one (N, (d+1)², 3) tensor, DC first.
    Colour = max(0, SH + 0.5) as in 3DGS; the coefficients are large enough that the clamp bites."""
    from gsplat.cuda._torch_impl import _spherical_harmonics

    gen = torch.Generator().manual_seed(degree)
    n, k = 500, (degree + 1) ** 2 - 1
    dc = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    rest = torch.randn(n, k, 3, generator=gen, dtype=torch.float64) * 0.5
    dirs = F.normalize(torch.randn(n, 3, generator=gen, dtype=torch.float64), dim=-1)
    raw = _spherical_harmonics(degree, dirs, torch.cat([dc[:, None], rest], dim=1)) + 0.5
    assert (raw < 0).any() and (raw > 1).any()
    torch.testing.assert_close(sh_to_rgb(dc, rest, dirs), raw.clamp_min(0.0), atol=1e-12, rtol=0)
    # One colour per camera: dirs (C, N, 3) broadcast against the per-Gaussian coefficients.
    dirs2 = torch.stack([dirs, -dirs])
    ref2 = (
        _spherical_harmonics(degree, dirs2, torch.cat([dc[:, None], rest], dim=1).expand(2, -1, -1, -1)) + 0.5
    )
    torch.testing.assert_close(sh_to_rgb(dc, rest, dirs2), ref2.clamp_min(0.0), atol=1e-12, rtol=0)


def test_degree_zero_colour_and_its_inverse():
    rgb = torch.rand(30, 3)
    dc = rgb_to_sh_dc(rgb)
    torch.testing.assert_close(dc, (rgb - 0.5) / SH_C0)
    torch.testing.assert_close(sh_to_rgb(dc, torch.zeros(30, 0, 3), None), rgb)
    rest = torch.randn(30, 3, 3)
    torch.testing.assert_close(sh_to_rgb(dc, rest, None), rgb)  # without a direction only DC counts
