"""export_geometry end to end on an analytic scene: accuracy of geometry and texture, options, clear errors."""

from __future__ import annotations

import pytest
import torch
import trimesh

from geometry.analytic import builtin_scene
from geometry.cameras import get_rays, make_cameras
from geometry.functional.frames import from_y_up
from geometry.mesh.export import ExportConfig, ExportError, export_geometry
from geometry.mesh.extract import OpacityProbe
from geometry.mesh.io import read_glb
from geometry.mesh.mesh import Mesh
from geometry.mesh.metrics import surface_accuracy
from geometry.mesh.surface import density_to_mesh
from tests.fixtures.fields import SceneField

FAST = dict(resolution=64, target_faces=5000, texture_size=512)


def load_glb_world(path) -> tuple[Mesh, torch.Tensor]:
    mesh, image = read_glb(path)
    return mesh, torch.from_numpy(image)


@pytest.fixture(scope="module")
def snowman_export(tmp_path_factory):
    field = SceneField(builtin_scene("a snowman"))
    out = tmp_path_factory.mktemp("export")
    result = export_geometry(field, ExportConfig(formats=["glb", "obj", "ply"], **FAST), out)
    return field, result


def test_exported_surface_and_texture_match_the_scene(snowman_export):
    field, result = snowman_export
    mesh, image = load_glb_world(result.files["glb"])
    acc = surface_accuracy(mesh, image, field.scene.sdf, field.scene.albedo, n_samples=5000)
    assert acc.vertex_sdf < 0.03 and acc.sample_sdf < 0.03, acc
    assert acc.color_error < 0.1, acc
    assert set(result.files) == {"glb", "obj", "ply"}
    assert all(p.endswith(f".{k}") for k, p in result.files.items())
    assert result.info["faces"] <= 5000 < result.info["extracted_faces"]
    assert {"extract", "decimate", "unwrap", "bake", "write"} <= set(result.timings)


def test_silhouette_probe_threshold_matches_the_surface():
    scene = builtin_scene("a snowman")
    cams = make_cameras([15.0, 15.0, 60.0], [0.0, 120.0, 240.0], [2.5] * 3, 45.0, 32)
    origins, dirs = get_rays(cams)
    probe = OpacityProbe(origins.reshape(-1, 3), dirs.reshape(-1, 3), scene.render(cams).opacity.reshape(-1))
    mesh = density_to_mesh(SceneField(scene), ExportConfig(resolution=48), probe)
    assert scene.sdf(torch.from_numpy(mesh.vertices)).abs().mean() < 0.03


def test_bottom_center_pivot_puts_the_base_at_the_origin(tmp_path):
    field = SceneField(builtin_scene("a snowman"))
    result = export_geometry(field, ExportConfig(formats=["glb"], pivot="bottom_center", **FAST), tmp_path)
    loaded = trimesh.load(result.files["glb"], force="mesh", process=False)
    lo, hi = loaded.vertices.min(0), loaded.vertices.max(0)
    assert abs(lo[1]) < 1e-5  # glTF y is up: the lowest point stands on y = 0
    assert abs(lo[0] + hi[0]) < 1e-4 and abs(lo[2] + hi[2]) < 1e-4  # centred in the ground plane
    assert result.info["pivot_offset"][2] > 0.5  # the snowman's lowest point is at world z ≈ −0.65


def test_field_without_surface_raises_before_writing(tmp_path):
    class Empty(SceneField):
        def density(self, p):
            return torch.zeros(len(p), 1)

    out = tmp_path / "export"
    with pytest.raises(ExportError, match="no surface"):
        export_geometry(Empty(builtin_scene("a donut")), ExportConfig(resolution=16), out)
    assert not out.exists() or not any(out.iterdir())


def test_validate_lists_every_bad_value():
    cfg = ExportConfig(
        formats=["fbx"], resolution=4, threshold="high", target_faces=10, texture_size=0, pivot="top"
    )
    with pytest.raises(ExportError) as info:
        cfg.validate()
    message = str(info.value)
    assert "\n" not in message  # one line for the user
    problems = message.split(": ", 1)[1].split("; ")
    assert len(problems) == 6 and all(p.strip().startswith("export.") for p in problems)
    assert ExportConfig().validate().formats == ["glb", "obj"]


def test_sdf_isosurface_and_ply_only(tmp_path):
    field = SceneField(builtin_scene("a donut"))
    result = export_geometry(field, ExportConfig(formats=["ply"], isosurface="sdf", resolution=48), tmp_path)
    assert list(result.files) == ["ply"] and sorted(p.name for p in tmp_path.iterdir()) == ["model.ply"]
    loaded = trimesh.load(result.files["ply"], process=False)
    assert field.sdf(torch.from_numpy(from_y_up(loaded.vertices))).abs().mean() < 0.03


def test_sdf_isosurface_on_a_density_field_is_one_clear_error(tmp_path):
    class DensityOnly(SceneField):
        sdf = None

    with pytest.raises(ExportError, match="isosurface=density"):
        export_geometry(
            DensityOnly(builtin_scene("a donut")), ExportConfig(isosurface="sdf", resolution=16), tmp_path
        )
