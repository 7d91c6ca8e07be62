"""Ray–sphere and ray–box intervals against hand-computed entries and exits."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from geometry.functional.rays import ray_box_interval, ray_sphere_interval


def test_ray_sphere_known_cases():
    origins = torch.tensor(
        [
            [0.0, 0.0, 3.0],  # straight through the centre
            [0.0, 0.6, 3.0],  # off-centre chord: half-length sqrt(1 - 0.36) = 0.8
            [0.0, 2.0, 3.0],  # misses
            [0.0, 0.0, 0.5],  # starts inside: entry clamped to 0
            [0.0, 0.0, -3.0],  # sphere behind the ray
        ]
    )
    dirs = torch.tensor([[0.0, 0.0, -1.0]] * 4 + [[0.0, 0.0, -1.0]])
    near, far, hit = ray_sphere_interval(origins, dirs, 1.0)
    torch.testing.assert_close(near, torch.tensor([2.0, 2.2, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(far, torch.tensor([4.0, 3.8, 0.0, 1.5, 0.0]))
    assert hit.tolist() == [True, True, False, True, False]


def test_ray_sphere_radius_and_random_rays_land_on_the_sphere():
    gen = torch.Generator().manual_seed(0)
    origins = F.normalize(torch.randn(500, 3, generator=gen), dim=-1) * 2.5
    dirs = F.normalize(torch.randn(500, 3, generator=gen) * 0.3 - origins, dim=-1)
    near, far, hit = ray_sphere_interval(origins, dirs, 0.7)
    assert 50 < hit.sum() < 500
    for t in (near, far):
        radius = (origins + t[:, None] * dirs)[hit].norm(dim=-1)
        torch.testing.assert_close(radius, torch.full_like(radius, 0.7), atol=1e-5, rtol=0)
    closest = (origins - (origins * dirs).sum(-1, keepdim=True) * dirs).norm(dim=-1)
    assert torch.equal(hit, closest < 0.7)


def test_ray_box_known_cases():
    origins = torch.tensor(
        [[3.0, 0.0, 0.0], [3.0, 0.2, 0.2], [3.0, 2.0, 0.0], [0.0, 0.0, 0.0], [3.0, 3.0, 0.0]]
    )
    s = 1 / math.sqrt(2)
    dirs = torch.tensor([[-1.0, 0.0, 0.0]] * 4 + [[-s, -s, 0.0]])
    near, far, hit = ray_box_interval(origins, dirs, 0.5)
    torch.testing.assert_close(near[[0, 1, 3]], torch.tensor([2.5, 2.5, 0.0]))
    torch.testing.assert_close(far[[0, 1, 3]], torch.tensor([3.5, 3.5, 0.5]))
    # The diagonal ray enters at the corner (0.5, 0.5) and leaves at (−0.5, −0.5): through the whole diagonal.
    torch.testing.assert_close(near[4], torch.tensor(2.5 * math.sqrt(2)), atol=1e-5, rtol=0)
    torch.testing.assert_close(far[4], torch.tensor(3.5 * math.sqrt(2)), atol=1e-5, rtol=0)
    assert hit.tolist() == [True, True, False, True, True]
    assert near[2] == far[2]  # a miss has an empty interval
