"""Random-camera sampling: REFERENCE.md ranges, stratified azimuth, milestones, progressive widening, orbits."""

from __future__ import annotations

import math

import pytest
import torch

from systems.data import RandomCameraConfig, RandomCameraSampler, orbit_cameras


def test_defaults_follow_reference_ranges():
    cfg = RandomCameraConfig()
    assert cfg.elevation_range == [-10.0, 90.0] and cfg.distance_range == [1.0, 1.5]
    assert cfg.fovy_range == [40.0, 70.0] and cfg.n_test_views == 120 and cfg.uniform_sphere_prob == 0.5


def test_samples_stay_in_range_and_azimuth_is_stratified():
    cfg = RandomCameraConfig(batch_size=[8], camera_perturb=0.0, center_perturb=0.0, up_perturb=0.0)
    sampler = RandomCameraSampler(cfg)
    for step in range(50):
        cams = sampler.sample(step)
        assert len(cams) == 8
        assert cams.elevation.min() >= -10.0 - 1e-4 and cams.elevation.max() <= 90.0 + 1e-4
        assert cams.distance.min() >= 1.0 and cams.distance.max() <= 1.5
        fovy = torch.rad2deg(cams.fovy)
        assert fovy.min() >= 40.0 and fovy.max() <= 70.0
        # One azimuth per 45° slice of [-180, 180): stratified across the batch.
        slices = torch.floor((cams.azimuth + 180.0) / 45.0).long()
        assert sorted(slices.tolist()) == list(range(8))
        # Without perturbations the camera sits exactly at its spherical position, looking at the origin.
        e, a = torch.deg2rad(cams.elevation), torch.deg2rad(cams.azimuth)
        expected = cams.distance[:, None] * torch.stack([e.cos() * a.cos(), e.cos() * a.sin(), e.sin()], -1)
        torch.testing.assert_close(cams.position, expected, atol=1e-5, rtol=0)
        forward = -cams.c2w[:, :3, 2]
        torch.testing.assert_close(forward, -expected / cams.distance[:, None], atol=1e-5, rtol=0)


def test_half_of_elevations_are_area_uniform_on_the_sphere():
    cfg = RandomCameraConfig(batch_size=[1024], elevation_range=[0.0, 90.0])
    cams = RandomCameraSampler(cfg).sample(0)
    # Uniform in angle: P(e > 60) = 1/3; area-uniform: P(sin e > sin 60) = 1 - 0.866 = 0.134. Mixture: 0.234.
    frac = (cams.elevation > 60.0).float().mean().item()
    assert abs(frac - 0.5 * (1 / 3 + (1 - math.sin(math.radians(60))))) < 0.05


def test_batches_are_a_function_of_the_step():
    sampler = RandomCameraSampler(RandomCameraConfig(batch_size=[4]))
    a, b, c = sampler.sample(7), sampler.sample(7), sampler.sample(8)
    assert torch.equal(a.c2w, b.c2w) and torch.equal(a.light_position, b.light_position)
    assert not torch.equal(a.c2w, c.c2w)


def test_resolution_and_batch_milestones():
    cfg = RandomCameraConfig(height=[32, 64, 128], batch_size=[4, 2, 1], resolution_milestones=[100, 300])
    sampler = RandomCameraSampler(cfg)
    assert sampler.resolution(99) == (32, 32) and sampler.batch_size(99) == 4
    assert sampler.resolution(100) == (64, 64) and len(sampler.sample(150)) == 2
    cams = sampler.sample(300)
    assert (cams.height, cams.width, len(cams)) == (128, 128, 1)


def test_progressive_widening_starts_frontal():
    cfg = RandomCameraConfig(batch_size=[16], progressive_until=1000, azimuth_range=[-180.0, 180.0])
    sampler = RandomCameraSampler(cfg)
    early, late = sampler.sample(0), sampler.sample(2000)
    assert early.azimuth.abs().max() <= 180.0 * 1 / 1000 + 1e-4
    assert late.azimuth.abs().max() > 90.0
    elev, azim = sampler.ranges(499)
    assert azim == [-90.0, 90.0] and elev[0] > -10.0 and elev[1] < 90.0


def test_light_follows_the_camera_direction():
    cfg = RandomCameraConfig(batch_size=[64], light_position_perturb=0.0, light_distance_range=[2.0, 2.0])
    cams = RandomCameraSampler(cfg).sample(3)
    direction = cams.position / cams.position.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(cams.light_position, 2.0 * direction, atol=1e-5, rtol=0)


