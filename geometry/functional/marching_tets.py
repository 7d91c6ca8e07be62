"""Differentiable marching tetrahedra (Shen et al. 2021, "Deep Marching Tetrahedra", DMTet §3.1.2).

Hand-written: kaolin's `marching_tetrahedra` does this but is not installable here (DESIGN.md §4), and no
installable library extracts a tet-grid iso-surface differentiably in CPU torch.

Sign convention: sdf < 0 inside, sdf ≥ 0 outside. An exact zero counts as outside, so every grid vertex has
one of two states, every tet falls in one of the 16 sign configurations, and the surface is a manifold.
Each output vertex sits on a grid edge (a, b) whose endpoints differ in sign, at the zero of the linear
interpolant (DMTet eq. 2): p = (p_a·s_b − p_b·s_a) / (s_b − s_a). It is a smooth function of the four
numbers (p_a, p_b, s_a, s_b), so gradients reach both the SDF and the (deformed) vertex positions. One vertex
is made per unique crossed edge, so neighbouring tets share it and the mesh is watertight.

Faces are counter-clockwise seen from outside (normals point toward positive SDF), the winding of the
project's Mesh type (geometry/mesh/mesh.py). This requires positively oriented tets
(det(p1 − p0, p2 − p0, p3 − p0) > 0), which geometry/dmtet/tet_grid.py guarantees.
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

# The six edges of a tet as pairs of local corners; a triangle table entry names edges by position here.
TET_EDGES: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))


def _build_triangle_table() -> np.ndarray:
    """(16, 2, 3) local edge indices of the triangles for each sign code (−1 pads a missing triangle).

    Code bit i is set when corner i is inside. Built by construction on the reference tet
    (0, e_x, e_y, e_z), which is positively oriented: the crossed edges are put in cyclic order around the
    cut (one lone corner → 3 edges from it; 2–2 → a quad whose consecutive edges share a corner), and the
    cycle is reversed when its normal points from outside to inside. Orientation is preserved by every
    orientation-preserving affine map, and any positive tet is the image of the reference under one; the
    crossing points of the linear interpolant always lie on one plane inside the tet (the quad is planar
    and convex), so the same cyclic order is right for every positive tet and every crossing position.
    """
    ref = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float64)
    edge_of = {frozenset(e): k for k, e in enumerate(TET_EDGES)}
    table = np.full((16, 2, 3), -1, dtype=np.int64)
    for code in range(1, 15):
        inside = [i for i in range(4) if code >> i & 1]
        outside = [i for i in range(4) if not code >> i & 1]
        if len(inside) == 2:
            (a, b), (c, d) = inside, outside
            cycle = [edge_of[frozenset(p)] for p in ((a, c), (a, d), (b, d), (b, c))]
        else:
            lone = inside[0] if len(inside) == 1 else outside[0]
            cycle = [edge_of[frozenset((lone, j))] for j in range(4) if j != lone]
        mid = np.array([ref[list(TET_EDGES[e])].mean(0) for e in cycle])
        normal = np.cross(mid[1] - mid[0], mid[2] - mid[0])
        if normal @ (ref[outside].mean(0) - ref[inside].mean(0)) < 0:
            cycle.reverse()
        table[code, 0] = cycle[:3]
        if len(cycle) == 4:
            table[code, 1] = [cycle[0], cycle[2], cycle[3]]  # fan of the convex quad, same winding
    return table


TRIANGLE_TABLE: np.ndarray = _build_triangle_table()
# Number of triangles per code, for counting without building faces.
NUM_TRIANGLES: np.ndarray = (TRIANGLE_TABLE[:, :, 0] >= 0).sum(1)
assert all(NUM_TRIANGLES[c] == (2 if bin(c).count("1") == 2 else 1) for c in range(1, 15))
assert NUM_TRIANGLES[0] == NUM_TRIANGLES[15] == 0


def marching_tets(
    pos: Float[Tensor, "V 3"], sdf: Float[Tensor, "V"], tets: Int[Tensor, "T 4"]
) -> tuple[Float[Tensor, "M 3"], Int[Tensor, "F 3"]]:
    """Iso-surface sdf = 0 of a tet mesh: (vertices (M, 3), faces (F, 3) int64), differentiable in pos and sdf.

    pos: (deformed) grid vertex positions in world units; sdf: signed distance per grid vertex (< 0 inside);
    tets: (T, 4) positively oriented corner indices into pos. Output vertices are one per crossed edge, in
    the order of the edge key (smaller index · V + larger index); faces are CCW seen from outside. Without a
    crossing both outputs are empty ((0, 3)); the empty vertices stay attached to the graph, so a loss over
    them still backpropagates (as zeros).
    """
    device = pos.device
    num_vertices = pos.shape[0]
    inside = sdf < 0
    # uint8 bit-ors: a (T, 4) int64 multiply-and-sum costs ~8× more on the millions of tets of a grid.
    corner_inside = inside[tets].to(torch.uint8)  # (T, 4)
    code = (
        corner_inside[:, 0] | corner_inside[:, 1] << 1 | corner_inside[:, 2] << 2 | corner_inside[:, 3] << 3
    )
    # Only the few tets the surface passes through go further (all-in = 15, all-out = 0).
    crossing = (code > 0) & (code < 15)
    cut_tets, cut_code = tets[crossing], code[crossing].long()
    if cut_tets.shape[0] == 0:
        empty = pos[:0] + sdf[:0, None]
        return empty, torch.zeros((0, 3), dtype=torch.long, device=device)

    ends = cut_tets[:, torch.tensor(TET_EDGES, device=device)]  # (C, 6, 2) grid vertices of each local edge
    lo, hi = ends.min(dim=-1).values, ends.max(dim=-1).values
    crossed = inside[lo] != inside[hi]  # (C, 6)
    # One int64 key per undirected edge, so shared edges of neighbouring tets dedup with a 1-D unique.
    key = lo * num_vertices + hi
    edge_key, edge_vertex = torch.unique(key[crossed], return_inverse=True)
    local_vertex = torch.full_like(key, -1)
    local_vertex[crossed] = edge_vertex

    a, b = edge_key // num_vertices, edge_key % num_vertices
    s_a, s_b = sdf[a].unsqueeze(-1), sdf[b].unsqueeze(-1)
    # DMTet eq. 2. The signs differ (one < 0, the other ≥ 0), so |s_b − s_a| ≥ |negative one| > 0.
    vertices = (pos[a] * s_b - pos[b] * s_a) / (s_b - s_a)

    table = torch.as_tensor(TRIANGLE_TABLE, device=device)[cut_code]  # (C, 2, 3) local edges, −1 = none
    present = table[..., 0] >= 0
    faces = torch.gather(local_vertex.unsqueeze(1).expand(-1, 2, -1), 2, table.clamp_min(0))
    return vertices, faces[present]


def deform_vertices(
    grid_vertices: Float[Tensor, "V 3"],
    deformation_param: Float[Tensor, "V 3"],
    cell_size: float,
    max_fraction: float = 0.5,
) -> Float[Tensor, "V 3"]:
    """DMTet's bounded vertex offsets: grid + max_fraction · cell_size · tanh(param) (world units).

    Each coordinate moves strictly less than max_fraction of a cell, so a vertex never leaves its own
    neighbourhood. With the default 0.5, two neighbours on an axis edge never meet, but a
    tet can flatten or invert, and the marching tets' winding then flips locally. Fractions below 1/6 keep
    every Kuhn tet positive for any offsets (the volume is affine in each corner, so the worst case is a
    corner of the offset box; at exactly 1/6 the worst tet is flat).
    """
    if not 0 <= max_fraction <= 1:
        raise ValueError(f"max_fraction must be in [0, 1] (a fraction of a cell), got {max_fraction}")
    return grid_vertices + (max_fraction * cell_size) * torch.tanh(deformation_param)
