"""The renderer contract (DESIGN.md §3): cameras in, a RenderOutput out, plus the regularizers it declares.

Every representation's renderer subclasses `Renderer`. Systems never branch on the representation: they call
`renderer(cameras, shading)`, then `renderer.regularizers(render, active)` for the loss names with a nonzero
weight; the names a renderer can compute are its `loss_names` (checked against the configured weights before
anything trains).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from geometry.cameras import Cameras
from geometry.functional.compositing import background_image
from geometry.render_output import RenderOutput


class Renderer(nn.Module):
    """Base renderer: holds the geometry, material and background it renders.

    Subclasses implement `forward(cameras, shading=None, background_color=None) -> RenderOutput` and, for each
    name in `loss_names`, a term in `regularizers`.
    """

    loss_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, geometry: nn.Module, material: nn.Module | None, background: nn.Module | None) -> None:
        super().__init__()
        self.geometry, self.material, self.background = geometry, material, background

    def check_losses(self, active: set[str]) -> None:
        """Raise ValueError (one line, with the fix) when an active loss cannot be computed as configured."""

    def regularizers(self, render: RenderOutput, active: set[str]) -> dict[str, Tensor]:
        """Unweighted regularizer values for the active names among `loss_names`."""
        return {}

    def set_step(self, step: int) -> None:
        """Step-dependent state (progressive encodings, occupancy grids); called once per training step."""
        if hasattr(self.geometry, "set_step"):
            self.geometry.set_step(step)

    def background_for(self, cameras: Cameras, dirs: Tensor, background_color: Tensor | None) -> Tensor:
        """(B, H, W, 3): the given solid colours ((B, 3) or (3,)), else the background module, else white."""
        B, H, W = len(cameras), cameras.height, cameras.width
        if background_color is not None:
            color = torch.as_tensor(background_color)
            if color.shape not in ((3,), (B, 3)):
                raise ValueError(
                    f"background_color must be (B, 3) = ({B}, 3) or (3,), got {tuple(color.shape)}."
                )
            return background_image(color, B, H, W, dirs)
        if self.background is not None:
            return self.background(dirs)
        return background_image(None, B, H, W, dirs)
