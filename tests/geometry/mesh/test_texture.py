"""UV atlas, the torch UV rasterizer, dilation and baking, against brute-force and analytic references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geometry.mesh.extract import marching_cubes, sample_grid
from geometry.mesh.mesh import decimate
from geometry.mesh.texture import bake, dilate, rasterize_uv, sample_texture, unwrap
from tests.geometry.mesh.helpers import PEAK, density_of, sphere_sdf


def _sphere_mesh(faces: int = 3000):
    return decimate(marching_cubes(sample_grid(density_of(sphere_sdf), 1.0, 40), PEAK / 2, 1.0), faces)


def test_rasterize_matches_brute_force_point_in_triangle():
    size = 37
    uv = torch.tensor([[0.1, 0.2], [0.83, 0.31], [0.4, 0.95], [0.9, 0.9]])
    faces = torch.tensor([[0, 1, 2], [1, 3, 2]])
    face_id, bary = rasterize_uv(uv, faces, size)
    # Independent check: each texel centre's (u, v) tested with numpy half-planes per triangle.
    j, i = np.meshgrid(np.arange(size), np.arange(size))
    centre = np.stack([(j + 0.5) / size, 1 - (i + 0.5) / size], -1)
    expected = np.full((size, size), -1)
    for f, (a, b, c) in enumerate(uv.numpy()[faces.numpy()]):

        def side(p, q, x):
            return (q[0] - p[0]) * (x[..., 1] - p[1]) - (q[1] - p[1]) * (x[..., 0] - p[0])

        s = np.stack([side(a, b, centre), side(b, c, centre), side(c, a, centre)])
        inside = (s >= 0).all(0) | (s <= 0).all(0)
        expected[inside] = f
    assert (face_id.numpy() == expected).all()
    covered = face_id >= 0
    recon = (uv[faces[face_id[covered]]] * bary[covered][..., None]).sum(1)
    assert torch.allclose(recon, torch.from_numpy(centre[covered.numpy()]).float(), atol=1e-5)


def test_dilate_grows_rings_and_keeps_covered_texels():
    image = torch.zeros(9, 9, 3)
    mask = torch.zeros(9, 9, dtype=torch.bool)
    image[4, 4] = torch.tensor([0.2, 0.4, 0.6])
    mask[4, 4] = True
    out = dilate(image, mask, 2)
    assert torch.allclose(out[2:7, 2:7], torch.tensor([0.2, 0.4, 0.6]).expand(5, 5, 3))
    assert out[:2].abs().sum() == 0 and out[:, 7:].abs().sum() == 0


def test_unwrap_keeps_geometry_and_gives_unit_uvs():
    mesh = _sphere_mesh()
    atlas = unwrap(mesh, texture_size=256)
    assert atlas.num_faces == mesh.num_faces and atlas.num_vertices >= mesh.num_vertices
    assert atlas.uv.min() >= 0 and atlas.uv.max() <= 1
    # Every atlas triangle is an original triangle (same corner positions, same winding).
    original = {tuple(np.round(mesh.vertices[f], 6).ravel()) for f in mesh.faces}
    rolled = [np.roll(atlas.vertices[f], k, axis=0) for f in atlas.faces[:200] for k in range(3)]
    hits = sum(tuple(np.round(r, 6).ravel()) in original for r in rolled)
    assert hits == 200


def _surface_samples(atlas, n: int = 5000, seed: int = 0):
    """Random points on the atlas triangles with their interpolated UVs."""
    faces = torch.from_numpy(atlas.faces)
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(n, 3, generator=g)
    w = w / w.sum(-1, keepdim=True)
    fid = torch.randint(0, len(faces), (n,), generator=g)
    points = (torch.from_numpy(atlas.vertices)[faces[fid]] * w[..., None]).sum(1)
    uvs = (torch.from_numpy(atlas.uv)[faces[fid]] * w[..., None]).sum(1)
    return points, uvs


def test_bake_reproduces_a_smooth_colour_field():
    colour = lambda p, n: (p.clamp(-1, 1) + 1) / 2  # noqa: E731  linear in position: exact under interpolation
    atlas = unwrap(_sphere_mesh(), texture_size=256).with_normals()
    baked = bake(atlas, colour, size=256, dilation=3)
    assert 0.3 < baked.coverage.float().mean() < 1.0 and baked.metallic_roughness is None
    points, uvs = _surface_samples(atlas)
    err = (sample_texture(baked.base_color, uvs) - colour(points, None)).abs()
    # Bilinear + texel quantization at 256². A point within half a texel of a chart border can pick up a
    # neighbouring chart's padding texel (seen: 0.13 at ~1 in 5000 random points), so the bound is on the 99.5th
    # percentile; the mean bounds the typical error.
    assert err.mean() < 0.01 and err.max(dim=-1).values.quantile(0.995) < 0.06


def test_bake_hands_the_colour_function_unit_surface_normals():
    seen = []

    def colour(points, normals):
        seen.append((points, normals))
        return (normals + 1) / 2

    atlas = unwrap(_sphere_mesh().with_normals(), texture_size=128)  # normals before the seams split
    baked = bake(atlas, colour, size=128, dilation=2, chunk=1000)
    points, normals = (torch.cat(t) for t in zip(*seen, strict=True))
    assert len(seen) > 1  # queried in chunks
    torch.testing.assert_close(normals.norm(dim=-1), torch.ones(len(normals)), atol=1e-5, rtol=0)
    radial = torch.nn.functional.normalize(points, dim=-1)  # a centred sphere: normal = position direction
    # Interpolated vertex normals of the decimated sphere: radial, but for a few slivers the decimation left.
    cos = (normals * radial).sum(-1)
    assert cos.quantile(0.02) > 0.98 and cos.mean() > 0.995 and cos.min() > 0.8
    samples, uvs = _surface_samples(atlas, seed=1)
    expected = (torch.nn.functional.normalize(samples, dim=-1) + 1) / 2
    err = (sample_texture(baked.base_color, uvs) - expected).abs()  # the baked map shows them (faceted, 128²)
    assert err.median() < 0.02 and err.quantile(0.9) < 0.05


def test_bake_needs_normals_and_bakes_metallic_roughness_in_gltf_channels():
    atlas = unwrap(_sphere_mesh(1000), texture_size=64)
    with pytest.raises(ValueError, match="UVs and normals"):
        bake(atlas, lambda p, n: p, size=64)
    atlas = atlas.with_normals()
    mr = lambda p: torch.tensor([0.25, 0.75]).expand(len(p), 2)  # noqa: E731  (metallic, roughness)
    baked = bake(atlas, lambda p, n: torch.full_like(p, 0.5), size=64, dilation=0, metallic_roughness_fn=mr)
    texels = baked.metallic_roughness[baked.coverage]
    torch.testing.assert_close(
        texels, torch.tensor([1.0, 0.75, 0.25]).expand(len(texels), 3)
    )  # R=1, G=rough, B=metal
