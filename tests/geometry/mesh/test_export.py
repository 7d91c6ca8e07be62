"""export_geometry with this package's representations: a NeRF blob and a ball of Gaussians (the analytic-scene
accuracy checks live in tests/systems/test_export.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from geometry.fields.hash_grid import HashGridConfig
from geometry.gaussians.model import GaussianConfig, GaussianModel
from geometry.gaussians.ply import read_gaussians_ply
from geometry.mesh.export import ExportConfig, ExportError, export_geometry
from geometry.nerf.field import ImplicitVolume, NeRFConfig
from tests.geometry.mesh.test_io import glb_attribute, read_glb

FAST = dict(resolution=32, target_faces=0, texture_size=64, remove_floaters=0.0)


def blob() -> ImplicitVolume:
    """A NeRF whose density is the Magic3D blob softplus(10·(1 − |x| / 0.5)) exactly and albedo is red."""
    grid = HashGridConfig(
        n_levels=2, log2_hashmap_size=10, base_resolution=4, per_level_scale=2.0, backend="torch"
    )
    volume = ImplicitVolume(NeRFConfig(hash_grid=grid))
    with torch.no_grad():
        for mlp in (volume.density_mlp, volume.feature_mlp):
            mlp[-1].weight.zero_()
            mlp[-1].bias.zero_()
        volume.feature_mlp[-1].bias.copy_(torch.tensor([5.0, -5.0, -5.0]))
    return volume


def test_nerf_export_with_bottom_center_pivot(tmp_path):
    cfg = ExportConfig(formats=["glb", "ply"], threshold=math.log(2.0), pivot="bottom_center", **FAST)
    result = export_geometry(blob(), cfg, tmp_path)
    assert set(result.files) == {"glb", "ply"} and result.info["level"] == pytest.approx(math.log(2.0))
    positions = glb_attribute(*read_glb(result.files["glb"]), "POSITION")
    lo, hi = positions.min(0), positions.max(0)
    assert lo[1] == pytest.approx(0.0, abs=1e-6)  # standing on Y = 0 (world z = 0 after the pivot)
    np.testing.assert_allclose([(lo[0] + hi[0]) / 2, (lo[2] + hi[2]) / 2], 0.0, atol=1e-6)
    assert hi[1] == pytest.approx(1.0, abs=0.03)  # the blob's diameter
    np.testing.assert_allclose(
        result.info["pivot_offset"], [0.0, 0.0, 0.5], atol=0.03
    )  # lifted by its radius
    ply = trimesh.load(result.files["ply"], process=False)
    colours = np.asarray(ply.visual.vertex_colors)[:, :3]
    assert (colours[:, 0] > 245).all() and (colours[:, 1:] < 10).all()  # the albedo field, sigmoid(±5)


def test_gaussians_export_writes_their_ply_and_no_surface_is_one_error(tmp_path):
    g = GaussianModel(GaussianConfig(num_points=800, init_radius=0.4, init_opacity=0.9, init_scale=0.06))
    cfg = ExportConfig(formats=["ply"], gaussian_ply_sh_degree=3, **FAST)
    result = export_geometry(g, cfg, tmp_path / "out")
    assert set(result.files) == {"ply", "gaussians_ply"}
    radii = np.linalg.norm(read_gaussians_ply(result.files["gaussians_ply"])["means"].numpy(), axis=1)
    assert radii.max() <= 0.4 + 1e-5 and result.info["faces"] > 100
    empty = GaussianModel(GaussianConfig(num_points=5, init_opacity=0.01, init_scale=1e-4))
    with pytest.raises(ExportError):
        export_geometry(empty, cfg, tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()
