"""Volume renderer for implicit fields (NeRF, Mildenhall et al. 2020; DreamFusion's shading extras).

On CUDA tensors with backend auto|cuda the renderer uses nerfacc (occupancy-grid marching, packed
compositing); elsewhere its torch twin: stratified samples inside the bounding sphere (or box) → drop samples
in empty occupancy cells BEFORE querying the field (the field sees a packed list) → scatter densities back
into a dense (rays, samples) grid and composite with row-wise cumulative sums (exact per ray).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from jaxtyping import Float
from torch import Tensor, nn

from geometry.backend import check_backend, importable, use_cuda_library
from geometry.cameras import Cameras, get_rays
from geometry.functional.compositing import over_background
from geometry.functional.rays import ray_box_interval, ray_sphere_interval
from geometry.functional.regularizers import covered_mean, opaque_loss, sparsity_loss
from geometry.nerf.occupancy import OccupancyGrid
from geometry.nerf.sampling import composite_weights, stratified_bins
from geometry.render_output import RenderOutput
from geometry.renderer import Renderer


@dataclass
class VolumeRendererConfig:
    """Volume renderer settings.

    num_samples_per_ray: stratified bins between near and far (jittered in training, midpoints in eval).
    near_far: "sphere" (ray ∩ sphere of radius geometry.radius) or "box" (ray ∩ cube [-r, r]^3).
    occupancy_threshold: a grid cell is occupied when its EMA of σ·Δt (Δt = 2·radius / num_samples_per_ray,
        the step nerfacc marches with) is ≥ this; as in nerfacc the threshold is capped by the mean EMA, so a
        nearly empty field is never pruned away entirely. 0.01 = a sample 1 % opaque.
    occupancy_update_every / occupancy_ema_decay / occupancy_warmup_steps: like nerfacc's
        `update_every_n_steps`; during the warm-up every cell counts as occupied.
    eval_chunk_size: rays rendered per chunk (bounds memory at large resolutions).
    backend: "auto" (nerfacc on CUDA tensors, torch otherwise) | "cuda" | "torch".
    return_normal: composite field normals into RenderOutput.normal (costs a normal per sample).
    return_normal_in_training: also in training mode; turn off when no loss uses normals (analytic normals
        double the backward cost). Materials that shade with normals get them regardless.
    """

    num_samples_per_ray: int = 64
    near_far: str = "sphere"
    randomized: bool = True
    grid_prune: bool = True
    grid_resolution: int = 32
    occupancy_threshold: float = 0.01
    occupancy_update_every: int = 16
    occupancy_ema_decay: float = 0.95
    occupancy_warmup_steps: int = 256
    eval_chunk_size: int = 16384
    backend: str = "auto"
    return_normal: bool = True
    return_normal_in_training: bool = True

    def __post_init__(self) -> None:
        if self.near_far not in ("sphere", "box"):
            raise ValueError(f"near_far={self.near_far!r} is not supported: use 'sphere' or 'box'.")
        check_backend(self.backend, "renderer")
        if self.num_samples_per_ray < 1 or self.eval_chunk_size < 1 or self.grid_resolution < 1:
            raise ValueError("num_samples_per_ray, eval_chunk_size and grid_resolution must be positive.")


class VolumeRenderer(Renderer):
    """Renders an implicit field: `forward(cameras, shading, background_color) -> RenderOutput`.

    geometry: a module with `forward(points, with_normal) -> FieldOutput`, `density(points)` and `radius`.
    material: geometry.fields.materials.Material; background: geometry.fields.backgrounds.Background.
    Regularizers (threestudio's): orient (DreamFusion's orientation loss), sparsity, opaque, z_variance.
    """

    loss_names: ClassVar[tuple[str, ...]] = ("orient", "sparsity", "opaque", "z_variance")

    def __init__(
        self, cfg: VolumeRendererConfig, geometry: nn.Module, material: nn.Module, background: nn.Module
    ):
        super().__init__(geometry, material, background)
        self.cfg = cfg
        self.radius = float(geometry.radius)
        self.step_size = (
            2.0 * self.radius / cfg.num_samples_per_ray
        )  # nerfacc's marching step (longest chord / N)
        self.occupancy = OccupancyGrid(self.radius, cfg.grid_resolution)
        # Built up front (not on first CUDA use) so a checkpoint has the same keys before and after it runs.
        self.nerfacc_estimator = (
            self._make_estimator() if cfg.backend != "torch" and importable("nerfacc") else None
        )

    def _make_estimator(self) -> nn.Module:
        import nerfacc

        r = self.radius
        return nerfacc.OccGridEstimator(roi_aabb=[-r, -r, -r, r, r, r], resolution=self.cfg.grid_resolution)

    def _use_nerfacc(self, device: torch.device) -> bool:
        return use_cuda_library(self.cfg.backend, device, "nerfacc", "renderer")

    def _occupancy_value(self, points: Tensor) -> Tensor:
        """σ·Δt: the per-sample optical depth the occupancy threshold is compared with."""
        return self.geometry.density(points) * self.step_size

    # -- losses --------------------------------------------------------------------------------------
    def _normals_in_training(self) -> bool:
        cfg = self.cfg
        return (
            cfg.return_normal
            and cfg.return_normal_in_training
            and getattr(getattr(self.geometry, "cfg", None), "normal_type", None) != "none"
        )

    def check_losses(self, active: set[str]) -> None:
        if "orient" in active and not self._normals_in_training():
            raise ValueError(
                "loss.lambda_orient > 0 needs normals while training: set system.renderer.return_normal=true and "
                "return_normal_in_training=true (and a geometry normal_type other than none), or lambda_orient=0"
            )

    def regularizers(self, render: RenderOutput, active: set[str]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        if "orient" in active:
            # threestudio: Σ stopgrad(w)·max(0, n·d)² per ray, averaged over the pixels the object covers.
            out["orient"] = covered_mean(render.extras["orientation_loss"], render.opacity.detach() > 0)
        if "sparsity" in active:
            out["sparsity"] = sparsity_loss(render.opacity)
        if "opaque" in active:
            out["opaque"] = opaque_loss(render.opacity)
        if "z_variance" in active:
            out["z_variance"] = covered_mean(render.extras["z_variance"], render.opacity.detach() > 0.5)
        return out

    # -- occupancy -----------------------------------------------------------------------------------
    def set_step(self, step: int) -> None:
        super().set_step(step)
        if self.training:
            self.update_occupancy(step)

    @torch.no_grad()
    def update_occupancy(self, step: int) -> None:
        """Updates every `occupancy_update_every` steps (nerfacc's schedule on CUDA)."""
        cfg = self.cfg
        if not cfg.grid_prune:
            return
        device = self.occupancy.density_ema.device
        if self._use_nerfacc(device):
            self.nerfacc_estimator.update_every_n_steps(
                step,
                occ_eval_fn=self._occupancy_value,
                occ_thre=cfg.occupancy_threshold,
                ema_decay=cfg.occupancy_ema_decay,
                warmup_steps=cfg.occupancy_warmup_steps,
                n=cfg.occupancy_update_every,
            )
            return
        if step % cfg.occupancy_update_every != 0:
            return
        self.occupancy.update(
            self._occupancy_value,
            cfg.occupancy_ema_decay,
            cfg.occupancy_threshold,
            all_occupied=step < cfg.occupancy_warmup_steps,
        )

    @torch.no_grad()
    def refresh_occupancy(self, samples_per_cell: int = 8) -> None:
        """Rebuild the torch grid from the current field with no EMA memory (e.g. before evaluation).

        Takes the max over several random points per cell, so thin features are not missed.
        """
        self.occupancy.density_ema.zero_()
        self.occupancy.update(
            self._occupancy_value, 0.0, self.cfg.occupancy_threshold, samples_per_cell=samples_per_cell
        )

    # -- rendering -----------------------------------------------------------------------------------
    def forward(
        self, cameras: Cameras, shading: str | None = None, background_color: Tensor | None = None
    ) -> RenderOutput:
        B, H, W = len(cameras), cameras.height, cameras.width
        origins, dirs = get_rays(cameras)
        light = cameras.light_position if cameras.light_position is not None else cameras.position
        light = light[:, None, None, :].expand(B, H, W, 3)
        background = self.background_for(cameras, dirs, background_color)
        out = self.render_rays(origins.reshape(-1, 3), dirs.reshape(-1, 3), light.reshape(-1, 3), shading)
        opacity = out["opacity"].reshape(B, H, W, 1)
        rgb = over_background(out["color"].reshape(B, H, W, 3), opacity, background)
        per_ray = {k: out[k].reshape(B, H, W, -1) for k in ("orientation_loss", "z_variance")}
        if out["weights"].numel() > 0:
            per_ray["weights"] = out["weights"].reshape(B, H, W, -1)
        extras = {
            "background": background,
            "weights_sum": opacity,
            "num_samples": out["num_samples"],
            **per_ray,
        }
        normal = out["normal"].reshape(B, H, W, 3) if "normal" in out else None
        return RenderOutput(
            rgb=rgb, opacity=opacity, depth=out["depth"].reshape(B, H, W, 1), normal=normal, extras=extras
        )

    def render_rays(
        self,
        origins: Float[Tensor, "R 3"],
        dirs: Float[Tensor, "R 3"],
        light_positions: Float[Tensor, "R 3"] | None = None,
        shading: str | None = None,
    ) -> dict[str, Tensor]:
        """Render unit-direction rays in chunks of `eval_chunk_size`; returns per-ray tensors (no background).

        Keys: color (R,3) premultiplied by opacity, opacity (R,1), depth (R,1) = Σ w t (0 when empty),
        z_variance (R,1), orientation_loss (R,1), weights (R,N) (torch path), normal (R,3) when computed,
        num_samples (scalar: field queries made).
        """
        if light_positions is None:
            light_positions = origins
        size = self.cfg.eval_chunk_size
        chunks = [
            self._render_chunk(
                origins[i : i + size], dirs[i : i + size], light_positions[i : i + size], shading
            )
            for i in range(0, origins.shape[0], size)
        ]
        out = {k: torch.cat([c[k] for c in chunks], dim=0) for k in chunks[0] if k != "num_samples"}
        out["num_samples"] = sum(c["num_samples"] for c in chunks)
        return out

    def _near_far(self, origins: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor]:
        interval = ray_sphere_interval if self.cfg.near_far == "sphere" else ray_box_interval
        near, far, _ = interval(origins, dirs, self.radius)
        return near, far

    def _render_chunk(self, origins, dirs, light_positions, shading) -> dict[str, Tensor]:
        cfg = self.cfg
        R, N = origins.shape[0], cfg.num_samples_per_ray
        wanted = cfg.return_normal and (cfg.return_normal_in_training or not self.training)
        need_normal = wanted or self.material.requires_normal(shading)
        if self._use_nerfacc(origins.device):
            return self._render_chunk_nerfacc(origins, dirs, light_positions, shading, need_normal)

        near, far = self._near_far(origins, dirs)
        t_starts, t_ends, t_points = stratified_bins(near, far, N, jitter=cfg.randomized and self.training)
        points = origins[:, None, :] + dirs[:, None, :] * t_points[..., None]  # (R, N, 3)
        keep = (far > near)[:, None].expand(R, N)
        if cfg.grid_prune:
            keep = keep & self.occupancy.query(points)
        ray_idx, sample_idx = keep.nonzero(as_tuple=True)  # packed, sorted by ray

        field = self.geometry(points[ray_idx, sample_idx], with_normal=need_normal)
        sigmas = torch.zeros(R, N, dtype=field.density.dtype, device=origins.device)
        sigmas = sigmas.index_put((ray_idx, sample_idx), field.density.reshape(-1))
        weights, _, _ = composite_weights(sigmas, t_starts, t_ends)
        w_packed = weights[ray_idx, sample_idx][:, None]

        rgb = self.material(
            field.albedo, field.normal, points[ray_idx, sample_idx], light_positions[ray_idx], shading
        )
        out = self._accumulate(weights, t_points, w_packed, ray_idx, rgb, field.normal, dirs)
        out["weights"] = weights
        out["num_samples"] = torch.tensor(ray_idx.numel())
        return out

    def _accumulate(self, weights, t_points, w_packed, ray_idx, rgb, normal, dirs) -> dict[str, Tensor]:
        """Per-ray sums Σ w·value over the packed samples (index_add is the segment sum) + depth statistics."""
        R = weights.shape[0]
        opacity = weights.sum(-1, keepdim=True)
        depth = (weights * t_points).sum(-1, keepdim=True)
        # z-variance (weight-normalized spread of depth along the ray; threestudio's z_variance regularizer)
        mean_t = depth / opacity.clamp_min(1e-6)
        z_variance = (weights * (t_points - mean_t) ** 2).sum(-1, keepdim=True) / opacity.clamp_min(1e-6)
        color = rgb.new_zeros(R, 3).index_add(0, ray_idx, w_packed * rgb)
        out = {"color": color, "opacity": opacity, "depth": depth, "z_variance": z_variance}
        if normal is not None:
            out["normal"] = normal.new_zeros(R, 3).index_add(0, ray_idx, w_packed * normal)
            # DreamFusion orientation loss: Σ stopgrad(w)·max(0, n·d)² penalizes normals facing away from the camera
            facing = (normal * dirs[ray_idx]).sum(-1, keepdim=True).clamp_min(0.0) ** 2
            out["orientation_loss"] = normal.new_zeros(R, 1).index_add(0, ray_idx, w_packed.detach() * facing)
        else:
            out["orientation_loss"] = opacity.new_zeros(R, 1)
        return out

    def _render_chunk_nerfacc(
        self, origins, dirs, light_positions, shading, need_normal
    ) -> dict[str, Tensor]:
        """nerfacc packed path (CUDA only): occupancy-grid marching, packed weights, segment accumulation."""
        import nerfacc

        cfg, R = self.cfg, origins.shape[0]
        near, far = self._near_far(origins, dirs)
        estimator = self.nerfacc_estimator
        if not cfg.grid_prune:
            estimator.binaries.fill_(True)
        with torch.no_grad():
            ray_idx, t_starts, t_ends = estimator.sampling(
                origins,
                dirs,
                t_min=near,
                t_max=far,
                render_step_size=self.step_size,
                stratified=cfg.randomized and self.training,
                sigma_fn=lambda s, e, i: self.geometry.density(
                    origins[i] + dirs[i] * ((s + e) / 2)[:, None]
                ).squeeze(-1),
            )
        t_mid = (t_starts + t_ends) / 2
        points = origins[ray_idx] + dirs[ray_idx] * t_mid[:, None]
        field = self.geometry(points, with_normal=need_normal)
        w, _, _ = nerfacc.render_weight_from_density(
            t_starts, t_ends, field.density.reshape(-1), ray_indices=ray_idx, n_rays=R
        )
        rgb = self.material(field.albedo, field.normal, points, light_positions[ray_idx], shading)
        acc = lambda v: nerfacc.accumulate_along_rays(w, v, ray_indices=ray_idx, n_rays=R)  # noqa: E731
        opacity, depth = acc(None), acc(t_mid[:, None])
        mean_t = depth / opacity.clamp_min(1e-6)
        z_variance = acc((t_mid[:, None] - mean_t[ray_idx]) ** 2) / opacity.clamp_min(1e-6)
        out = {"color": acc(rgb), "opacity": opacity, "depth": depth, "z_variance": z_variance}
        out["weights"] = opacity.new_zeros(R, 0)  # packed weights have no dense per-ray layout here
        if field.normal is not None:
            out["normal"] = acc(field.normal)
            facing = (field.normal * dirs[ray_idx]).sum(-1, keepdim=True).clamp_min(0.0) ** 2
            out["orientation_loss"] = nerfacc.accumulate_along_rays(w.detach(), facing, ray_idx, R)
        else:
            out["orientation_loss"] = opacity.new_zeros(R, 1)
        out["num_samples"] = torch.tensor(ray_idx.numel())
        return out
