"""MeshRenderer against a per-pixel ray-cast reference (mask, depth, normals, albedo), silhouette gradients,
shading, backgrounds, the empty mesh and the regularizers it declares. All on the torch twin."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from torch import nn

from geometry.cameras import get_rays, make_cameras
from geometry.fields.materials import DiffuseWithPointLight
from geometry.functional.mesh_regularizers import laplacian_smoothness, normal_consistency
from geometry.mesh.renderer import MeshRenderer, MeshRendererConfig


def albedo_of(points: torch.Tensor) -> torch.Tensor:
    """An analytic colour field, in [0.1, 0.9] inside the unit cube."""
    return 0.5 + 0.4 * torch.stack([points[:, 0], points[:, 1].sin(), points[:, 2] * points[:, 0]], -1)


class StandInMesh(nn.Module):
    """The geometry interface MeshRenderer uses (DMTet's), over a fixed-topology mesh with learnable vertices
    and a learnable rigid translation."""

    def __init__(self, vertices, faces) -> None:
        super().__init__()
        self.vertices = nn.Parameter(torch.tensor(np.array(vertices), dtype=torch.float32).reshape(-1, 3))
        self.translation = nn.Parameter(torch.zeros(3))
        self.register_buffer("faces", torch.tensor(np.array(faces), dtype=torch.long).reshape(-1, 3))
        self.radius = 1.0

    def isosurface(self):
        return self.vertices + self.translation, self.faces

    def albedo(self, points):
        return albedo_of(points)


def _cube() -> trimesh.Trimesh:
    """A unit cube turned off the axes (so no face is seen edge-on); trimesh winds it outward."""
    rotation = trimesh.transformations.euler_matrix(0.3, -0.2, 0.5)
    return trimesh.creation.box(extents=(0.9, 0.9, 0.9), transform=rotation)


def _sphere(subdivisions: int = 2, radius: float = 0.6) -> trimesh.Trimesh:
    return trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)


def _cameras(height: int = 32, width: int = 40):
    return make_cameras(torch.tensor([20.0, -35.0]), torch.tensor([30.0, 160.0]), 2.4, 45.0, height, width)


def _renderer(mesh, material=None, **cfg) -> MeshRenderer:
    return MeshRenderer(
        MeshRendererConfig(**{"backend": "torch", **cfg}), StandInMesh(mesh.vertices, mesh.faces), material
    )


def _ray_cast(cameras, triangles):
    """Möller–Trumbore per (pixel ray, triangle) in float64: nearest hit's face (−1 = none), distance t
    (unit directions) and barycentric weights (w0, w1, w2) of its corners. Shapes (B, H, W, ...)."""
    origins, dirs = (t.double() for t in get_rays(cameras))
    o, d = origins.reshape(-1, 1, 3), dirs.reshape(-1, 1, 3)
    tri = torch.tensor(np.array(triangles), dtype=torch.float64)[None]  # (1, F, 3, 3)
    e1, e2 = tri[..., 1, :] - tri[..., 0, :], tri[..., 2, :] - tri[..., 0, :]
    d, e1, e2 = torch.broadcast_tensors(d, e1, e2)
    p = torch.cross(d, e2, dim=-1)
    det = (e1 * p).sum(-1)
    s = o - tri[..., 0, :]
    b1 = (s * p).sum(-1) / det
    q = torch.cross(s.expand_as(e1), e1, dim=-1)
    b2 = (d * q).sum(-1) / det
    t = (e2 * q).sum(-1) / det
    hit = (det.abs() > 1e-12) & (b1 >= 0) & (b2 >= 0) & (b1 + b2 <= 1) & (t > 0)
    t_near, face = torch.where(hit, t, torch.inf).min(-1)
    face = torch.where(torch.isfinite(t_near), face, -1)
    pick = face.clamp_min(0)[:, None]
    w1, w2 = b1.gather(1, pick)[:, 0], b2.gather(1, pick)[:, 0]
    shape = (len(cameras), cameras.height, cameras.width)
    weights = torch.stack([1 - w1 - w2, w1, w2], -1)
    return face.view(shape), t_near.view(shape), weights.view(*shape, 3), origins, dirs


def _interior(mask: torch.Tensor) -> torch.Tensor:
    """Pixels whose 3 × 3 neighbourhood is all covered or all empty (away from any silhouette)."""
    m = mask.float()[:, None]
    pooled = torch.nn.functional.max_pool2d(m, 3, 1, 1), -torch.nn.functional.max_pool2d(-m, 3, 1, 1)
    return (pooled[0] == pooled[1])[:, 0]


def _area_weighted_vertex_normals(mesh: trimesh.Trimesh) -> np.ndarray:
    summed = np.zeros_like(mesh.vertices)
    for face in mesh.faces:
        a, b, c = mesh.vertices[face]
        for k in face:
            summed[k] += np.cross(b - a, c - a)
    return summed / np.linalg.norm(summed, axis=1, keepdims=True)


def test_flat_cube_matches_ray_cast_mask_depth_face_normal_and_albedo():
    mesh, cams = _cube(), _cameras()
    with torch.no_grad():
        out = _renderer(mesh, normal="face", antialias=False)(cams, background_color=torch.zeros(3))
    face, t, _, origins, dirs = _ray_cast(cams, mesh.triangles)
    ref_mask = face >= 0
    mask = out.opacity[..., 0] > 0
    assert ref_mask.float().mean() > 0.2
    differ = mask != ref_mask
    assert differ.sum() <= 2 and not (differ & _interior(ref_mask)).any()  # only rounding on an edge
    both = mask & ref_mask
    assert (out.opacity[mask] == 1).all() and (out.depth[~mask] == 0).all() and (out.normal[~mask] == 0).all()
    # Measured (float32 render vs float64 ray cast): depth 7e-7, normal 7e-8, albedo 1.5e-7; 0 mask differences.
    torch.testing.assert_close(out.depth[..., 0][both].double(), t[both], atol=1e-5, rtol=0)
    face_normals = torch.tensor(np.array(mesh.face_normals))  # trimesh's own, from its outward winding
    torch.testing.assert_close(out.normal[both].double(), face_normals[face[both]], atol=1e-6, rtol=0)
    points = origins + dirs * t[..., None]
    torch.testing.assert_close(out.rgb[both].double(), albedo_of(points[both]), atol=1e-5, rtol=0)
    assert (out.rgb[~mask] == 0).all()


def test_smooth_sphere_matches_ray_cast_interpolated_vertex_normals():
    mesh, cams = _sphere(), _cameras(28, 28)
    with torch.no_grad():
        out = _renderer(mesh, normal="vertex", antialias=False)(cams)
    face, t, weights, _, _ = _ray_cast(cams, mesh.triangles)
    both = (out.opacity[..., 0] > 0) & (face >= 0)
    assert both.sum() > 0.95 * (face >= 0).sum()
    corner_normals = torch.tensor(_area_weighted_vertex_normals(mesh))[torch.tensor(np.array(mesh.faces))]
    expected = (weights[..., None] * corner_normals[face.clamp_min(0)]).sum(-2)
    expected = torch.nn.functional.normalize(expected, dim=-1)
    # Perspective-correct barycentrics equal the ray cast's, so the interpolated normals agree closely
    # (measured: normal 2e-6, depth 1.3e-6).
    torch.testing.assert_close(out.normal[both].double(), expected[both], atol=2e-5, rtol=0)
    torch.testing.assert_close(out.depth[..., 0][both].double(), t[both], atol=1e-5, rtol=0)
    # Vertex normals are smooth: closer to the true sphere normal than the flat facets are.
    flat = _renderer(mesh, normal="face", antialias=False)(cams).normal.detach()
    origins, dirs = get_rays(cams)
    radial = torch.nn.functional.normalize(origins + dirs * out.depth, dim=-1)[both]
    smooth_err = (1 - (out.normal[both] * radial).sum(-1)).mean()
    flat_err = (1 - (flat[both] * radial).sum(-1)).mean()
    assert smooth_err < 0.25 * flat_err


def test_antialias_blends_only_silhouette_pixels_and_keeps_ratios():
    # The cube: nvdiffrast (and the twin) blend only where the pixel's own triangle has the silhouette edge,
    # which on a fine sphere at this size is a minority of the outline pixels.
    mesh, cams = _cube(), _cameras()
    r = _renderer(mesh)
    with torch.no_grad():
        aa = r(cams)
        r.cfg.antialias = False
        hard = r(cams)
    interior = _interior(hard.opacity[..., 0] > 0)
    for name in ("rgb", "opacity", "depth", "normal"):
        a, h = getattr(aa, name), getattr(hard, name)
        torch.testing.assert_close(a[interior], h[interior], atol=0, rtol=0)
    soft = (aa.opacity > 0.02) & (aa.opacity < 0.98)
    assert soft.sum() > 20 and aa.opacity.min() >= 0 and aa.opacity.max() <= 1
    assert aa.rgb.min() >= 0 and aa.rgb.max() <= 1
    # Premultiplied channels: at a blended pixel depth / opacity is still a distance to the surface.
    ratio, distances = aa.depth[soft] / aa.opacity[soft], hard.depth[hard.opacity > 0]
    assert ratio.min() > distances.min() - 1e-4 and ratio.max() < distances.max() + 1e-4
    unit = (aa.normal[soft[..., 0]] / aa.opacity[soft][:, None]).norm(dim=-1)
    assert (unit - 1).abs().max() < 1e-4  # a background neighbour blends in a zero normal


def test_mask_and_colour_loss_moves_a_shifted_mesh_back():
    mesh = _sphere(1, radius=0.5)
    # Side, front and top views: every axis of the shift moves the outline in at least one image.
    cams = make_cameras(torch.tensor([10.0, 10.0, 70.0]), torch.tensor([0.0, 90.0, 45.0]), 2.4, 45.0, 24, 24)
    with torch.no_grad():
        goal = _renderer(mesh)(cams, background_color=torch.ones(3))
    shift = torch.tensor([0.06, -0.05, 0.04])
    r = _renderer(mesh)
    with torch.no_grad():
        r.geometry.translation.copy_(shift)

    def loss_fn():
        out = r(cams, background_color=torch.ones(3))
        return ((out.rgb - goal.rgb) ** 2).mean() + ((out.opacity - goal.opacity) ** 2).mean()

    loss_fn().backward()
    vertex_grad = r.geometry.vertices.grad
    assert (vertex_grad.norm(dim=-1) > 0).sum() > 20  # the outline's vertices all receive gradients
    translation_grad = vertex_grad.sum(0)  # d loss / d (rigid translation) from the per-vertex gradients
    cos = torch.dot(translation_grad, shift) / (translation_grad.norm() * shift.norm())
    assert cos > 0.9  # measured 0.95: the descent direction points back along the shift
    torch.testing.assert_close(r.geometry.translation.grad, translation_grad)
    opt = torch.optim.SGD([r.geometry.translation], lr=0.15)
    losses = []
    for _ in range(10):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # Measured: loss 0.040 → 1e-4, |translation| 0.088 → 8e-4.
    assert losses[-1] < 0.05 * losses[0] and r.geometry.translation.norm() < 0.1 * shift.norm()


def test_lambertian_shading_matches_the_formula_for_a_known_light():
    mesh, cams = _cube(), _cameras()
    cams.light_position = torch.tensor([[3.0, 1.0, 2.0], [-1.0, 2.0, 3.0]])
    r = _renderer(mesh, DiffuseWithPointLight(), normal="face", antialias=False)
    with torch.no_grad():
        lit = r(cams, shading="lambertian", background_color=torch.zeros(3))
        flat = r(cams, shading="albedo", background_color=torch.zeros(3))
        white = r(cams, shading="textureless", background_color=torch.zeros(3))
    face, t, _, origins, dirs = _ray_cast(cams, mesh.triangles)
    both = (lit.opacity[..., 0] > 0) & (face >= 0)
    points = origins + dirs * t[..., None]
    light = cams.light_position.double()[:, None, None].expand_as(points)
    to_light = torch.nn.functional.normalize(light - points, dim=-1)
    n = torch.tensor(np.array(mesh.face_normals))[face.clamp_min(0)]
    diffuse = 0.1 + 0.9 * (n * to_light).sum(-1, keepdim=True).clamp_min(0)  # DreamFusion: ambient + diffuse
    torch.testing.assert_close(
        lit.rgb[both].double(), (albedo_of(points[both]) * diffuse[both]), atol=3e-5, rtol=0
    )
    torch.testing.assert_close(white.rgb[both].double(), diffuse[both].expand(-1, 3), atol=3e-5, rtol=0)
    torch.testing.assert_close(flat.rgb[both].double(), albedo_of(points[both]), atol=2e-5, rtol=0)
    assert (lit.rgb[both] - flat.rgb[both]).abs().max() > 0.1
    # Without light_position the light sits at the camera: a face seen head-on gets nearly full diffuse.
    cams.light_position = None
    with torch.no_grad():
        headlight = r(cams, shading="textureless", background_color=torch.zeros(3))
    centre = headlight.rgb[0, 16, 20]
    assert centre.min() > 0.1 + 0.9 * 0.8


def test_background_shows_where_empty():
    mesh, cams = _sphere(), _cameras()
    r = _renderer(mesh)
    for colour in (torch.zeros(3), torch.ones(3), torch.tensor([[0.2, 0.4, 0.6], [1.0, 0.0, 0.5]])):
        with torch.no_grad():
            out = r(cams, background_color=colour)
        empty = (out.opacity[..., 0] == 0) & _interior(out.opacity[..., 0] > 0)
        expected = colour.expand(2, 3)[:, None, None].expand(2, 32, 40, 3)
        assert empty.sum() > 500
        assert torch.equal(out.rgb[empty], expected[empty])
        assert torch.equal(out.extras["background"], expected)
    with torch.no_grad():
        default = r(cams)  # no colour and no background module: white, like the other renderers
    assert (default.rgb[default.opacity[..., 0] == 0] == 1).all()


def test_empty_mesh_renders_background_and_still_backwards():
    r = MeshRenderer(MeshRendererConfig(backend="torch"), StandInMesh(np.zeros((0, 3)), np.zeros((0, 3))))
    cams = _cameras(16, 16)
    out = r(cams, background_color=torch.tensor([0.3, 0.5, 0.7]))
    assert (out.opacity == 0).all() and (out.depth == 0).all() and (out.normal == 0).all()
    torch.testing.assert_close(out.rgb, torch.tensor([0.3, 0.5, 0.7]).expand(2, 16, 16, 3))
    losses = r.regularizers(out, {"normal_consistency", "laplacian"})
    loss = ((out.rgb - 1) ** 2).mean() + out.opacity.mean() + sum(losses.values())
    loss.backward()  # connected to the (empty) parameters: no "does not require grad"
    assert r.geometry.vertices.grad.shape == (0, 3)


def test_regularizers_come_from_the_rendered_mesh():
    mesh = _sphere(1)
    r = _renderer(mesh)
    out = r(_cameras(16, 16))
    assert set(r.loss_names) == {"normal_consistency", "laplacian"}
    values = r.regularizers(out, {"normal_consistency", "laplacian"})
    v, f = r.geometry.vertices, r.geometry.faces
    assert values["normal_consistency"].item() == pytest.approx(normal_consistency(v, f).item())
    assert values["laplacian"].item() == pytest.approx(laplacian_smoothness(v, f).item())
    assert r.regularizers(out, {"laplacian"}).keys() == {"laplacian"} and r.regularizers(out, set()) == {}
    values["normal_consistency"].backward()
    assert r.geometry.vertices.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="mesh_vertices"):
        r.regularizers(type(out)(out.rgb, out.opacity, out.depth), {"laplacian"})


def test_config_is_validated_and_normals_are_optional():
    with pytest.raises(ValueError, match="renderer.normal"):
        MeshRendererConfig(normal="smooth").validate()
    with pytest.raises(ValueError, match="backend"):
        MeshRendererConfig(backend="opengl").validate()
    with pytest.raises(ValueError, match="near"):
        MeshRendererConfig(near=0.0).validate()
    with torch.no_grad():
        out = _renderer(_cube(), return_normal=False)(_cameras(12, 12))
    assert out.normal is None and out.rgb.shape == (2, 12, 12, 3) and out.depth.shape == (2, 12, 12, 1)
