"""GaussianModel: initialization, checkpoints of any size, view-dependent colours, and init_from (stages)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill3d.errors import UserError
from geometry.gaussians.functional import sh_to_rgb
from geometry.gaussians.model import PARAM_NAMES, GaussianConfig, GaussianModel
from tests.geometry.gaussians.helpers import trained_model


def test_sphere_init_fills_the_ball_with_the_configured_values():
    g = GaussianModel(
        GaussianConfig(num_points=300, init_radius=0.4, init_opacity=0.2, init_color=(0.1, 0.5, 0.9))
    )
    assert g.num_gaussians == 300 and (g.means.norm(dim=-1) <= 0.4 + 1e-6).all()
    assert g.means.norm(dim=-1).max() > 0.35  # uniform in the ball, not clumped at the centre
    torch.testing.assert_close(g.opacities, torch.full((300,), 0.2))
    torch.testing.assert_close(g.colors()[0], torch.tensor([0.1, 0.5, 0.9]).expand(300, 3))
    torch.testing.assert_close(g.unit_quats, torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(300, 4))
    with pytest.raises(ValueError, match="init_frame"):
        GaussianConfig(init_frame="z_up").validate()


def test_state_dict_with_other_counts_loads():
    a, _ = trained_model(n=25, sh_degree=1)
    b = GaussianModel(GaussianConfig(num_points=7, sh_degree=1))
    b.load_state_dict(a.state_dict())
    for name in PARAM_NAMES:
        assert torch.equal(getattr(a, name), getattr(b, name))


def test_colours_are_view_dependent_per_camera():
    g, _ = trained_model(n=10, sh_degree=2)
    with torch.no_grad():
        g.sh_rest.normal_()
    cams = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, -3.0]])
    rgb = g.colors(cams)
    assert rgb.shape == (2, 10, 3) and not torch.allclose(rgb[0], rgb[1])
    dirs = F.normalize(g.means[None] - cams[:, None], dim=-1)  # camera → Gaussian
    torch.testing.assert_close(rgb, sh_to_rgb(g.sh_dc, g.sh_rest, dirs))
    torch.testing.assert_close(g.colors()[0], sh_to_rgb(g.sh_dc, g.sh_rest, None))  # no camera: DC only


def test_init_from_other_gaussians_copies_tensors():
    source, _ = trained_model(n=12, sh_degree=1)
    target = GaussianModel(GaussianConfig(num_points=3, sh_degree=1))
    target.init_from(source)
    for name in PARAM_NAMES:
        a, b = getattr(source, name), getattr(target, name)
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr() and isinstance(b, nn.Parameter), name
    with torch.no_grad():
        source.means.zero_()
    assert target.means.abs().sum() > 0  # copies, not views


class BallField(nn.Module):
    """A density/albedo field like a fitted NeRF: dense inside the ball |x| < rho, a colour per half."""

    def __init__(self, rho: float = 0.6, radius: float = 1.0):
        super().__init__()
        self.rho, self.radius = rho, radius
        self.scale = nn.Parameter(torch.tensor(1.0))  # gives the field a device

    def density(self, points):
        return 1000.0 * self.scale * (points.norm(dim=-1, keepdim=True) < self.rho).float()

    def albedo(self, points):
        red, blue = torch.tensor([0.9, 0.1, 0.1]), torch.tensor([0.1, 0.1, 0.9])
        return torch.where(points[:, :1] > 0, red, blue)


def test_init_from_a_density_field_places_gaussians_inside_it_with_its_colour():
    g = GaussianModel(GaussianConfig(num_points=400, init_scale=0.02))
    g.init_from(BallField(rho=0.6))
    assert g.num_gaussians == 400
    radii = g.means.norm(dim=-1)
    assert (radii < 0.6).all() and radii.max() > 0.5  # inside, and filling the ball (candidates in the cube)
    rgb = g.colors()[0]
    right = g.means[:, 0] > 0
    assert 0.3 < right.float().mean() < 0.7
    torch.testing.assert_close(rgb[right], torch.tensor([0.9, 0.1, 0.1]).expand(int(right.sum()), 3))
    torch.testing.assert_close(rgb[~right], torch.tensor([0.1, 0.1, 0.9]).expand(int((~right).sum()), 3))
    torch.testing.assert_close(g.scales, torch.full((400, 3), 0.02))
    with pytest.raises(UserError, match="no surface"):
        g.init_from(BallField(rho=0.0))
    with pytest.raises(TypeError, match="no density/albedo"):
        g.init_from(nn.Linear(2, 2))
