"""Analytic silhouette anti-aliasing in pure torch: the twin of nvdiffrast's `antialias` (Laine et al. 2020, §4).

Hand-written because nvdiffrast builds and runs only on CUDA, and no CPU library turns point-sampled coverage
into vertex-position gradients in torch. Rasterization is point-sampled, so coverage changes in jumps and gives
no gradient; this operation blends colours across silhouette edges by the edge's analytic coverage of the pixel,
which makes the image continuous in (and so differentiable with respect to) the vertex positions.

Semantics follow nvdiffrast's:
- every pixel is paired with its right and its next-row neighbour; pairs whose triangle ids differ are examined;
- the pair's *front* triangle is the one of the two pixels that is not background, or has the smaller z/w;
- of that triangle's edges that cross the row (column) through its pixel centre, the one crossing furthest
  towards the neighbour is taken, and only if it is a silhouette edge: no single neighbouring triangle
  (boundary, non-manifold or degenerate), or the neighbour folds behind, i.e. its third vertex lies on the same
  side of the edge in screen space as the triangle's own (the "wing" test; winding-independent). An edge shared
  by two triangles of one surface never blends;
- only edges steeper than 45° count for horizontal pairs (flatter ones are handled by the vertical pairs);
- with dc ∈ [0, 1] the distance (pixels) from the front pixel's centre to the crossing, the front pixel takes
  (0.5 − dc) of the other colour when dc < 0.5, else the other pixel takes (dc − 0.5) of the front colour.
  Crossings up to 1/16 pixel outside [0, 1] are clamped; at the clamp the position gradient is zero.
Adjacency is by vertex index, as in nvdiffrast: a mesh whose triangles do not share vertex indices is all
silhouette edges.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

CROSSING_TOLERANCE = 1.0 / 16.0  # nvdiffrast: expect no more than 1/16 pixel inaccuracy of a crossing


def antialias_topology(tri: Int[Tensor, "F 3"]) -> Int[Tensor, "F 3"]:
    """Opposite vertices: opp[f, k] is the third vertex of the triangle across edge k of face f (edge k joins
    vertices k+1 and k+2), or tri[f, k] itself where the edge has no single neighbour (always a silhouette).

    Computed once per topology; pass it to `antialias(..., topology=)` to skip the sort on every call.
    """
    tri = tri.long()
    n = 3 * tri.shape[0]
    a, b = tri.roll(-1, dims=1), tri.roll(-2, dims=1)
    num_vertices = int(tri.max()) + 1 if n else 1
    key = (torch.minimum(a, b) * num_vertices + torch.maximum(a, b)).flatten()
    # A face with a repeated vertex takes part in no adjacency (nvdiffrast skips such faces too).
    degenerate = (tri == tri.roll(1, dims=1)).any(1).repeat_interleave(3)
    entry = torch.arange(n, device=tri.device)
    key = torch.where(degenerate, -1 - entry, key)
    order = torch.argsort(key, stable=True)
    sorted_key = key[order]
    _, inverse, counts = torch.unique_consecutive(sorted_key, return_inverse=True, return_counts=True)
    # Exactly two faces on an edge sit next to each other in sorted order; three or more stay silhouettes.
    first = ((sorted_key[1:] == sorted_key[:-1]) & (counts[inverse][:-1] == 2)).nonzero()[:, 0]
    partner = entry.clone()
    partner[order[first]] = order[first + 1]
    partner[order[first + 1]] = order[first]
    return tri.flatten()[partner].view(-1, 3)


def _cross2(a: Float[Tensor, "*N 2"], b: Float[Tensor, "*N 2"]) -> Float[Tensor, "*N"]:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _screen(
    pos: Float[Tensor, "*N 4"], center: Float[Tensor, "*N 2"], height: int, width: int
) -> Float[Tensor, "*N 2"]:
    """Pixel-unit screen position relative to a pixel centre (x right, y along increasing rows)."""
    half = pos.new_tensor([0.5 * width, 0.5 * height])
    return (pos[..., :2] / pos[..., 3:] + 1.0) * half - center


def _crossing(
    a: Float[Tensor, "*N 2"], b: Float[Tensor, "*N 2"], toward: Float[Tensor, "*N"]
) -> Float[Tensor, "*N"]:
    """Signed distance along x (times `toward` = ±1) at which the line a→b crosses y = 0 (b.y ≠ a.y)."""
    dx, dy = b[..., 0] - a[..., 0], b[..., 1] - a[..., 1]
    return toward * (a[..., 0] * dy - a[..., 1] * dx) / dy


@torch.no_grad()
def _silhouette_crossings(
    rast: Float[Tensor, "B H W 4"], pos_clip: Float[Tensor, "B V 4"], tri: Tensor, opp: Tensor
) -> tuple[Tensor, ...]:
    """The pixel pairs that blend: (pixel0, pixel1, is_vertical, front_is_pixel1, batch, centre, edge vertices)."""
    B, H, W, _ = rast.shape
    device = rast.device
    ids = rast[..., 3].long() - 1
    depth = rast[..., 2].flatten()
    index = torch.arange(B * H * W, device=device).view(B, H, W)
    p0 = torch.cat(
        [index[:, :, :-1][ids[:, :, :-1] != ids[:, :, 1:]], index[:, :-1][ids[:, :-1] != ids[:, 1:]]]
    )
    vertical = torch.arange(p0.shape[0], device=device) >= int((ids[:, :, :-1] != ids[:, :, 1:]).sum())
    p1 = p0 + torch.where(vertical, W, 1)
    t0, t1 = ids.flatten()[p0], ids.flatten()[p1]
    front1 = (t0 < 0) | ((t1 >= 0) & ~(depth[p0] < depth[p1]))
    face = torch.where(front1, t1, t0)
    pixel = torch.where(front1, p1, p0)
    toward = torch.where(front1, -1.0, 1.0).to(pos_clip.dtype)  # +x is towards pixel1
    batch = pixel // (H * W)
    center = torch.stack([pixel % W, (pixel // W) % H], -1).to(pos_clip.dtype) + 0.5
    vi, oi = tri[face], opp[face]  # (N, 3)
    center3 = center[:, None].expand(-1, 3, -1)
    v = _screen(pos_clip[batch[:, None], vi], center3, H, W)  # (N, 3, 2)
    o = _screen(pos_clip[batch[:, None], oi], center3, H, W)
    own = _cross2(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    va, vb = v.roll(-1, dims=1), v.roll(-2, dims=1)  # edge k = (vertex k+1, vertex k+2)
    wing = _cross2(va - o, vb - o)  # the opposite vertex's side of edge k; o = v_k itself on a boundary
    silhouette = (wing >= 0) == (own >= 0)[:, None]
    # Vertical pairs are horizontal pairs with x and y swapped.
    va = torch.where(vertical[:, None, None], va.flip(-1), va)
    vb = torch.where(vertical[:, None, None], vb.flip(-1), vb)
    dx, dy = vb[..., 0] - va[..., 0], vb[..., 1] - va[..., 1]
    straddles = (va[..., 1] >= 0) != (vb[..., 1] >= 0)
    safe_b = torch.where(straddles[..., None], vb, va + torch.tensor([0.0, 1.0], device=device))
    score = torch.where(straddles, _crossing(va, safe_b, toward[:, None].expand(-1, 3)), -torch.inf)
    edge = score.argmax(1, keepdim=True)
    dc = score.gather(1, edge)[:, 0]
    steep = (dy.abs() >= dx.abs()).gather(1, edge)[:, 0]
    keep = (
        silhouette.gather(1, edge)[:, 0] & steep & (dc > -CROSSING_TOLERANCE) & (dc < 1 + CROSSING_TOLERANCE)
    )
    ends = torch.cat([vi.roll(-1, dims=1).gather(1, edge), vi.roll(-2, dims=1).gather(1, edge)], 1)
    return p0[keep], p1[keep], vertical[keep], toward[keep], batch[keep], center[keep], ends[keep]


def antialias(
    color: Float[Tensor, "B H W C"],
    rast: Float[Tensor, "B H W 4"],
    pos_clip: Float[Tensor, "*b V 4"],
    tri: Int[Tensor, "F 3"],
    topology: Int[Tensor, "F 3"] | None = None,
    pos_gradient_boost: float = 1.0,
) -> Float[Tensor, "B H W C"]:
    """nvdiffrast's `antialias(color, rast, pos, tri)`: colours blended across silhouette edges.

    pos_clip and tri must be the ones `rast` was rasterized from; pos_clip may be (V, 4) for every image.
    topology: `antialias_topology(tri)`, if precomputed. pos_gradient_boost multiplies the gradient sent to
    pos_clip, as nvdiffrast's argument of that name.
    """
    B, H, W, C = color.shape
    if pos_clip.dim() == 2:
        pos_clip = pos_clip[None]
    pos_clip = pos_clip.expand(B, -1, -1)
    if pos_gradient_boost != 1.0 and pos_clip.requires_grad:
        pos_clip = pos_clip.clone()
        pos_clip.register_hook(lambda grad: grad * pos_gradient_boost)
    tri = tri.long()
    opp = antialias_topology(tri) if topology is None else topology.long()
    p0, p1, vertical, toward, batch, center, ends = _silhouette_crossings(
        rast.detach(), pos_clip.detach(), tri, opp
    )
    # The crossing again, with autograd: it carries the silhouette gradient to the edge's two vertices.
    a, b = _screen(pos_clip[batch[:, None], ends], center[:, None].expand(-1, 2, -1), H, W).unbind(1)
    a = torch.where(vertical[:, None], a.flip(-1), a)
    b = torch.where(vertical[:, None], b.flip(-1), b)
    dc = _crossing(a, b, toward).clamp(0.0, 1.0)
    alpha = toward * (0.5 - dc)
    target = torch.where(alpha.detach() > 0, p0, p1)
    flat = color.reshape(-1, C)
    delta = alpha[:, None].to(color.dtype) * (flat[p1] - flat[p0])
    return flat.index_add(0, target, delta).view(B, H, W, C)
