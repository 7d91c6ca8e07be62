"""system.guidance_input=normal: the guidance sees the normal map in [0, 1] over the render's background."""

from __future__ import annotations

import pytest
import torch

from distill3d.errors import ConfigError
from geometry.render_output import RenderOutput
from systems.base import normal_as_image
from systems.config import SystemConfig


def test_normal_image_is_the_premultiplied_normal_over_the_background():
    normal = torch.tensor([0.0, 0.0, 1.0]).expand(1, 2, 2, 3).clone()
    opacity = torch.tensor([1.0, 0.5, 0.0, 1.0]).reshape(1, 2, 2, 1)
    background = torch.full((1, 2, 2, 3), 0.2)
    render = RenderOutput(
        torch.rand(1, 2, 2, 3), opacity, torch.ones(1, 2, 2, 1), normal * opacity, {"background": background}
    )
    image = normal_as_image(render).rgb
    # Covered: (n + 1)/2 = (0.5, 0.5, 1); half covered: the average with the background; empty: the background.
    assert torch.allclose(image[0, 0, 0], torch.tensor([0.5, 0.5, 1.0]))
    assert torch.allclose(image[0, 0, 1], 0.5 * torch.tensor([0.5, 0.5, 1.0]) + 0.5 * 0.2)
    assert torch.allclose(image[0, 1, 0], torch.full((3,), 0.2))


def test_normal_guidance_without_normals_and_bad_values_are_one_line_errors():
    render = RenderOutput(torch.rand(1, 2, 2, 3), torch.ones(1, 2, 2, 1), torch.ones(1, 2, 2, 1))
    with pytest.raises(ConfigError, match="return_normal"):
        normal_as_image(render)
    with pytest.raises(ValueError, match="guidance_input"):
        SystemConfig(guidance_input="depth").validate()
