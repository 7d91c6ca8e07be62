"""Materials: turn a field's albedo/normal at sample points into radiance (DreamFusion shading).

Shading modes (the system picks one per step, REFERENCE.md "Shading"):
  "albedo"      unlit, rgb = albedo (DreamFusion's ambient-only early phase; what the analytic oracle renders)
  "lambertian"  rgb = albedo · (ambient + diffuse · max(n·l, 0))
  "textureless" the same with a white albedo (shows geometry only)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

SHADING_MODES = ("albedo", "lambertian", "textureless")


def lambertian(
    albedo: Float[Tensor, "M 3"],
    normal: Float[Tensor, "M 3"],
    light_dir: Float[Tensor, "M 3"],
    ambient: Float[Tensor, "3"],
    diffuse: Float[Tensor, "3"],
) -> Float[Tensor, "M 3"]:
    """Lambertian shading with ambient term (DreamFusion §3.1): albedo·(ambient + diffuse·max(n·l, 0)).

    normal and light_dir are unit vectors; the result is clamped to [0, 1].
    """
    cos = (normal * light_dir).sum(-1, keepdim=True).clamp_min(0.0)
    return (albedo * (ambient + diffuse * cos)).clamp(0.0, 1.0)


class Material(nn.Module):
    """Base: `forward(albedo, normal, points, light_positions, shading) -> rgb (M, 3)` in [0, 1]."""

    default_shading = "albedo"

    def requires_normal(self, shading: str | None) -> bool:
        return False

    def _mode(self, shading: str | None) -> str:
        mode = self.default_shading if shading is None else shading
        if mode not in SHADING_MODES:
            raise ValueError(f"Unknown shading mode {mode!r}: use one of {SHADING_MODES}.")
        return mode


class NoMaterial(Material):
    """rgb = albedo in every mode (unlit): for fitting images directly and for the analytic oracle."""

    def forward(self, albedo, normal=None, points=None, light_positions=None, shading=None) -> Tensor:
        self._mode(shading)
        return albedo


class DiffuseWithPointLight(Material):
    """Lambertian material lit by a point light at `light_positions` plus an ambient term.

    ambient_light_color / diffuse_light_color: RGB in [0, 1] (DreamFusion / threestudio: 0.1 and 0.9).
    """

    default_shading = "lambertian"

    def __init__(
        self,
        ambient_light_color: Sequence[float] = (0.1, 0.1, 0.1),
        diffuse_light_color: Sequence[float] = (0.9, 0.9, 0.9),
    ) -> None:
        super().__init__()
        self.register_buffer("ambient", torch.tensor(ambient_light_color, dtype=torch.float32))
        self.register_buffer("diffuse", torch.tensor(diffuse_light_color, dtype=torch.float32))

    def requires_normal(self, shading: str | None) -> bool:
        return self._mode(shading) != "albedo"

    def forward(
        self,
        albedo: Float[Tensor, "M 3"],
        normal: Float[Tensor, "M 3"] | None,
        points: Float[Tensor, "M 3"],
        light_positions: Float[Tensor, "M 3"],
        shading: str | None = None,
    ) -> Float[Tensor, "M 3"]:
        mode = self._mode(shading)
        if mode == "albedo":
            return albedo
        if normal is None:
            raise ValueError(
                f"shading={mode!r} needs normals: the geometry must return them (with_normal=True)."
            )
        light_dir = F.normalize(light_positions - points, dim=-1)
        base = torch.ones_like(albedo) if mode == "textureless" else albedo
        return lambertian(base, normal, light_dir, self.ambient.to(albedo), self.diffuse.to(albedo))
