"""The torch twin of nvdiffrast (rasterize / interpolate / antialias) against a ray-cast reference, finite
differences, silhouette behaviour, and (on a GPU with nvdiffrast) nvdiffrast itself."""

from __future__ import annotations

import pytest
import torch

from geometry.cameras import get_rays, make_cameras, mvp_matrix
from geometry.mesh import raster_torch
from geometry.mesh.antialias_torch import antialias, antialias_topology
from geometry.mesh.raster import MeshRasterizer, clip_space
from geometry.mesh.raster_torch import interpolate, rasterize


def _ray_cast(origins, dirs, tris):
    """Möller–Trumbore (1997) for every (ray, triangle): nearest hit id (−1 = none), weights of v0, v1, v2, t."""
    o, d = origins.reshape(-1, 1, 3), dirs.reshape(-1, 1, 3)
    v0, v1, v2 = tris[None, :, 0], tris[None, :, 1], tris[None, :, 2]
    e1, e2 = v1 - v0, v2 - v0
    d, e1, e2 = torch.broadcast_tensors(d, e1, e2)
    pvec = torch.cross(d, e2, dim=-1)
    det = (e1 * pvec).sum(-1)
    inv = 1.0 / det
    tvec = o - v0
    a = (tvec * pvec).sum(-1) * inv
    qvec = torch.cross(tvec.expand_as(e1), e1, dim=-1)
    b = (d * qvec).sum(-1) * inv
    t = (e2 * qvec).sum(-1) * inv
    hit = (det.abs() > 1e-12) & (a >= 0) & (b >= 0) & (a + b <= 1) & (t > 0)
    t = torch.where(hit, t, torch.inf)
    t_near, face = t.min(-1)
    face = torch.where(torch.isfinite(t_near), face, -1)
    a, b = a.gather(1, face.clamp_min(0)[:, None])[:, 0], b.gather(1, face.clamp_min(0)[:, None])[:, 0]
    weights = torch.stack([1 - a - b, a, b], -1)
    return face, weights, t_near, hit.sum(-1)


def test_matches_ray_cast_reference_ids_barycentrics_depth_and_attributes():
    gen = torch.Generator().manual_seed(0)
    verts = (torch.rand(24, 3, generator=gen, dtype=torch.float64) - 0.5) * 1.6
    tri = torch.arange(24).view(8, 3)
    attr = torch.rand(24, 5, generator=gen, dtype=torch.float64)
    cams = make_cameras(torch.tensor([10.0, -25.0]), torch.tensor([30.0, 200.0]), 3.0, 50.0, 40, 48)
    cams.c2w = cams.c2w.double()
    cams.fovy = cams.fovy.double()
    pos = clip_space(verts, cams)
    rast = rasterize(pos, tri, 40, 48)
    out = interpolate(attr, rast, tri)
    origins, dirs = get_rays(cams)
    for b in range(2):
        face, weights, t, layers = _ray_cast(origins[b].double(), dirs[b].double(), verts[tri])
        ids = rast[b, ..., 3].flatten().long() - 1
        assert (layers > 1).sum() > 50  # overlapping triangles: the depth test is exercised
        assert (face >= 0).float().mean() > 0.08
        agree = ids == face
        assert agree.float().mean() > 0.99  # only pixel centres within rounding of an edge may differ
        hit = agree & (face >= 0)
        bary = rast[b, ..., :2].reshape(-1, 2)[hit]
        torch.testing.assert_close(bary, weights[hit, :2], atol=1e-9, rtol=0)
        # z/w of the world-space hit point through the same projection.
        point = origins[b].reshape(-1, 3).double() + t[:, None] * dirs[b].reshape(-1, 3).double()
        clip = torch.nn.functional.pad(point, (0, 1), value=1.0) @ mvp_matrix(cams[b])[0].T
        torch.testing.assert_close(
            rast[b, ..., 2].flatten()[hit], (clip[:, 2] / clip[:, 3])[hit], atol=1e-9, rtol=0
        )
        expected = (weights[:, :, None] * attr[tri[face.clamp_min(0)]]).sum(1)
        torch.testing.assert_close(out[b].reshape(-1, 5)[hit], expected[hit], atol=1e-9, rtol=0)
        background = ids < 0
        assert (out[b].reshape(-1, 5)[background] == 0).all() and (
            rast[b].reshape(-1, 4)[background] == 0
        ).all()