def test_orbits_are_deterministic_and_even():
    cfg = RandomCameraConfig(distance_range=[2.0, 3.0], fovy_range=[40.0, 60.0], eval_elevation=15.0)
    turntable = orbit_cameras(cfg, 120)
    assert len(turntable) == 120 and torch.allclose(turntable.elevation, torch.full((120,), 15.0))
    steps = torch.diff(turntable.azimuth)
    torch.testing.assert_close(steps, torch.full((119,), 3.0), atol=1e-4, rtol=0)
    assert torch.allclose(turntable.distance, torch.full((120,), 2.5))
    assert torch.allclose(torch.rad2deg(turntable.fovy), torch.full((120,), 50.0))
    assert torch.equal(orbit_cameras(cfg, 4).c2w, orbit_cameras(cfg, 4).c2w)


@pytest.mark.parametrize(
    "bad",
    [
        dict(elevation_range=[10.0, 0.0]),
        dict(distance_range=[0.0, 1.0]),
        dict(height=[64, 128]),
        dict(fovy_range=[10.0, 190.0]),
        dict(n_test_views=0),
    ],
)
def test_bad_ranges_are_rejected(bad):
    with pytest.raises(ValueError):
        RandomCameraSampler(RandomCameraConfig(**bad))


def test_multiview_batches_share_everything_but_a_90_degree_azimuth_step():
    cfg = RandomCameraConfig(batch_size=[8], n_view=4, elevation_range=[0.0, 30.0], fovy_range=[15.0, 60.0])
    cfg.distance_range, cfg.relative_radius = [0.8, 1.0], True
    cams = RandomCameraSampler(cfg).sample(3)
    for o in (0, 4):
        view = slice(o, o + 4)
        assert torch.allclose(cams.elevation[view], cams.elevation[o].expand(4))
        assert torch.allclose(cams.fovy[view], cams.fovy[o].expand(4))
        step = torch.remainder(cams.azimuth[view].diff(), 360.0)
        assert torch.allclose(step, torch.full((3,), 90.0), atol=1e-3)
        # relative radius (MVDream): the sampled distance over tan(fovy / 2)
        scaled = cams.distance[o] * torch.tan(cams.fovy[o] / 2)
        assert 0.8 - 1e-5 <= float(scaled) <= 1.0 + 1e-5
    # the perturbation is one per object: the 4 camera positions of an object keep one elevation exactly
    position = cams.c2w[:4, :3, 3]
    assert not torch.allclose(cams.azimuth[:4], cams.azimuth[4:])
    assert torch.allclose(position[:, 2].std(), torch.tensor(0.0), atol=0.2)


def test_single_view_stream_is_unchanged_by_the_multiview_options():
    """n_view = 1 draws exactly what the sampler drew before multi-view batches existed (resumed runs)."""
    cfg = RandomCameraConfig(batch_size=[4], camera_perturb=0.0, center_perturb=0.0, up_perturb=0.0)
    cams = RandomCameraSampler(cfg).sample(7)
    gen = torch.Generator().manual_seed(7)
    for _ in range(3):  # the elevation: a uniform draw, an area-uniform draw and the choice between them
        torch.rand(4, generator=gen)
    strata = (torch.arange(4) + torch.rand(4, generator=gen)) / 4
    assert torch.allclose((-180.0 + 360.0 * strata + 180.0) % 360.0 - 180.0, cams.azimuth)


def test_angle_step_snaps_to_a_lattice_and_bad_multiview_settings_are_named():
    cfg = RandomCameraConfig(batch_size=[4], n_view=4, angle_step=5.0, camera_perturb=0.0)
    cams = RandomCameraSampler(cfg).sample(11)
    assert torch.equal(torch.remainder(cams.azimuth, 5.0), torch.zeros(4))
    assert torch.equal(torch.remainder(cams.elevation, 5.0), torch.zeros(4))
    with pytest.raises(ValueError, match="multiples of data.n_view"):
        RandomCameraSampler(RandomCameraConfig(batch_size=[6], n_view=4))
    with pytest.raises(ValueError, match="angle_step"):
        RandomCameraSampler(RandomCameraConfig(angle_step=-1.0))
