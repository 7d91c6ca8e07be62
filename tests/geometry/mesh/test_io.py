"""GLB/OBJ/PLY writers: Khronos validator, trimesh round trips, the y-up frame (front +Z, up +Y), atomic writes."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from distill3d.files import write_atomic
from geometry.functional.frames import from_y_up, to_y_up
from geometry.mesh.export import pivot_offset
from geometry.mesh.extract import marching_cubes, sample_grid
from geometry.mesh.io import write_glb, write_obj, write_ply
from geometry.mesh.mesh import Mesh, decimate, signed_volume
from geometry.mesh.texture import bake, unwrap
from tests.geometry.mesh.helpers import PEAK, density_of, sphere_sdf

ROOT = Path(__file__).resolve().parents[3]
VALIDATOR_SCRIPT = ROOT / "tests" / "gltf_validate.mjs"
VALIDATOR_PACKAGE = ROOT / ".ci" / "node" / "node_modules" / "gltf-validator"


def _colour(p, n=None):
    return (p.clamp(-1, 1) + 1) / 2


@pytest.fixture(scope="module")
def textured():
    shifted = lambda p: sphere_sdf(p, (0.1, 0.2, 0.3), 0.4)  # noqa: E731  off-centre: frame errors show up
    mesh = decimate(marching_cubes(sample_grid(density_of(shifted), 1.0, 32), PEAK / 2, 1.0), 1000)
    atlas = unwrap(mesh.with_normals(), texture_size=128)
    baked = bake(atlas, _colour, size=128)
    return atlas, baked.base_color.numpy()


def gltf_validate(path: Path) -> dict:
    """Run the Khronos glTF-Validator; skip (or fail under CI=true) when node or the package is missing."""
    node = shutil.which("node")
    if node is None or not VALIDATOR_PACKAGE.exists():
        msg = (
            "Khronos glTF-Validator missing: run `npm install --prefix .ci/node gltf-validator` (needs node)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    out = subprocess.run(
        [node, str(VALIDATOR_SCRIPT), str(path)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def read_glb(path: Path) -> tuple[dict, bytes]:
    """(glTF JSON, BIN chunk) of a GLB, parsed by hand (GLB §4: 12-byte header, JSON chunk, BIN chunk)."""
    data = Path(path).read_bytes()
    magic, version, total = struct.unpack_from("<4sII", data)
    assert (magic, version, total) == (b"glTF", 2, len(data))
    json_len, json_type = struct.unpack_from("<I4s", data, 12)
    assert json_type == b"JSON"
    gltf = json.loads(data[20 : 20 + json_len])
    bin_len, bin_type = struct.unpack_from("<I4s", data, 20 + json_len)
    assert bin_type == b"BIN\x00"
    return gltf, data[28 + json_len : 28 + json_len + bin_len]


def glb_attribute(gltf: dict, blob: bytes, name: str) -> np.ndarray:
    accessor = gltf["accessors"][gltf["meshes"][0]["primitives"][0]["attributes"][name]]
    view = gltf["bufferViews"][accessor["bufferView"]]
    width = {"VEC2": 2, "VEC3": 3}[accessor["type"]]
    flat = np.frombuffer(blob, "<f4", count=accessor["count"] * width, offset=view["byteOffset"])
    return flat.reshape(-1, width)


def test_glb_passes_khronos_validator(textured, tmp_path):
    mesh, image = textured
    path = write_glb(tmp_path / "model.glb", mesh, image)
    report = gltf_validate(path)
    issues = report["issues"]
    assert issues["numErrors"] == 0 and issues["numWarnings"] == 0, json.dumps(issues["messages"], indent=1)
    assert (
        report["info"]["generator"] == "distill3d" and report["info"]["totalVertexCount"] == mesh.num_vertices
    )


def test_glb_layout_and_y_up_frame(textured, tmp_path):
    mesh, image = textured
    gltf, blob = read_glb(write_glb(tmp_path / "model.glb", mesh, image))
    pos = gltf["accessors"][gltf["meshes"][0]["primitives"][0]["attributes"]["POSITION"]]
    v = mesh.vertices
    expected_min = [v[:, 1].min(), v[:, 2].min(), v[:, 0].min()]  # world (x, y, z) → glTF (y, z, x)
    assert np.allclose(pos["min"], expected_min, atol=1e-6)
    assert all(view["byteOffset"] % 4 == 0 for view in gltf["bufferViews"])
    np.testing.assert_allclose(glb_attribute(gltf, blob, "POSITION"), to_y_up(v), atol=1e-6)
    np.testing.assert_allclose(from_y_up(to_y_up(v)), v, atol=1e-6)


def _marked_box() -> Mesh:
    """A cube with a marker on its front (world +x, azimuth 0), a taller one on top (+z) and a thin one on its
    left-to-right side (+y): where each lands in the file pins the whole rotation."""
    parts = [
        trimesh.creation.box(extents=(0.4, 0.4, 0.4)),
        trimesh.creation.box(
            extents=(0.1, 0.1, 0.1), transform=trimesh.transformations.translation_matrix((0.3, 0, 0))
        ),
        trimesh.creation.box(
            extents=(0.1, 0.1, 0.3), transform=trimesh.transformations.translation_matrix((0, 0, 0.4))
        ),
        trimesh.creation.box(
            extents=(0.05, 0.2, 0.05), transform=trimesh.transformations.translation_matrix((0, 0.35, 0))
        ),
    ]
    tm = trimesh.util.concatenate(parts)
    v = np.asarray(tm.vertices, np.float32)
    uv = (v[:, :2] - v[:, :2].min(0)) / np.ptp(v[:, :2], axis=0)  # any UVs in [0, 1]
    return Mesh(v, np.asarray(tm.faces, np.int64), uv=uv.astype(np.float32)).with_normals()


def test_glb_front_faces_plus_z_and_up_is_plus_y(tmp_path):
    mesh = _marked_box()
    assert signed_volume(mesh.vertices, mesh.faces) > 0
    path = write_glb(tmp_path / "marked.glb", mesh, np.full((8, 8, 3), 0.5))
    for positions in (
        np.asarray(trimesh.load(path, force="mesh", process=False).vertices),  # trimesh keeps glTF's axes
        glb_attribute(*read_glb(path), "POSITION"),  # and the raw accessor says the same
    ):
        front, top, side = positions[:, 2].argmax(), positions[:, 1].argmax(), positions[:, 0].argmax()
        np.testing.assert_allclose(
            positions[front], [*positions[front][:2], 0.35], atol=1e-6
        )  # front marker: +Z
        assert abs(positions[front][0]) <= 0.05 + 1e-6 and abs(positions[front][1]) <= 0.05 + 1e-6
        np.testing.assert_allclose(positions[top][1], 0.55, atol=1e-6)  # top marker: +Y
        np.testing.assert_allclose(positions[side][0], 0.45, atol=1e-6)  # world +y: glTF +X
        assert positions[:, 2].min() == pytest.approx(-0.2) and positions[:, 1].min() == pytest.approx(-0.2)
    gltf, blob = read_glb(path)
    positions, normals = glb_attribute(gltf, blob, "POSITION"), glb_attribute(gltf, blob, "NORMAL")
    faces = mesh.faces
    assert signed_volume(positions, faces) == pytest.approx(
        signed_volume(mesh.vertices, faces), rel=1e-5
    )  # no mirror
    front_face = positions[:, 2] > 0.349  # the marker's front face: its normals point at the viewer, +Z
    assert front_face.sum() >= 4 and (normals[front_face] @ np.array([0, 0, 1.0]) > 0.5).all()


def test_pivot_offsets():
    v = np.array([[-0.2, 0.4, -0.3], [0.6, -0.2, 0.5], [0.0, 0.0, 0.1]], np.float32)
    np.testing.assert_array_equal(pivot_offset(v, "origin"), np.zeros(3))
    shifted = v + pivot_offset(v, "bottom_center")
    lo, hi = shifted.min(0), shifted.max(0)
    np.testing.assert_allclose([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]], 0.0, atol=1e-7)
    np.testing.assert_allclose(hi - lo, v.max(0) - v.min(0), atol=1e-7)  # a translation only
    # In the y-up file the bottom centre is at the origin with the object standing on Y = 0.
    y_up = to_y_up(shifted)
    assert y_up[:, 1].min() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("suffix", ["glb", "obj"])
def test_reload_with_trimesh_keeps_vertices_and_uvs(textured, tmp_path, suffix):
    mesh, image = textured
    path = tmp_path / f"model.{suffix}"
    (write_glb if suffix == "glb" else write_obj)(path, mesh, image)
    loaded = trimesh.load(path, force="mesh", process=False)
    assert len(loaded.vertices) == mesh.num_vertices and len(loaded.faces) == mesh.num_faces
    assert np.allclose(from_y_up(np.asarray(loaded.vertices)), mesh.vertices, atol=1e-5)
    assert np.allclose(np.asarray(loaded.visual.uv), mesh.uv, atol=1e-5)  # trimesh returns v-up UVs for both
    texture = np.asarray(
        loaded.visual.material.to_simple().image if suffix == "glb" else loaded.visual.material.image
    )
    assert texture.shape[:2] == image.shape[:2]


def test_ply_vertex_colours_in_the_same_frame(textured, tmp_path):
    mesh, _ = textured
    colours = _colour(torch.from_numpy(mesh.vertices)).numpy()
    loaded = trimesh.load(write_ply(tmp_path / "model.ply", mesh, colours), process=False)
    assert np.allclose(np.asarray(loaded.visual.vertex_colors)[:, :3] / 255.0, colours, atol=1 / 255)
    assert np.allclose(from_y_up(np.asarray(loaded.vertices)), mesh.vertices, atol=1e-6)


def test_writers_refuse_meshes_without_uvs_or_normals(tmp_path):
    bare = Mesh(np.zeros((3, 3), np.float32), np.array([[0, 1, 2]]))
    for writer in (write_glb, write_obj):
        with pytest.raises(ValueError, match="UVs and normals"):
            writer(tmp_path / "x", bare, np.zeros((4, 4, 3)))
    assert list(tmp_path.iterdir()) == []


def test_write_atomic_leaves_nothing_half_written(tmp_path):
    target = tmp_path / "a.bin"
    write_atomic(target, b"old")
    with pytest.raises(TypeError):
        write_atomic(target, object())  # fails mid-write
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["a.bin"]
