"""Adaptive density control for 3D Gaussians (3DGS §5.2; DreamGaussian's settings in REFERENCE.md).

Accumulates the screen-space gradient norm of each Gaussian's projected mean over the views where it is
visible; every `interval` steps clones small Gaussians with a large mean gradient, splits large ones in two
(samples from the Gaussian, scales / 1.6), prunes transparent or huge ones, and resets opacities now and then.
The optimizer's Adam moments are edited row by row together with the parameters (new rows start at zero, as
in 3DGS), so training continues without rebuilding the optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool
from torch import Tensor, nn

from geometry.gaussians.model import PARAM_NAMES, GaussianModel, quat_to_rotmat


@dataclass
class DensifyConfig:
    """Densification schedule and thresholds (3DGS / DreamGaussian).

    grad_threshold: mean view-space position-gradient norm (NDC-scaled as in gsplat) above which a Gaussian is
        cloned or split (DreamGaussian 0.01, GaussianDreamer 2e-4). percent_dense: clone vs split boundary, as
        a fraction of `extent` (world units). min_opacity: prune below. max_screen_size: prune Gaussians whose
        projected radius exceeded this many pixels (0 = off). max_world_size: prune larger than this fraction of
        extent. opacity_reset_interval: 0 = never. max_gaussians: the cap on N.
    """

    enabled: bool = True
    start_step: int = 100
    stop_step: int = 100000
    interval: int = 100
    grad_threshold: float = 0.01
    percent_dense: float = 0.01
    extent: float = 1.0
    min_opacity: float = 0.005
    max_screen_size: float = 0.0
    max_world_size: float = 0.1
    opacity_reset_interval: int = 0
    reset_opacity: float = 0.01
    max_gaussians: int = 100000

    def validate(self) -> None:
        if self.interval < 1 or self.max_gaussians < 1:
            raise ValueError("system.densify.interval and max_gaussians must be >= 1")
        if self.grad_threshold <= 0 or self.extent <= 0:
            raise ValueError("system.densify.grad_threshold and extent must be positive")


def resize_rows(
    optimizer: torch.optim.Optimizer | None, module: nn.Module, name: str, new: Tensor, rows: Tensor | None
) -> None:
    """Replace parameter `module.<name>` by a new Parameter holding `new`, and carry its Adam state over.

    A new Parameter object (not `.data =`): autograd caches each leaf's shape, so a resized leaf must be a new
    tensor (as in 3DGS). The optimizer's param_groups and state are re-keyed to it. rows: (N_new,) index of
    each new row's source row, or -1 for a fresh row (zero moments); None = same rows, moments zeroed
    (opacity reset).
    """
    old = getattr(module, name)
    param = nn.Parameter(new.contiguous(), requires_grad=old.requires_grad)
    state = None
    if optimizer is not None:
        for group in optimizer.param_groups:
            group["params"] = [param if p is old else p for p in group["params"]]
        state = optimizer.state.pop(old, None)
    if state:
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            if key not in state:
                continue
            moments = state[key]
            if rows is None:
                state[key] = torch.zeros_like(moments)
            else:
                moved = moments[rows.clamp_min(0)]
                fresh = (rows < 0).reshape(-1, *[1] * (moments.dim() - 1))
                state[key] = moved.masked_fill(fresh, 0.0)
        optimizer.state[param] = state
    setattr(module, name, param)


class DensifyStrategy(nn.Module):
    """Holds the gradient statistics (buffers: they travel with checkpoints) and edits a GaussianModel."""

    Config = DensifyConfig

    def __init__(self, cfg: DensifyConfig, model: GaussianModel) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        n = model.num_gaussians
        self.register_buffer("grad_accum", torch.zeros(n))
        self.register_buffer("visible_count", torch.zeros(n))
        self.register_buffer("max_radii", torch.zeros(n))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        for name in ("grad_accum", "visible_count", "max_radii"):
            key = prefix + name
            if key in state_dict:
                setattr(self, name, torch.empty_like(state_dict[key], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _reset_stats(self, n: int, device) -> None:
        self.grad_accum = torch.zeros(n, device=device)
        self.visible_count = torch.zeros(n, device=device)
        self.max_radii = torch.zeros(n, device=device)

    @torch.no_grad()
    def accumulate(self, means2d: Tensor, radii: Tensor, width: int, height: int) -> None:
        """Add this step's view-space gradients, after backward: `means2d` (C, N, 2) from the render's extras
        (its grad retained by the renderer) and `radii` (C, N, 2) (0 = not visible in that camera)."""
        grad = means2d.grad
        if grad is None:
            return
        grad = grad.reshape(-1, grad.shape[-2], 2)  # (C, N, 2)
        radii = radii.reshape(-1, radii.shape[-2], 2)
        if self.grad_accum.shape[0] != grad.shape[1]:
            # The set was replaced outside densification (a stage's init_from): statistics start over.
            self._reset_stats(grad.shape[1], grad.device)
        scale = torch.tensor([0.5 * width, 0.5 * height], device=grad.device) * grad.shape[0]
        norm = (grad * scale).norm(dim=-1)  # NDC-scaled, like 3DGS's thresholds expect
        visible = (radii > 0).any(-1)
        self.grad_accum += (norm * visible).sum(0)
        self.visible_count += visible.sum(0)
        radius = radii.max(-1).values.float().amax(0)
        self.max_radii = torch.maximum(self.max_radii, radius)

    def step(self, step: int, model: GaussianModel, optimizer) -> dict[str, int]:
        """Densify / prune / reset when the schedule says so; returns counts of what happened."""
        c = self.cfg
        stats = {}
        if not c.enabled or step < c.start_step or step > c.stop_step:
            return stats
        if step > 0 and step % c.interval == 0:
            stats = self.densify_and_prune(model, optimizer)
        if c.opacity_reset_interval > 0 and step > 0 and step % c.opacity_reset_interval == 0:
            self.reset_opacity(model, optimizer)
        return stats

    @torch.no_grad()
    def densify_and_prune(self, model: GaussianModel, optimizer) -> dict[str, int]:
        c = self.cfg
        grads = self.grad_accum / self.visible_count.clamp_min(1)
        big = model.scales.max(-1).values > c.percent_dense * c.extent
        candidates = grads >= c.grad_threshold
        room = c.max_gaussians - model.num_gaussians
        clone, split = candidates & ~big, candidates & big
        if int(clone.sum() + split.sum()) > max(room, 0):  # keep the largest gradients within the cap
            keep_n = max(room, 0)
            order = torch.argsort(torch.where(candidates, grads, -1.0), descending=True)
            chosen = torch.zeros_like(candidates)
            chosen[order[:keep_n]] = True
            clone, split = clone & chosen, split & chosen
        n_clone, n_split = int(clone.sum()), int(split.sum())
        self.grow(model, optimizer, clone, split)
        prune = model.opacities < c.min_opacity
        if c.max_screen_size > 0:
            prune |= self.max_radii > c.max_screen_size
        prune |= model.scales.max(-1).values > c.max_world_size * c.extent
        n_prune = int(prune.sum())
        if n_prune >= model.num_gaussians:  # never prune everything: keep the most opaque one
            prune[model.opacities.argmax()] = False
            n_prune -= 1
        self.select(model, optimizer, ~prune)
        self._reset_stats(model.num_gaussians, model.means.device)
        return {"cloned": n_clone, "split": n_split, "pruned": n_prune, "num_gaussians": model.num_gaussians}

    def grow(
        self, model: GaussianModel, optimizer, clone: Bool[Tensor, "N"], split: Bool[Tensor, "N"]
    ) -> None:
        """Append clones (exact copies) and split children (2 samples per parent, scale / 1.6; parents removed)."""
        n = model.num_gaussians
        clone_ids, split_ids = clone.nonzero()[:, 0], split.nonzero()[:, 0]
        params = {name: getattr(model, name).data for name in PARAM_NAMES}
        new = {name: [p, p[clone_ids]] for name, p in params.items()}
        if len(split_ids):
            # 3DGS: children drawn from N(μ, Σ) of the parent, each with scale / (0.8·2).
            R = quat_to_rotmat(params["quats"][split_ids]).repeat(2, 1, 1)
            s = params["log_scales"][split_ids].exp().repeat(2, 1)
            offsets = (R @ (torch.randn_like(s) * s)[..., None])[..., 0]
            children = {name: p[split_ids].repeat(2, *[1] * (p.dim() - 1)) for name, p in params.items()}
            children["means"] = children["means"] + offsets
            children["log_scales"] = children["log_scales"] - torch.log(torch.tensor(1.6))
            for name in PARAM_NAMES:
                new[name].append(children[name])
        rows_new = torch.full((len(clone_ids) + 2 * len(split_ids),), -1, dtype=torch.long)
        rows = torch.cat([torch.arange(n), rows_new]).to(model.means.device)
        for name in PARAM_NAMES:
            resize_rows(optimizer, model, name, torch.cat(new[name]), rows)
        # Statistics follow the rows (zeros for new ones) so that prune-by-screen-size still sees parents.
        pad = torch.zeros(len(rows_new), device=self.max_radii.device)
        self.max_radii = torch.cat([self.max_radii, pad])
        self.grad_accum = torch.cat([self.grad_accum, pad])
        self.visible_count = torch.cat([self.visible_count, pad])
        if len(split_ids):
            keep = torch.ones(model.num_gaussians, dtype=torch.bool, device=model.means.device)
            keep[split_ids] = False
            self.select(model, optimizer, keep)

    def select(self, model: GaussianModel, optimizer, keep: Bool[Tensor, "N"]) -> None:
        """Keep only the rows where `keep` (parameters, Adam moments and statistics alike)."""
        rows = keep.nonzero()[:, 0]
        for name in PARAM_NAMES:
            resize_rows(optimizer, model, name, getattr(model, name).data[rows], rows)
        self.max_radii, self.grad_accum = self.max_radii[rows], self.grad_accum[rows]
        self.visible_count = self.visible_count[rows]

    @torch.no_grad()
    def reset_opacity(self, model: GaussianModel, optimizer) -> None:
        """3DGS: clamp opacities to reset_opacity (as logits) and zero their Adam moments."""
        o = torch.tensor(self.cfg.reset_opacity)
        cap = torch.log(o / (1 - o)).item()
        resize_rows(optimizer, model, "opacity_logits", model.opacity_logits.data.clamp(max=cap), None)
