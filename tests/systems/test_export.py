"""export_field end to end on an analytic scene: accuracy of geometry and texture, options, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from geometry.cameras import make_cameras
from geometry.mesh import Mesh
from geometry.mesh_io import y_up_to_z_up
from geometry.mesh_metrics import surface_accuracy
from geometry.scene import builtin_scene
from systems.export import ExportConfig, ExportError, export_field, extract_mesh
from tests.geometry.test_mesh import SceneField

FAST = dict(resolution=64, target_faces=5000, texture_size=512)


@pytest.fixture(scope="module")
def snowman_export(tmp_path_factory):
    field = SceneField(builtin_scene("a snowman"))
    out = tmp_path_factory.mktemp("export")
    paths = export_field(field, ExportConfig(formats=["glb", "obj", "ply"], **FAST), out)
    return field, paths


def test_exported_surface_and_texture_match_the_scene(snowman_export):
    field, paths = snowman_export
    loaded = trimesh.load(paths["glb"], force="mesh", process=False)
    mesh = Mesh(y_up_to_z_up(loaded.vertices), loaded.faces, uv=loaded.visual.uv.astype(np.float32))
    rgb = loaded.visual.material.to_simple().image.convert("RGB")
    image = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0)
    acc = surface_accuracy(mesh, image, field.scene.sdf, field.scene.albedo, n_samples=5000)
    assert acc.vertex_sdf < 0.03 and acc.sample_sdf < 0.03, acc
    assert acc.color_error < 0.1, acc
    assert set(paths) == {"glb", "obj", "ply"} and all(p.endswith(f".{k}") for k, p in paths.items())


def test_silhouette_probe_threshold_matches_the_surface():
    scene = builtin_scene("a snowman")
    from systems.export import opacity_probe_from_renderer

    cams = make_cameras([15.0, 15.0, 60.0], [0.0, 120.0, 240.0], [2.5] * 3, 45.0, 32)
    probe = opacity_probe_from_renderer(lambda c: scene.render(c), cams)
    mesh = extract_mesh(SceneField(scene), ExportConfig(resolution=48), probe)
    assert scene.sdf(torch.from_numpy(mesh.vertices)).abs().mean() < 0.03


def test_field_without_surface_raises_before_writing(tmp_path):
    class Empty:
        radius = 1.0

        def density(self, p):
            return torch.zeros(len(p), 1)

        def albedo(self, p):
            return torch.zeros(len(p), 3)

    out = tmp_path / "export"
    with pytest.raises(ExportError, match="no surface"):
        export_field(Empty(), ExportConfig(resolution=16), out)
    assert not out.exists() or not any(out.iterdir())


def test_validate_lists_every_bad_value():
    cfg = ExportConfig(formats=["fbx"], resolution=4, threshold="high", target_faces=10, texture_size=0)
    with pytest.raises(ExportError) as info:
        cfg.validate()
    message = str(info.value)
    assert "\n" not in message  # one line for the user
    problems = message.split(": ", 1)[1].split("; ")
    assert len(problems) == 5 and all(p.strip().startswith("export.") for p in problems)
    assert ExportConfig().validate().formats == ["glb", "obj"]


def test_sdf_isosurface_and_ply_only(tmp_path):
    field = SceneField(builtin_scene("a donut"))
    paths = export_field(field, ExportConfig(formats=["ply"], isosurface="sdf", resolution=48), tmp_path)
    assert list(paths) == ["ply"] and sorted(p.name for p in tmp_path.iterdir()) == ["model.ply"]
    loaded = trimesh.load(paths["ply"], process=False)
    assert field.sdf(torch.from_numpy(y_up_to_z_up(loaded.vertices))).abs().mean() < 0.03
