"""RenderOutput: what every renderer (NeRF, mesh, Gaussians) returns (DESIGN.md §3).

Systems and guidance only ever see this type, so they never care which representation produced a render.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor


@dataclass
class RenderOutput:
    """A batch of renders.

    rgb:     (B, H, W, 3) in [0, 1], composited over the background.
    opacity: (B, H, W, 1) in [0, 1], accumulated alpha along each ray.
    depth:   (B, H, W, 1) world units along the ray (expected depth, 0 where empty).
    normal:  (B, H, W, 3) world-space normals in [-1, 1] (composited), if the renderer produces them.
    extras:  per-representation values (e.g. "orientation_loss", "z_variance", "background").
    """

    rgb: Float[Tensor, "B H W 3"]
    opacity: Float[Tensor, "B H W 1"]
    depth: Float[Tensor, "B H W 1"]
    normal: Float[Tensor, "B H W 3"] | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.rgb.shape[0]

    @property
    def height(self) -> int:
        return self.rgb.shape[1]

    @property
    def width(self) -> int:
        return self.rgb.shape[2]

    def detach(self) -> RenderOutput:
        return RenderOutput(
            rgb=self.rgb.detach(),
            opacity=self.opacity.detach(),
            depth=self.depth.detach(),
            normal=None if self.normal is None else self.normal.detach(),
            extras={k: v.detach() for k, v in self.extras.items()},
        )

    def to(self, device: torch.device | str) -> RenderOutput:
        return RenderOutput(
            rgb=self.rgb.to(device),
            opacity=self.opacity.to(device),
            depth=self.depth.to(device),
            normal=None if self.normal is None else self.normal.to(device),
            extras={k: v.to(device) for k, v in self.extras.items()},
        )

    @staticmethod
    def cat(outputs: list[RenderOutput], extras: bool = False) -> RenderOutput:
        """One batch of several (the views of an evaluation pass, the particles of a training step).

        extras: also concatenate the extras every output has per render (batch-first, like "background" or
        "orientation_loss"); others (per-primitive values such as Gaussians' means2d) are dropped."""
        normal = None if outputs[0].normal is None else torch.cat([o.normal for o in outputs])
        joined = {}
        if extras:
            for key in outputs[0].extras:
                shape = outputs[0].extras[key].shape[1:]
                if all(key in o.extras and o.extras[key].shape == (o.batch_size, *shape) for o in outputs):
                    joined[key] = torch.cat([o.extras[key] for o in outputs])
        return RenderOutput(
            rgb=torch.cat([o.rgb for o in outputs]),
            opacity=torch.cat([o.opacity for o in outputs]),
            depth=torch.cat([o.depth for o in outputs]),
            normal=normal,
            extras=joined,
        )