def test_row_zero_is_the_top_of_the_image_and_plain_clip_space_is_bottom_up():
    # A triangle above the origin (world z-up), seen from the side: upper half of the image after clip_space.
    verts = torch.tensor([[0.0, -0.3, 0.4], [0.0, 0.3, 0.4], [0.0, 0.0, 0.8]])
    tri = torch.tensor([[0, 1, 2]])
    cams = make_cameras(0.0, 0.0, 3.0, 40.0, 32)
    rows = (rasterize(clip_space(verts, cams), tri, 32, 32)[0, ..., 3] > 0).nonzero()[:, 0]
    assert len(rows) > 0 and rows.max() < 16
    rows_gl = (rasterize(clip_space(verts, cams, flip_y=False), tri, 32, 32)[0, ..., 3] > 0).nonzero()[:, 0]
    assert rows_gl.min() >= 16


def test_chunked_z_buffer_equals_single_pass(monkeypatch):
    gen = torch.Generator().manual_seed(1)
    pos = torch.cat([torch.rand(1, 60, 2, generator=gen) * 2 - 1, torch.rand(1, 60, 1, generator=gen)], -1)
    pos = torch.nn.functional.pad(pos, (0, 1), value=1.0)
    tri = torch.randint(0, 60, (40, 3), generator=gen)
    full = rasterize(pos, tri, 24, 24)
    monkeypatch.setattr(raster_torch, "PAIRS_PER_CHUNK", 37)
    assert torch.equal(rasterize(pos, tri, 24, 24), full)


def _perspective_triangles():
    # Two triangles with different w per vertex (a perspective view), covering most of a 16² image.
    pos = torch.tensor(
        [[[-1.5, -1.2, 0.2, 1.6], [1.1, -0.9, 0.5, 1.2], [0.2, 1.3, 0.3, 1.0], [-1.0, 1.4, -0.2, 1.4]]],
        dtype=torch.float64,
    )
    tri = torch.tensor([[0, 1, 2], [0, 2, 3]])
    return pos, tri


def test_interpolate_gradients_match_finite_differences():
    pos, tri = _perspective_triangles()
    attr = torch.tensor([[0.3, 1.0], [0.9, -0.5], [0.1, 0.4], [0.7, 0.2]], dtype=torch.float64)
    rast = rasterize(pos, tri, 16, 16)
    u, v = rast[..., 0], rast[..., 1]
    # Pixels well inside a triangle keep their triangle under the finite-difference perturbation.
    interior = (rast[..., 3] > 0) & (u > 0.05) & (v > 0.05) & (1 - u - v > 0.05)
    assert interior.sum() > 60

    def f(p, a):
        out = interpolate(a, rasterize(p, tri, 16, 16), tri)
        return out[interior]

    assert torch.autograd.gradcheck(
        f, (pos.clone().requires_grad_(), attr.clone().requires_grad_()), eps=1e-6, atol=1e-6
    )


def test_depth_carries_no_gradient_as_in_nvdiffrast():
    pos, tri = _perspective_triangles()
    pos.requires_grad_()
    rast = rasterize(pos, tri, 16, 16)
    (g_depth,) = torch.autograd.grad(rast[..., 2].sum(), pos, retain_graph=True, allow_unused=True)
    assert g_depth is None or (g_depth == 0).all()
    (g_bary,) = torch.autograd.grad(rast[..., :2].sum(), pos)
    assert g_bary[..., [0, 1, 3]].abs().sum() > 0 and (g_bary[..., 2] == 0).all()


def _square(center, half=0.4):
    cx, cy = center
    verts = torch.tensor(
        [[cx - half, cy - half], [cx + half, cy - half], [cx + half, cy + half], [cx - half, cy + half]]
    )
    pos = torch.nn.functional.pad(verts, (0, 1), value=0.0)
    return torch.nn.functional.pad(pos, (0, 1), value=1.0)[None], torch.tensor([[0, 1, 2], [0, 2, 3]])


def _render_flat(pos, tri, size):
    rast = rasterize(pos, tri, size, size)
    white = interpolate(torch.ones(pos.shape[1], 1), rast, tri)
    return antialias(white, rast, pos, tri)


def test_silhouette_gradient_moves_a_square_towards_its_target():
    size, px = 32, 2.0 / 32  # one pixel in NDC
    # Edges at fractional pixel positions, target shifted by two pixels in x and one row in y.
    target = _render_flat(*_square((0.013, -0.021)), size).detach()
    pos, tri = _square((0.013 - 2 * px, -0.021 - px))
    pos.requires_grad_()
    loss = (_render_flat(pos, tri, size) - target).square().mean()
    loss.backward()
    grad = pos.grad[0]
    # Every vertex should move towards +x and +y (increasing rows): both gradients negative at all four.
    assert (grad[:, 0] < 0).all() and (grad[:, 1] < 0).all(), grad
    with torch.no_grad():
        stepped = pos - 0.2 * px * grad / grad[:, :2].abs().max()
        assert (_render_flat(stepped, tri, size) - target).square().mean() < loss


