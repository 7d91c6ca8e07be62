"""ImplicitVolume: density bias formulas, trunc_exp, normals (analytic vs radial truth vs finite differences),
export (to_mesh, surface_colors) and stage initialization (init_from)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from geometry.fields.hash_grid import HashGridConfig
from geometry.gaussians.model import GaussianConfig, GaussianModel
from geometry.mesh.export_config import ExportConfig
from geometry.nerf.field import FieldOutput, ImplicitVolume, NeRFConfig, density_bias, trunc_exp

TINY_GRID = dict(
    n_levels=4, n_features_per_level=2, log2_hashmap_size=12, base_resolution=4, per_level_scale=2.0
)


def make_volume(**overrides) -> ImplicitVolume:
    grid = HashGridConfig(**{**TINY_GRID, "backend": "torch", **overrides.pop("hash_grid", {})})
    torch.manual_seed(0)
    return ImplicitVolume(NeRFConfig(hash_grid=grid, **overrides))


def zero_mlp_outputs(volume: ImplicitVolume) -> None:
    """Make raw density and features 0 so density = act(bias(x)): a purely radial field."""
    with torch.no_grad():
        for mlp in (volume.density_mlp, volume.feature_mlp):
            mlp[-1].weight.zero_()
            mlp[-1].bias.zero_()


def points_in_shell(n, r_min, r_max, seed=0):
    gen = torch.Generator().manual_seed(seed)
    d = F.normalize(torch.randn(n, 3, generator=gen), dim=-1)
    return d * (r_min + (r_max - r_min) * torch.rand(n, 1, generator=gen))


def test_density_bias_formulas_at_several_radii():
    radii = [0.0, 0.25, 0.5, 0.75]
    pts = torch.tensor([[0.0, r, 0.0] for r in radii])
    magic3d = density_bias(pts, "blob_magic3d", 10.0, 0.5)[:, 0]
    dreamfusion = density_bias(pts, "blob_dreamfusion", 5.0, 0.2)[:, 0]
    torch.testing.assert_close(magic3d, torch.tensor([10 * (1 - r / 0.5) for r in radii]))
    torch.testing.assert_close(
        dreamfusion, torch.tensor([5 * math.exp(-(r**2) / (2 * 0.2**2)) for r in radii])
    )
    torch.testing.assert_close(
        density_bias(pts, "constant", 0, 1, constant=-1.5)[:, 0], torch.full((4,), -1.5)
    )
    assert torch.all(density_bias(pts, "none", 0, 1) == 0)
    # The config fills in each blob's published defaults.
    cfg = NeRFConfig(density_bias="blob_dreamfusion")
    assert (cfg.density_blob_scale, cfg.density_blob_std) == (5.0, 0.2)
    assert (NeRFConfig().density_blob_scale, NeRFConfig().density_blob_std) == (10.0, 0.5)


def test_trunc_exp_forward_and_clamped_backward():
    x = torch.tensor([-2.0, 1.0, 14.0, 20.0], dtype=torch.float64, requires_grad=True)
    y = trunc_exp(x)
    torch.testing.assert_close(y, torch.exp(x.detach()))
    y.sum().backward()
    expected = torch.tensor([math.exp(-2), math.exp(1), math.exp(14), math.exp(15)], dtype=torch.float64)
    torch.testing.assert_close(x.grad, expected)


@pytest.mark.parametrize("bias", ["blob_magic3d", "blob_dreamfusion"])
@pytest.mark.parametrize("activation", ["softplus", "trunc_exp"])
def test_analytic_normals_of_a_radial_field_point_outward(bias, activation):
    volume = make_volume(density_bias=bias, density_activation=activation)
    zero_mlp_outputs(volume)
    x = points_in_shell(256, 0.1, 0.45)
    out = volume(x, with_normal=True)
    cos = (out.normal * F.normalize(x, dim=-1)).sum(-1)
    assert cos.min() > 0.99
    expected = density_bias(x, bias, volume.cfg.density_blob_scale, volume.cfg.density_blob_std)
    act = F.softplus if activation == "softplus" else torch.exp
    torch.testing.assert_close(out.density, act(expected))
    torch.testing.assert_close(out.albedo, torch.full_like(x, 0.5))  # sigmoid(0)


def test_finite_difference_and_analytic_normals_agree_on_a_smooth_field():
    analytic = make_volume(density_bias="blob_dreamfusion", hash_grid=dict(interpolation="smoothstep"))
    with torch.no_grad():  # a non-radial field: large grid features through the random MLP
        analytic.encoding.params.uniform_(-2.0, 2.0)
    fd = make_volume(
        density_bias="blob_dreamfusion",
        hash_grid=dict(interpolation="smoothstep"),
        normal_type="finite_difference",
        finite_difference_eps=1e-3,
    )
    fd.load_state_dict(analytic.state_dict())
    x = points_in_shell(400, 0.05, 0.6, seed=1)
    n_analytic = analytic(x, with_normal=True).normal
    n_fd = fd(x, with_normal=True).normal
    radial = (n_analytic * F.normalize(x, dim=-1)).sum(-1)
    assert radial.mean() < 0.9  # the grid really bends the normals away from the radial blob
    cos = (n_analytic * n_fd).sum(-1)
    assert cos.median() > 0.9999
    assert (cos > 0.99).float().mean() > 0.97  # ReLU kinks inside a few ±eps stencils
    torch.testing.assert_close(n_analytic.norm(dim=-1), torch.ones(400))


def test_gradients_reach_hash_table_and_both_mlps_including_through_normals():
    volume = make_volume(density_bias="blob_dreamfusion")
    x = points_in_shell(128, 0.1, 0.8)
    out = volume(x, with_normal=True)
    (out.density.mean() + out.albedo.mean()).backward(retain_graph=True)
    for module in (volume.encoding, volume.density_mlp, volume.feature_mlp):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    volume.zero_grad()
    # A loss on normals alone trains the density path (create_graph=True), not the albedo MLP.
    out.normal[:, 2].sum().backward()
    assert volume.encoding.params.grad.abs().sum() > 0
    assert all(p.grad.abs().sum() > 0 for p in volume.density_mlp.parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in volume.feature_mlp.parameters())


def test_outside_box_is_empty_and_query_helpers_agree():
    volume = make_volume(radius=0.8, density_bias="constant", density_bias_constant=2.0)
    x = torch.tensor([[0.0, 0.0, 0.0], [0.7, -0.7, 0.79], [0.81, 0.0, 0.0], [0.0, -2.0, 0.0]])
    out = volume(x)
    assert isinstance(out, FieldOutput) and out.normal is None
    assert torch.all(out.density[:2] > 0) and torch.all(out.density[2:] == 0)
    torch.testing.assert_close(volume.density(x), out.density)
    torch.testing.assert_close(volume.albedo(x), out.albedo)
    assert torch.all((out.albedo >= 0) & (out.albedo <= 1))
    assert volume.radius == 0.8


def test_no_grad_mode_gives_detached_normals_equal_to_grad_mode():
    volume = make_volume()
    x = points_in_shell(64, 0.1, 0.5)
    with_grad = volume(x, with_normal=True)
    with torch.no_grad():
        without = volume(x, with_normal=True)
    assert not without.normal.requires_grad and not without.density.requires_grad
    torch.testing.assert_close(without.normal, with_grad.normal.detach())


def test_eval_mode_normals_build_no_double_backward_graph_even_with_grad_enabled():
    volume = make_volume()
    x = points_in_shell(64, 0.1, 0.5)
    train = volume.train()(x, with_normal=True)
    assert train.normal.requires_grad and train.normal.grad_fn is not None  # create_graph: trains the field
    evaluated = volume.eval()(x, with_normal=True)  # grad mode is on, but an eval render needs values only
    assert torch.is_grad_enabled()
    assert not evaluated.normal.requires_grad and evaluated.normal.grad_fn is None
    assert not evaluated.density.requires_grad and not evaluated.albedo.requires_grad
    torch.testing.assert_close(evaluated.normal, train.normal.detach())
    torch.testing.assert_close(evaluated.density, train.density.detach())


def test_set_step_drives_progressive_levels():
    volume = make_volume(hash_grid=dict(start_level=2, start_step=100, update_steps=10))
    assert volume.encoding.n_active_levels == 2
    volume.set_step(125)
    assert volume.encoding.n_active_levels == 4


@pytest.mark.usefixtures("unchecked_types")  # ill-typed input on purpose: our own error message
def test_bad_config_is_rejected_with_the_fix():
    with pytest.raises(ValueError, match="density_bias"):
        NeRFConfig(density_bias="sphere")
    with pytest.raises(ValueError, match="radius"):
        NeRFConfig(radius=0)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        make_volume()(torch.zeros(5, 2))


# ---------------------------------------------------------------- export and stages


def radial_blob(radius: float = 1.0) -> ImplicitVolume:
    """density = softplus(10·(1 − |x| / 0.5)): its level set softplus(0) = ln 2 is the sphere |x| = 0.5."""
    volume = make_volume(radius=radius, density_bias="blob_magic3d")
    zero_mlp_outputs(volume)
    return volume


def test_to_mesh_extracts_the_blob_sphere_and_surface_colours_are_the_albedo():
    volume = radial_blob()
    cfg = ExportConfig(resolution=32, threshold=math.log(2.0), remove_floaters=0.0)
    mesh = volume.to_mesh(cfg)
    radii = torch.from_numpy(mesh.vertices).norm(dim=-1)
    assert (radii - 0.5).abs().max() < 0.02 and mesh.extras["level"] == pytest.approx(math.log(2.0))
    with torch.no_grad():
        volume.feature_mlp[-1].bias.copy_(torch.tensor([2.0, 0.0, -2.0]))  # albedo = sigmoid(bias)
    colours = volume.surface_colors(cfg)(torch.from_numpy(mesh.vertices), torch.from_numpy(mesh.vertices))
    torch.testing.assert_close(
        colours, torch.sigmoid(torch.tensor([2.0, 0.0, -2.0])).expand(mesh.num_vertices, 3)
    )
    auto = volume.to_mesh(ExportConfig(resolution=32, remove_floaters=0.0))  # Otsu's split without views
    assert 0.3 < torch.from_numpy(auto.vertices).norm(dim=-1).mean() < 0.5


def test_init_from_copies_another_nerf_and_refuses_other_representations():
    source = make_volume()
    with torch.no_grad():
        source.encoding.params.uniform_(-1.0, 1.0)
    target = make_volume()
    target.init_from(source)
    for (name, a), (_, b) in zip(source.state_dict().items(), target.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    with torch.no_grad():
        source.encoding.params.zero_()
    assert target.encoding.params.abs().sum() > 0  # a copy, not shared storage
    with pytest.raises(TypeError, match="cannot be initialized from GaussianModel"):
        target.init_from(GaussianModel(GaussianConfig(num_points=4)))
