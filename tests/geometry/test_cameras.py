"""Camera conventions (DESIGN.md §3): z-up world, OpenGL camera axes, azimuth 0 on +x, pixel-center rays."""

from __future__ import annotations

import math

import pytest
import torch

from geometry.cameras import (
    c2w_from_spherical,
    get_rays,
    intrinsics,
    look_at,
    make_cameras,
    mvp_matrix,
    project_points,
)


def _random_cameras(n: int = 16, height: int = 24, width: int = 36, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    elev = torch.cat([torch.tensor([90.0, -90.0]), torch.rand(n - 2, generator=g) * 180 - 90])
    azim = torch.rand(n, generator=g) * 360 - 180
    dist = 1.5 + torch.rand(n, generator=g)
    fovy = 30 + 40 * torch.rand(n, generator=g)
    return make_cameras(elev, azim, dist, fovy, height, width)


def test_spherical_positions():
    cams = make_cameras(
        torch.tensor([0.0, 0.0, 90.0, -90.0, 30.0]), torch.tensor([0.0, 90.0, 45.0, 0.0, 180.0]), 2.0, 45.0, 8
    )
    s3 = math.sqrt(3.0)
    expected = torch.tensor([[2.0, 0, 0], [0, 2.0, 0], [0, 0, 2.0], [0, 0, -2.0], [-s3, 0, 1.0]])
    torch.testing.assert_close(cams.position, expected, atol=1e-6, rtol=0)


def test_c2w_is_a_rotation_looking_at_the_origin():
    cams = _random_cameras()
    rot = cams.c2w[:, :3, :3].double()
    torch.testing.assert_close(
        rot.transpose(1, 2) @ rot, torch.eye(3, dtype=torch.float64).expand(16, 3, 3), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(16, dtype=torch.float64), atol=1e-6, rtol=0)
    forward = -cams.c2w[:, :3, 2]  # OpenGL cameras look down their -z axis
    torch.testing.assert_close(forward, -cams.position / cams.distance[:, None], atol=1e-6, rtol=0)
    torch.testing.assert_close(cams.c2w[:, 3], torch.tensor([0.0, 0, 0, 1]).expand(16, 4))


def test_world_up_is_up_and_plus_y_is_right_from_plus_x():
    cams = make_cameras(0.0, 0.0, 2.0, 40.0, 33)
    px = project_points(cams, torch.tensor([[[0.0, 0.0, 0.3], [0.0, 0.3, 0.0]]]))[0]
    assert px[0, 1] < 33 / 2 and px[0, 0] == pytest.approx(33 / 2, abs=1e-4)  # above the center
    assert px[1, 0] > 33 / 2 and px[1, 1] == pytest.approx(
        33 / 2, abs=1e-4
    )  # right of the center (right-handed)


def test_look_at_matches_spherical_away_from_the_poles():
    elev, azim, dist = (
        torch.tensor([10.0, -40.0, 75.0]),
        torch.tensor([0.0, 123.0, -60.0]),
        torch.tensor([2.0, 1.2, 3.0]),
    )
    c2w = c2w_from_spherical(elev, azim, dist)
    torch.testing.assert_close(look_at(c2w[:, :3, 3], torch.zeros(3, 3)), c2w, atol=1e-6, rtol=0)


def test_center_pixel_ray_of_odd_image_hits_the_origin():
    cams = _random_cameras(height=33, width=33)
    origins, dirs = get_rays(cams)
    torch.testing.assert_close(origins[:, 16, 16], cams.position)
    torch.testing.assert_close(dirs[:, 16, 16], -cams.position / cams.distance[:, None], atol=1e-6, rtol=0)
    torch.testing.assert_close(dirs.norm(dim=-1), torch.ones(16, 33, 33))


def test_rays_pass_through_pixel_centers_and_project_back():
    cams = _random_cameras()
    origins, dirs = get_rays(cams)
    t = torch.rand(16, 24, 36, 1, generator=torch.Generator().manual_seed(1)) * 3 + 0.5
    points = (origins + t * dirs).reshape(16, -1, 3)
    pixels = project_points(cams, points).reshape(16, 24, 36, 2)
    i, j = torch.meshgrid(torch.arange(24) + 0.5, torch.arange(36) + 0.5, indexing="ij")
    expected = torch.stack([j, i], dim=-1).expand(16, 24, 36, 2)
    torch.testing.assert_close(pixels, expected, atol=2e-3, rtol=0)


def test_mvp_ndc_agrees_with_project_points():
    cams = _random_cameras()
    g = torch.Generator().manual_seed(2)
    points = torch.rand(16, 50, 3, generator=g) - 0.5  # inside every camera's frustum depth range
    clip = torch.cat([points, torch.ones(16, 50, 1)], dim=-1) @ mvp_matrix(cams).transpose(1, 2)
    ndc = clip[..., :3] / clip[..., 3:]
    pixels = project_points(cams, points)
    # NDC x right / y up in [-1, 1] across the image; pixel rows grow downward.
    from_ndc = torch.stack([(ndc[..., 0] + 1) / 2 * cams.width, (1 - ndc[..., 1]) / 2 * cams.height], dim=-1)
    torch.testing.assert_close(from_ndc, pixels, atol=1e-3, rtol=0)
    assert (ndc[..., 2].abs() < 1).all()


def test_intrinsics_focal_and_cv_projection():
    cams = _random_cameras()
    K = intrinsics(cams)
    torch.testing.assert_close(K[:, 0, 0], 0.5 * 24 / torch.tan(cams.fovy / 2))
    torch.testing.assert_close(K[:, 1, 1], K[:, 0, 0])
    torch.testing.assert_close(K[:, :2, 2], torch.tensor([18.0, 12.0]).expand(16, 2))
    # K expects computer-vision camera axes (y down, z forward) = OpenGL axes with y and z flipped.
    points = torch.rand(16, 20, 3, generator=torch.Generator().manual_seed(3)) - 0.5
    w2c = torch.linalg.inv(cams.c2w)
    p_gl = points @ w2c[:, :3, :3].transpose(1, 2) + w2c[:, None, :3, 3]
    p_cv = p_gl * torch.tensor([1.0, -1.0, -1.0])
    uvw = p_cv @ K.transpose(1, 2)
    torch.testing.assert_close(uvw[..., :2] / uvw[..., 2:], project_points(cams, points), atol=1e-3, rtol=0)


def test_float64_cameras_give_the_same_rays():
    cams = _random_cameras()
    cams64 = cams._map(lambda t: t.double())
    o32, d32 = get_rays(cams)
    o64, d64 = get_rays(cams64)
    assert d64.dtype == torch.float64
    torch.testing.assert_close(d64.float(), d32, atol=1e-6, rtol=0)
    torch.testing.assert_close(o64.float(), o32)