def test_antialiased_coverage_integrates_to_the_area_and_its_gradient_to_the_edge_length():
    size = 32
    # Rotated square: the point-sampled image counts pixel centres, the antialiased one approximates the area.
    pos, tri = _square((0.013, -0.021), half=0.5)
    angle = torch.tensor(0.3)
    rot = torch.stack([torch.stack([angle.cos(), -angle.sin()]), torch.stack([angle.sin(), angle.cos()])])
    pos[0, :, :2] = pos[0, :, :2] @ rot.T
    area = (0.5 * size) ** 2  # side 1.0 in NDC = size / 2 pixels
    assert abs(float(_render_flat(pos, tri, size).sum()) - area) < 1.0
    # Axis-aligned: moving the right edge by one pixel adds one pixel per covered row (NDC → px: size / 2).
    pos, tri = _square((0.013, -0.021), half=0.4)
    pos.requires_grad_()
    _render_flat(pos, tri, size).sum().backward()
    rows = 0.8 * size / 2
    assert abs(float(pos.grad[0, [1, 2], 0].sum()) - rows * size / 2) <= size / 2


def _face_colors(pos, tri, size):
    rast = rasterize(pos, tri, size, size)
    ids = rast[..., 3:].long()
    palette = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    return rast, palette[ids[..., 0]]


def _next_to_background(rast):
    bg = torch.nn.functional.pad((rast[0, ..., 3] == 0).float()[None, None], (1, 1, 1, 1), value=1.0)
    near = torch.nn.functional.max_pool2d(bg, 3, stride=1)[0, 0] > 0
    return near


def test_interior_edges_do_not_blend_but_unshared_edges_do():
    size = 24
    pos, tri = _square((0.01, 0.02), half=0.6)
    rast, color = _face_colors(pos, tri, size)
    changed = (antialias(color, rast, pos, tri) != color).any(-1)[0]
    assert changed.any()  # the outer boundary blends...
    assert not (changed & ~_next_to_background(rast)).any()  # ...the diagonal between red and blue does not
    # The same quad with the diagonal's vertices duplicated: no shared indices, so the diagonal is a silhouette.
    split = pos[:, [0, 1, 2, 0, 2, 3]]
    tri_split = torch.tensor([[0, 1, 2], [3, 4, 5]])
    rast_s, color_s = _face_colors(split, tri_split, size)
    changed_s = (antialias(color_s, rast_s, split, tri_split) != color_s).any(-1)[0]
    assert (changed_s & ~_next_to_background(rast_s)).any()


