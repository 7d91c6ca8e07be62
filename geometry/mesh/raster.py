"""Differentiable mesh rasterization behind one backend switch: nvdiffrast on CUDA tensors, its torch twin
(raster_torch.py, antialias_torch.py) otherwise, chosen by geometry/backend.py (DESIGN.md §4).

nvdiffrast (NVlabs, Laine et al. 2020) is an optional accelerator, imported lazily and only for CUDA tensors.
Install: `pip install diffrp-nvdiffrast` (a prebuilt packaging on PyPI), or from source with the CUDA toolkit:
`pip install git+https://github.com/NVlabs/nvdiffrast --no-build-isolation`. Licence: NVIDIA Source Code
License, non-commercial (research and evaluation) use only, which is why nothing here requires it: the torch
twin is Apache-2.0 like the rest of the project and gives the same values and gradients.

Image orientation. nvdiffrast is OpenGL-ordered: row 0 of its output is NDC y = −1, the *bottom* of the image.
The project's images (RenderOutput, `ray_directions_camera`) have row 0 at the *top*. Rather than flipping every
image across the boundary (antialias needs rast and positions in one frame, so flips would have to be undone
and redone around it), `clip_space` negates clip-space y: rasterize, interpolate and antialias then all work in
top-down row order and their outputs go into a RenderOutput as they are. The negation mirrors the screen-space
winding, which changes nothing here: neither backend culls, and antialias's silhouette test is
winding-independent. Pass `flip_y=False` for plain OpenGL clip space (bottom-up rows).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from geometry.backend import check_backend, use_cuda_library
from geometry.cameras import Cameras, mvp_matrix
from geometry.mesh import antialias_torch, raster_torch

WHERE = "rasterizer"


def clip_space(
    vertices: Float[Tensor, "*b V 3"],
    cameras: Cameras,
    near: float = 0.01,
    far: float = 100.0,
    flip_y: bool = True,
) -> Float[Tensor, "B V 4"]:
    """World-space vertices (V, 3) or (B, V, 3) → clip space for each camera (OpenGL projection, `mvp_matrix`).

    flip_y=True (default) negates clip y so that row 0 of every rasterized image is the top of the picture,
    as in the project's RenderOutput; z/w increases away from the camera, in [−1, 1] between near and far.
    """
    mvp = mvp_matrix(cameras, near, far)
    if flip_y:
        mvp = mvp * mvp.new_tensor([1.0, -1.0, 1.0, 1.0])[:, None]
    homogeneous = F.pad(vertices, (0, 1), value=1.0)
    if homogeneous.dim() == 2:
        homogeneous = homogeneous[None]
    return homogeneous @ mvp.transpose(1, 2).to(homogeneous.dtype)


class MeshRasterizer:
    """nvdiffrast's rasterize / interpolate / antialias, or the torch twin, by `backend` (auto | cuda | torch).

    All methods take and return nvdiffrast's layouts (instanced mode): pos_clip (B, V, 4), tri (F, 3) integer,
    rast (B, H, W, 4) = (u, v, z/w, triangle_id + 1). `auto` uses nvdiffrast when the tensors are on CUDA and
    it imports; the CUDA rasterizer context is created once per device.
    """

    def __init__(self, backend: str = "auto") -> None:
        check_backend(backend, WHERE)
        self.backend = backend
        self._contexts: dict[str, object] = {}

    def uses_cuda(self, device: torch.device) -> bool:
        return use_cuda_library(self.backend, device, "nvdiffrast", WHERE)

    def _context(self, device: torch.device) -> object:
        import nvdiffrast.torch as dr

        key = str(device)
        if key not in self._contexts:
            self._contexts[key] = dr.RasterizeCudaContext(device=device)
        return self._contexts[key]

    def rasterize(
        self, pos_clip: Float[Tensor, "B V 4"], tri: Int[Tensor, "F 3"], height: int, width: int
    ) -> Float[Tensor, "B H W 4"]:
        """Nearest triangle per pixel centre; differentiable in pos_clip through u, v (z/w has no gradient)."""
        if self.uses_cuda(pos_clip.device):
            import nvdiffrast.torch as dr

            # nvdiffrast wants contiguous float32 positions and int32 indices.
            rast, _ = dr.rasterize(
                self._context(pos_clip.device),
                pos_clip.float().contiguous(),
                tri.int().contiguous(),
                resolution=[height, width],
            )
            return rast
        return raster_torch.rasterize(pos_clip, tri, height, width)

    def interpolate(
        self, attr: Float[Tensor, "*b V C"], rast: Float[Tensor, "B H W 4"], tri: Int[Tensor, "F 3"]
    ) -> Float[Tensor, "B H W C"]:
        """Perspective-correct vertex attributes per pixel, zero on background; attr (V, C) or (B|1, V, C)."""
        if self.uses_cuda(attr.device):
            import nvdiffrast.torch as dr

            attr = attr[None] if attr.dim() == 2 else attr  # instanced mode takes (B or 1, V, C)
            out, _ = dr.interpolate(attr.float().contiguous(), rast.contiguous(), tri.int().contiguous())
            return out
        return raster_torch.interpolate(attr, rast, tri)

    def antialias(
        self,
        color: Float[Tensor, "B H W C"],
        rast: Float[Tensor, "B H W 4"],
        pos_clip: Float[Tensor, "*b V 4"],
        tri: Int[Tensor, "F 3"],
        pos_gradient_boost: float = 1.0,
    ) -> Float[Tensor, "B H W C"]:
        """Colours blended across silhouette edges, the source of vertex-position gradients at silhouettes."""
        if self.uses_cuda(color.device):
            import nvdiffrast.torch as dr

            if pos_clip.dim() == 2:
                pos_clip = pos_clip[None].expand(color.shape[0], -1, -1)
            return dr.antialias(
                color.float().contiguous(),
                rast.contiguous(),
                pos_clip.float().contiguous(),
                tri.int().contiguous(),
                pos_gradient_boost=pos_gradient_boost,
            )
        return antialias_torch.antialias(color, rast, pos_clip, tri, pos_gradient_boost=pos_gradient_boost)
