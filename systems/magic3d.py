"""The Magic3D recipe (Lin et al. 2023): a coarse NeRF, then a DMTet mesh refined at high resolution.

Both stages are BaseSystem's loop; what makes the fine stage is its components — `DMTetGeometry` (SDF +
deformation on a tet grid, marching tetrahedra each forward), `MeshRenderer` (rasterized, anti-aliased
silhouettes), the normal-consistency and Laplacian regularizers — and the stage converter: the DMTet starts from
the NeRF (`DMTetGeometry.init_from`: SDF from its export surface, colour field copied). ProlificDreamer's stages 2–3 use
the same components (SDS on normal maps, then VSD on a fixed geometry's texture).
"""

from __future__ import annotations

from systems.base import BaseSystem


class Magic3D(BaseSystem):
    """Coarse-to-fine text-to-3D (also `demo-dmtet` on the oracle prior and ProlificDreamer's mesh stages)."""