def test_edges_over_a_farther_surface_and_folded_edges_are_silhouettes():
    size = 24
    # A small triangle in front of a large quad: its edges blend against the quad, not only the background.
    quad, quad_tri = _square((0.0, 0.0), half=0.9)
    quad[..., 2] = 0.5
    front = torch.tensor([[[-0.3, -0.3, -0.5, 1.0], [0.4, -0.2, -0.5, 1.0], [0.0, 0.45, -0.5, 1.0]]])
    pos = torch.cat([quad, front], 1)
    tri = torch.cat([quad_tri, torch.tensor([[4, 5, 6]])])
    rast, color = _face_colors(pos, tri, size)
    assert (rast[..., 3] == 3).any()
    changed = (antialias(color, rast, pos, tri) != color).any(-1)[0]
    assert (changed & ~_next_to_background(rast)).any()
    # Two triangles sharing the edge (1, 2), the second folded behind the first (its third vertex on the same
    # side of the edge, farther away): the shared edge is a silhouette against the background on its right.
    fold = torch.tensor(
        [[[-0.6, -0.6, 0.0, 1.0], [0.6, -0.6, 0.0, 1.0], [0.0, 0.6, 0.0, 1.0], [-0.9, 0.3, 0.5, 1.0]]]
    )
    fold_tri = torch.tensor([[0, 1, 2], [2, 1, 3]])
    opp = antialias_topology(fold_tri)
    assert opp.tolist() == [
        [3, 1, 2],
        [2, 1, 0],
    ]  # across the shared edge each face sees the other's third vertex
    rast_f, color_f = _face_colors(fold, fold_tri, size)
    alone, alone_tri = fold[:, :3], fold_tri[:1]
    rast_a, color_a = _face_colors(alone, alone_tri, size)
    right = slice(size // 2 + 1, None)  # the folded face hides behind the first one there
    assert torch.equal(rast_f[:, :, right], rast_a[:, :, right])
    out_f = antialias(color_f, rast_f, fold, fold_tri, topology=opp)[:, :, right]
    out_a = antialias(color_a, rast_a, alone, alone_tri)[:, :, right]
    assert (out_f != color_f[:, :, right]).any()
    torch.testing.assert_close(out_f, out_a, atol=0, rtol=0)


def test_dispatcher_backends_on_cpu():
    pos, tri = _square((0.0, 0.0))
    for backend in ("auto", "torch"):
        r = MeshRasterizer(backend)
        rast = r.rasterize(pos, tri, 8, 8)
        assert torch.equal(rast, rasterize(pos, tri, 8, 8))
        col = r.interpolate(torch.ones(4, 2), rast, tri)
        assert r.antialias(col, rast, pos, tri).shape == (1, 8, 8, 2)
    with pytest.raises(RuntimeError, match="CUDA"):
        MeshRasterizer("cuda").rasterize(pos, tri, 8, 8)
    with pytest.raises(ValueError, match="backend"):
        MeshRasterizer("opengl")


@pytest.mark.gpu
def test_torch_twin_matches_nvdiffrast_values_and_gradients():
    pytest.importorskip("nvdiffrast.torch")
    trimesh = pytest.importorskip("trimesh")
    dev, H = "cuda", 96
    gen = torch.Generator().manual_seed(3)
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.7)
    verts = torch.tensor(sphere.vertices, dtype=torch.float32)
    verts = (verts + 0.03 * torch.randn(verts.shape, generator=gen)).to(dev)  # break the symmetry
    tri = torch.tensor(sphere.faces, dtype=torch.int32, device=dev)
    attr = torch.rand(verts.shape[0], 3, generator=gen).to(dev)
    cams = make_cameras(torch.tensor([15.0, -30.0]), torch.tensor([20.0, 140.0]), 2.2, 45.0, H).to(dev)
    weight = torch.rand(2, H, H, 3, generator=gen).to(dev)
    results = {}
    for backend in ("torch", "cuda"):
        r = MeshRasterizer(backend)
        pos = clip_space(verts, cams).detach().requires_grad_()
        a = attr.clone().requires_grad_()
        rast = r.rasterize(pos, tri, H, H)
        col = r.interpolate(a, rast, tri)
        aa = r.antialias(col, rast, pos, tri)
        (aa * weight).sum().backward()
        results[backend] = (rast.detach(), col.detach(), aa.detach(), pos.grad, a.grad)
    (rt, ct, at, gpt, gat), (rn, cn, an, gpn, gan) = results["torch"], results["cuda"]
    ids_t, ids_n = rt[..., 3], rn[..., 3]
    agree = ids_t == ids_n
    # nvdiffrast snaps vertices to a 1/16-pixel grid before coverage (cudaraster's CR_SUBPIXEL_LOG2 = 4), the twin
    # does not: a pixel centre within ~1/32 px of an edge may go to the other triangle. With 320 faces at 96²
    # (edges ~7 px) that is expected for ~0.6 % of the pixels; 2 % leaves margin.
    assert agree.float().mean() > 0.98
    hit = agree & (ids_n > 0)
    # float32 barycentrics from different (but exact) formulas: ~1e-6; 1e-4 covers the subpixel snapping.
    assert (rt[..., :2] - rn[..., :2]).abs()[hit].max() < 1e-4
    assert (rt[..., 2] - rn[..., 2]).abs()[hit].max() < 1e-4  # z/w in [−1, 1]
    assert (ct - cn).abs()[hit].max() < 1e-4
    # Antialiasing also differs next to a pixel whose id differs (up to its 4 neighbours' pairs); elsewhere both
    # compute the same crossing from the same float positions.
    close = ((at - an).abs() < 1e-3).all(-1)
    assert close.float().mean() > 0.97
    # Attribute gradients: the same pixels weigh the same vertices (up to the disagreeing ~1 %).
    assert (gat - gan).norm() / gan.norm() < 0.05
    # Position gradients: both come from u, v (interior) and from silhouette crossings; the few pixels whose
    # id or blend differ perturb them a little, so compare direction and magnitude rather than entries.
    cos = torch.nn.functional.cosine_similarity(gpt.flatten(), gpn.flatten(), dim=0)
    assert cos > 0.95 and 0.9 < gpt.norm() / gpn.norm() < 1.1
    assert (gpt[..., 2] == 0).all()  # z/w carries no gradient in either
