"""Volume renderer against analytic fields with known answers: compositing, occupancy skipping (thresholded on
σ·Δt), normals, regularizers, backgrounds, and the nerfacc path (CUDA only)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pytest
import torch
from torch import nn

from geometry.backend import importable
from geometry.cameras import get_rays, make_cameras
from geometry.fields.backgrounds import LearnedBackground, SolidBackground
from geometry.fields.hash_grid import HashGridConfig
from geometry.fields.materials import DiffuseWithPointLight, NoMaterial
from geometry.nerf.field import ImplicitVolume, NeRFConfig
from geometry.nerf.renderer import VolumeRenderer, VolumeRendererConfig


@dataclass
class Out:
    density: torch.Tensor
    albedo: torch.Tensor
    normal: torch.Tensor | None


class Ball(nn.Module):
    """Dense ball of radius `rho` at the origin (σ = sigma inside, 0 outside), learnable σ scale and colour."""

    def __init__(self, rho=0.5, sigma=1000.0, radius=1.0, everywhere=False):
        super().__init__()
        self.rho, self.radius, self.everywhere = rho, radius, everywhere
        self.log_sigma = nn.Parameter(torch.tensor(math.log(sigma)))
        self.color = nn.Parameter(torch.tensor([0.2, 0.5, 0.8]))
        self.queries = 0

    def density(self, x):
        inside = (
            torch.ones_like(x[:, :1])
            if self.everywhere
            else (x.norm(dim=-1, keepdim=True) < self.rho).float()
        )
        return inside * self.log_sigma.exp()

    def forward(self, x, with_normal=False):
        self.queries += x.shape[0]
        normal = torch.nn.functional.normalize(x, dim=-1) if with_normal else None
        return Out(self.density(x), self.color.expand(x.shape[0], 3), normal)


class HalfSpace(Ball):
    """Dense for x < plane_x (a wall facing +x)."""

    def __init__(self, plane_x=0.3):
        super().__init__()
        self.plane_x = plane_x

    def density(self, x):
        return (x[:, :1] < self.plane_x).float() * 1e4


def renderer(field, **kw):
    cfg = VolumeRendererConfig(**{"backend": "torch", "return_normal": False, **kw})
    r = VolumeRenderer(cfg, field, NoMaterial(), SolidBackground((1.0, 1.0, 1.0)))
    return r.eval()


def test_constant_density_through_sphere_renderer():
    # constant σ inside the bounding sphere: central ray crosses 2r, opacity = 1 - exp(-2rσ)
    field = Ball(sigma=0.7, everywhere=True)
    r = renderer(field, grid_prune=False)
    out = r.render_rays(torch.tensor([[0.0, 0.0, 3.0]]), torch.tensor([[0.0, 0.0, -1.0]]))
    assert out["opacity"].item() == pytest.approx(1 - math.exp(-2 * 0.7), abs=1e-4)


def ball_cameras(res=48):
    return make_cameras([20.0, -30.0], [0.0, 135.0], [2.5, 2.2], 45.0, res)


def test_dense_ball_silhouette_and_normals():
    field, cams = Ball(rho=0.5), ball_cameras()
    r = renderer(field, grid_prune=False, return_normal=True)
    out = r(cams)
    origins, dirs = get_rays(cams)
    to_center = torch.nn.functional.normalize(-origins, dim=-1)
    angle = torch.acos((dirs * to_center).sum(-1).clamp(-1, 1))  # angle between ray and view axis
    edge = torch.asin(0.5 / cams.distance)[:, None, None]  # silhouette half-angle of the ball
    pix = cams.fovy[:, None, None] / cams.height
    op = out.opacity[..., 0]
    inside, outside = angle < edge - 1.5 * pix, angle > edge + 1.5 * pix
    assert inside.sum() > 200 and op[inside].min() > 0.99 and op[outside].max() < 0.01
    # analytic normal at the first hit: (o + t d)/rho, t from the ray–sphere intersection
    b = (origins * dirs).sum(-1)
    t_hit = -b - (b * b - (origins * origins).sum(-1) + 0.25).clamp_min(0).sqrt()
    n_true = (origins + t_hit[..., None] * dirs) / 0.5
    n = torch.nn.functional.normalize(out.normal, dim=-1)
    deep = angle < edge - 4 * pix  # away from the rim where the bin size blurs the normal
    assert (n * n_true).sum(-1)[deep].min() > 0.98
    assert (out.normal * dirs).sum(-1)[deep].max() < 0  # facing the camera: no orientation penalty
    assert out.extras["orientation_loss"][deep].max() < 1e-6


def test_expected_depth_of_dense_plane():
    cams = make_cameras(0.0, 0.0, 2.0, 40.0, 16)  # camera on +x looking at the origin
    r = renderer(HalfSpace(0.3), grid_prune=False, num_samples_per_ray=128)
    out = r(cams)
    origins, dirs = get_rays(cams)
    expect = (origins[..., 0] - 0.3) / -dirs[..., 0]  # distance along the ray to the plane x = 0.3
    bin_len = 2.0 / 128  # the longest chord is 2r
    assert (out.depth[..., 0] - expect).abs().max() <= bin_len
    assert out.opacity.min() > 0.999
    assert out.extras["z_variance"].max() < bin_len**2


def test_occupancy_skipping_same_image_fewer_queries():
    cams = ball_cameras(40)
    field = Ball(rho=0.4)
    dense = renderer(field, grid_prune=False)(cams)
    n_dense = dense.extras["num_samples"].item()
    r = renderer(field, grid_prune=True, grid_resolution=32)
    r.refresh_occupancy()
    pruned = r(cams)
    n_pruned = pruned.extras["num_samples"].item()
    assert n_pruned < 0.25 * n_dense
    diff = (pruned.rgb - dense.rgb).abs()
    assert diff.mean() < 2e-3 and (diff > 0.05).float().mean() < 0.005


def test_occupancy_update_ema_and_warmup():
    field = Ball(rho=0.4)
    r = renderer(field, grid_prune=True, occupancy_warmup_steps=32, occupancy_update_every=16)
    r.update_occupancy(16)  # warm-up: everything stays occupied
    assert r.occupancy.occupied.all()
    r.update_occupancy(33)  # not a multiple of 16: no update
    assert r.occupancy.occupied.all()
    r.update_occupancy(48)
    occ = r.occupancy.occupied
    # cells entirely outside the ball (center farther than rho + half a cell diagonal) must be empty
    res = occ.shape[0]
    c = (torch.stack(torch.meshgrid(*[torch.arange(res)] * 3, indexing="ij"), -1) + 0.5) / res * 2 - 1
    far = c.norm(dim=-1) > 0.4 + math.sqrt(3) / res
    near_core = c.norm(dim=-1) < 0.4 - math.sqrt(3) / res
    assert not occ[far].any() and occ[near_core].all()


def test_gradients_reach_field_parameters_analytic():
    # opacity of a central ray through constant σ over length L: d/dσ (1 - e^{-σL}) = L e^{-σL}
    field = Ball(sigma=0.8, everywhere=True)
    r = renderer(field, grid_prune=True)
    r.refresh_occupancy()
    out = r.render_rays(torch.tensor([[0.0, 0.0, 3.0]]), torch.tensor([[0.0, 0.0, -1.0]]))
    (out["opacity"].sum() + out["color"].sum()).backward()
    sigma, L = 0.8, 2.0
    d_opacity = L * math.exp(-sigma * L) * sigma  # chain rule through σ = exp(log_sigma)
    d_color = field.color.detach() * 0 + (1 - math.exp(-sigma * L))
    torch.testing.assert_close(field.color.grad, d_color, atol=1e-5, rtol=0)
    expected = d_opacity * (1 + field.color.detach().sum().item())
    assert field.log_sigma.grad.item() == pytest.approx(expected, rel=1e-4)


def test_chunked_equals_unchunked_and_training_jitter():
    cams = ball_cameras(24)
    field = Ball(rho=0.5, sigma=5.0)
    a = renderer(field, grid_prune=False, eval_chunk_size=100, return_normal=True)(cams)
    b = renderer(field, grid_prune=False, eval_chunk_size=10**6, return_normal=True)(cams)
    for x, y in [(a.rgb, b.rgb), (a.depth, b.depth), (a.normal, b.normal), (a.opacity, b.opacity)]:
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-6)
    train = renderer(field, grid_prune=False).train()
    c = train(cams)
    assert not torch.equal(c.rgb, a.rgb)  # jittered in training
    # ...but the same image up to rim pixels, where a jittered point can leave the short chord
    assert (c.opacity - a.opacity).abs().mean() < 0.01


def test_lambertian_through_renderer_uses_camera_light():
    # light at the camera: the ball's front pixel faces the light, cos = 1 → rgb = albedo
    cams = make_cameras(0.0, 0.0, 2.5, 40.0, 15)
    r = VolumeRenderer(
        VolumeRendererConfig(backend="torch", grid_prune=False, num_samples_per_ray=256),
        Ball(rho=0.5),
        DiffuseWithPointLight(),
        SolidBackground(),
    ).eval()
    rgb = r(cams, shading="lambertian").rgb[0, 7, 7]
    torch.testing.assert_close(rgb, torch.tensor([0.2, 0.5, 0.8]), atol=2e-3, rtol=0)
    gray = r(cams, shading="textureless").rgb[0, 7, 7]
    torch.testing.assert_close(gray, torch.ones(3), atol=2e-3, rtol=0)


def test_renderer_composites_over_the_augmented_background_it_reports():
    # where opacity is 0, rgb is exactly the (augmented) background reported in extras
    torch.manual_seed(1)
    r = VolumeRenderer(
        VolumeRendererConfig(backend="torch", return_normal=False),
        Ball(rho=0.3),
        NoMaterial(),
        LearnedBackground(random_color_prob=0.5),
    ).train()
    cams = make_cameras(torch.zeros(16), torch.arange(16.0) * 20, 2.5, 40.0, 12)
    out = r(cams)
    empty = out.opacity[..., 0] == 0
    assert empty.sum() > 0
    torch.testing.assert_close(out.rgb[empty], out.extras["background"][empty])
    per_image_std = out.extras["background"].flatten(1, 2).std(1).amax(-1)
    assert 2 <= (per_image_std == 0).sum() <= 14  # some batch elements got a solid random colour
    solid = make_cameras(0.0, 0.0, 2.5, 40.0, 8)
    out = r.eval()(solid, background_color=torch.tensor([[0.1, 0.2, 0.3]]))
    torch.testing.assert_close(out.rgb[0, 0, 0], torch.tensor([0.1, 0.2, 0.3]))


def test_background_color_accepts_one_colour_or_one_per_camera_and_nothing_else():
    r = renderer(Ball(rho=0.3))
    cams = make_cameras(0.0, torch.tensor([0.0, 90.0]), 2.5, 40.0, 8)
    one = r(cams, background_color=torch.tensor([0.1, 0.2, 0.3]))  # (3,): every camera
    torch.testing.assert_close(one.rgb[:, 0, 0], torch.tensor([[0.1, 0.2, 0.3]] * 2))
    per_camera = r(cams, background_color=torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    torch.testing.assert_close(per_camera.rgb[:, 0, 0], torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    torch.testing.assert_close(
        per_camera.extras["background"][1], torch.tensor([0.0, 0.0, 1.0]).expand(8, 8, 3)
    )
    for bad in (torch.ones(3, 3), torch.ones(2, 8, 8, 3), torch.ones(4)):
        with pytest.raises(ValueError, match=r"background_color must be \(B, 3\)"):
            r(cams, background_color=bad)


def test_bad_config_messages():
    with pytest.raises(ValueError, match="backend"):
        VolumeRendererConfig(backend="tcnn")
    with pytest.raises(ValueError, match="near_far"):
        VolumeRendererConfig(near_far="cylinder")
    with pytest.raises(ValueError, match="positive"):
        VolumeRendererConfig(num_samples_per_ray=0)


@pytest.mark.gpu
def test_nerfacc_packed_path_matches_torch_twin():
    dev = torch.device("cuda")
    cams = ball_cameras(48).to(dev)
    field_t, field_c = Ball(rho=0.5, sigma=30.0).to(dev), Ball(rho=0.5, sigma=30.0).to(dev)
    kw = {"grid_prune": True, "return_normal": True, "occupancy_warmup_steps": 0, "occupancy_update_every": 1}
    # The renderer's own buffers (torch occupancy grid, nerfacc estimator) move with it.
    torch_r = renderer(field_t, **kw).to(dev)
    cuda_r = renderer(field_c, **{**kw, "backend": "cuda"}).to(dev)
    torch_r.refresh_occupancy()
    for step in range(4):
        cuda_r.train().update_occupancy(step)
    cuda_r.eval()
    a, b = torch_r(cams), cuda_r(cams)
    # different sample placement (nerfacc marches with a fixed step from near): a few % on the rim pixels only
    assert (a.opacity - b.opacity).abs().mean() < 5e-3
    assert (a.depth - b.depth).abs()[a.opacity > 0.99].max() < 2 * 2.0 / 64
    (a.rgb.sum() + a.opacity.sum()).backward()
    (b.rgb.sum() + b.opacity.sum()).backward()
    for p, q in zip(field_t.parameters(), field_c.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=2e-2, atol=1e-2)  # same sums, resampled: ~1 %


# ---------------------------------------------------------------- occupancy on σ·Δt


class TwoDensities(Ball):
    """σ = low where x < 0 and high where x ≥ 0, everywhere in the cube."""

    def __init__(self, low: float, high: float):
        super().__init__()
        self.low, self.high = low, high

    def density(self, x):
        return torch.where(
            x[:, :1] < 0, torch.full_like(x[:, :1], self.low), torch.full_like(x[:, :1], self.high)
        )


@pytest.mark.parametrize(
    "num_samples, threshold, low_occupied",
    [
        (64, 0.1, False),  # Δt = 1/32: σ·Δt = 0.031 (low) < 0.1 ≤ 0.31 (high)
        (8, 0.1, True),  # Δt = 1/4: 0.25 and 2.5, both above: same densities, longer steps, both kept
        (64, 1.0, False),  # above both: capped by the mean EMA (0.17), so the field is never pruned away
    ],
)
def test_occupancy_is_thresholded_on_sigma_times_step(num_samples, threshold, low_occupied):
    r = renderer(
        TwoDensities(1.0, 10.0),
        grid_prune=True,
        grid_resolution=8,
        num_samples_per_ray=num_samples,
        occupancy_threshold=threshold,
    )
    assert r.step_size == pytest.approx(2.0 / num_samples)
    r.refresh_occupancy()
    occ = r.occupancy.occupied  # (x, y, z) cells; x < 0 is the first half along the first axis
    assert occ[4:].all()
    assert bool(occ[:4].all()) is low_occupied and bool(occ[:4].any()) is low_occupied
    ema = r.occupancy.density_ema.reshape(8, 8, 8)
    torch.testing.assert_close(ema[:4], torch.full((4, 8, 8), 1.0 * r.step_size))
    torch.testing.assert_close(ema[4:], torch.full((4, 8, 8), 10.0 * r.step_size))


def test_training_updates_use_the_same_sigma_times_step():
    r = renderer(
        TwoDensities(1.0, 10.0),
        grid_prune=True,
        grid_resolution=8,
        num_samples_per_ray=64,
        occupancy_threshold=0.1,
        occupancy_warmup_steps=0,
        occupancy_update_every=1,
    ).train()
    r.set_step(0)  # training mode: set_step updates the grid
    assert r.occupancy.occupied[4:].all() and not r.occupancy.occupied[:4].any()
    r.eval().set_step(1)  # eval mode: no update
    assert torch.equal(r.occupancy.density_ema.reshape(8, 8, 8)[:4], torch.full((4, 8, 8), 1 / 32))


# ---------------------------------------------------------------- normals, losses, regularizers


def tiny_volume() -> ImplicitVolume:
    grid = HashGridConfig(
        n_levels=2, log2_hashmap_size=10, base_resolution=4, per_level_scale=2.0, backend="torch"
    )
    torch.manual_seed(0)
    return ImplicitVolume(NeRFConfig(hash_grid=grid, density_bias="blob_magic3d"))


def test_eval_renders_of_analytic_normals_build_no_double_backward_graph():
    volume = tiny_volume()
    r = VolumeRenderer(
        VolumeRendererConfig(backend="torch", grid_prune=False, num_samples_per_ray=16),
        volume,
        NoMaterial(),
        SolidBackground(),
    )
    cams = make_cameras(15.0, 30.0, 2.0, 45.0, 6)
    evaluated = r.eval()(cams)  # grad mode on, as in a validation step that forgot no_grad
    assert torch.is_grad_enabled() and evaluated.normal is not None
    assert not evaluated.normal.requires_grad and evaluated.normal.grad_fn is None
    assert evaluated.normal.abs().sum() > 0
    trained = r.train()(cams)
    assert trained.normal.requires_grad
    # In training the normals are a function of the parameters (double backward into the density path).
    grads = torch.autograd.grad(
        trained.normal.sum(), list(volume.density_mlp.parameters()), allow_unused=True
    )
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


class InwardBall(Ball):
    """The dense ball with inward normals: every covered pixel pays the orientation loss."""

    def forward(self, x, with_normal=False):
        out = super().forward(x, with_normal)
        return Out(out.density, out.albedo, None if out.normal is None else -out.normal)


def test_regularizers_average_orientation_and_z_variance_over_covered_pixels():
    r = renderer(InwardBall(rho=0.4, sigma=1000.0), grid_prune=False, return_normal=True)
    cams = make_cameras(0.0, 0.0, 2.5, 40.0, 16)
    out = r(cams)
    covered, solid = out.opacity > 0, out.opacity > 0.5
    assert 0.1 < covered.float().mean() < 0.6  # the ball fills part of the image: averages must differ
    active = set(r.loss_names)
    assert active == {"orient", "sparsity", "opaque", "z_variance"}
    reg = r.regularizers(out, active)
    assert set(reg) == active
    orientation, z_var = out.extras["orientation_loss"], out.extras["z_variance"]
    expected_orient = orientation[covered].sum() / covered.sum()
    expected_z = z_var[solid].sum() / solid.sum()
    torch.testing.assert_close(reg["orient"], expected_orient)
    torch.testing.assert_close(reg["z_variance"], expected_z)
    assert reg["orient"] > 1.5 * orientation.mean()  # not diluted by the empty pixels
    # Hand computation of the per-pixel term: at σ = 1000 the weight sits at the entry point, where the
    # inward normal −p/ρ makes (n·d)² = (b² − c)/ρ² with b = o·d, c = |o|² − ρ².
    origins, dirs = get_rays(cams)
    b = (origins * dirs).sum(-1)
    disc = b * b - ((origins * origins).sum(-1) - 0.4**2)
    deep = disc > 0.3 * 0.4**2
    assert deep.sum() > 10
    torch.testing.assert_close(orientation[..., 0][deep], (disc / 0.4**2)[deep], atol=0.05, rtol=0)
    # Sparsity and opaque use every pixel.
    a = out.opacity
    torch.testing.assert_close(reg["sparsity"], (a * a + 0.01).sqrt().mean())
    clamped = a.clamp(1e-5, 1 - 1e-5)
    torch.testing.assert_close(
        reg["opaque"], -(clamped * clamped.log() + (1 - clamped) * (1 - clamped).log()).mean()
    )
    assert r.regularizers(out, {"sparsity"}).keys() == {"sparsity"}
    empty = replace(out, opacity=torch.zeros_like(out.opacity))
    assert r.regularizers(empty, {"orient", "z_variance"}) == {"orient": 0.0, "z_variance": 0.0}  # not NaN


def test_orientation_loss_without_training_normals_is_refused():
    cfg = dict(backend="torch")
    ok = VolumeRenderer(VolumeRendererConfig(**cfg), tiny_volume(), NoMaterial(), SolidBackground())
    ok.check_losses({"orient", "sparsity"})
    for bad in (dict(return_normal_in_training=False), dict(return_normal=False)):
        r = VolumeRenderer(VolumeRendererConfig(**cfg, **bad), tiny_volume(), NoMaterial(), SolidBackground())
        r.check_losses({"sparsity", "z_variance"})  # only the orientation loss needs normals
        with pytest.raises(ValueError, match="lambda_orient"):
            r.check_losses({"orient"})
    no_normals = tiny_volume()
    no_normals.cfg.normal_type = "none"
    r = VolumeRenderer(VolumeRendererConfig(**cfg), no_normals, NoMaterial(), SolidBackground())
    with pytest.raises(ValueError, match="normal_type"):
        r.check_losses({"orient"})


def test_check_losses_accepts_a_geometry_without_a_config():
    # The renderer documents its geometry as "forward(points, with_normal), density(points) and radius";
    # Ball has exactly that and returns normals, so the orientation loss is computable.
    renderer(Ball(), return_normal=True).check_losses({"orient"})


@pytest.mark.skipif(not importable("nerfacc"), reason="nerfacc does not import")
def test_nerfacc_estimator_exists_from_construction_so_checkpoint_keys_never_change():
    cfg = VolumeRendererConfig(
        backend="auto", occupancy_warmup_steps=0, occupancy_update_every=1, grid_resolution=8
    )
    r = VolumeRenderer(cfg, Ball(), NoMaterial(), SolidBackground())
    assert r.nerfacc_estimator is not None
    keys = list(r.state_dict())
    assert any(k.startswith("nerfacc_estimator.") for k in keys)
    r.train().set_step(0)  # on the CPU the torch twin runs; the estimator stays as it was built
    r(make_cameras(0.0, 0.0, 2.5, 40.0, 4))
    assert list(r.state_dict()) == keys
    resumed = VolumeRenderer(cfg, Ball(), NoMaterial(), SolidBackground())
    resumed.load_state_dict(r.state_dict())  # strict: a checkpoint from any point of a run loads
    assert torch.equal(resumed.occupancy.occupied, r.occupancy.occupied)
    torch_only = VolumeRenderer(
        VolumeRendererConfig(backend="torch"), Ball(), NoMaterial(), SolidBackground()
    )
    assert torch_only.nerfacc_estimator is None
    assert not any(k.startswith("nerfacc_estimator.") for k in torch_only.state_dict())


@pytest.mark.gpu
def test_nerfacc_grid_thresholds_sigma_times_step_like_the_twin():
    dev = torch.device("cuda")
    kw = dict(grid_prune=True, grid_resolution=8, occupancy_threshold=0.1, occupancy_update_every=1)
    # Warm-up: nerfacc evaluates every cell (the twin would keep them all occupied), so one update sees all.
    r = renderer(TwoDensities(1.0, 10.0).to(dev), backend="cuda", occupancy_warmup_steps=100, **kw).to(dev)
    r.train().update_occupancy(0)
    binaries = r.nerfacc_estimator.binaries[0]
    assert binaries[4:].all() and not binaries[:4].any()
