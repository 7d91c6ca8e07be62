"""Validation images: composited normals are renormalized before they become colours."""

from __future__ import annotations

import torch

from geometry.render_output import RenderOutput
from systems.visualize import normal_image


def test_short_composited_normals_are_shown_as_their_direction():
    # A soft edge composites 0.3·n: before renormalization it would show as a washed-out grey-ish colour.
    n = torch.tensor([0.0, 0.0, 1.0])
    render = RenderOutput(
        rgb=torch.zeros(1, 1, 2, 3),
        opacity=torch.ones(1, 1, 2, 1),
        depth=torch.zeros(1, 1, 2, 1),
        normal=torch.stack([n, 0.3 * n])[None, None],
    )
    image = normal_image(render, 0)
    torch.testing.assert_close(image[0, 0], image[0, 1])
    torch.testing.assert_close(image[0, 1], torch.tensor([0.5, 0.5, 1.0]))
