"""The 3DGS .ply: standard layout, round trips in both frames, the y-up frame's rotation of positions,
orientations and view-dependent colour, SH padding, and clear errors for broken files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from geometry.functional.frames import WORLD_TO_Y_UP, to_y_up
from geometry.gaussians.functional import covariance_3d, sh_to_rgb
from geometry.gaussians.model import PARAM_NAMES, GaussianConfig, GaussianModel
from geometry.gaussians.ply import (
    from_frame,
    ply_property_names,
    read_gaussians_ply,
    sh_rotation,
    to_frame,
    write_gaussians_ply,
)
from geometry.mesh.export_config import ExportConfig
from tests.geometry.gaussians.helpers import trained_model

R = torch.from_numpy(WORLD_TO_Y_UP).float()


def _tensors(n: int = 20, sh_degree: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    g, _ = trained_model(n=n, sh_degree=sh_degree)
    with torch.no_grad():
        g.sh_rest.normal_()
        g.quats.normal_()
        g.log_scales.uniform_(-3.0, -1.0)
    return {k: getattr(g, k).detach().clone() for k in PARAM_NAMES}


def _header_names(path) -> list[str]:
    header = path.read_bytes().split(b"end_header\n")[0].decode()
    return [line.split()[-1] for line in header.splitlines() if line.startswith("property")]


def _raw(path, n: int) -> np.ndarray:
    data = path.read_bytes()
    body = data[data.index(b"end_header\n") + len(b"end_header\n") :]
    return np.frombuffer(body, "<f4").reshape(n, -1)


@pytest.mark.parametrize("frame", ["world", "y_up"])
def test_round_trip_in_either_frame(tmp_path, frame):
    tensors = _tensors()
    path = write_gaussians_ply(tmp_path / "g.ply", tensors, frame=frame)
    back = read_gaussians_ply(path, frame=frame)
    for k in PARAM_NAMES:
        expected = F.normalize(tensors[k], dim=-1) if k == "quats" else tensors[k]
        torch.testing.assert_close(back[k], expected, atol=1e-5, rtol=1e-5, msg=k)


def test_standard_layout_and_channel_major_rest(tmp_path):
    tensors = _tensors()
    path = write_gaussians_ply(tmp_path / "g.ply", tensors, frame="world")
    names = _header_names(path)
    assert names == ply_property_names(8)
    assert names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert names[-8:] == ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    raw = torch.from_numpy(_raw(path, 20).copy())
    torch.testing.assert_close(raw[:, 9:17], tensors["sh_rest"][:, :, 0])  # f_rest_0..7: red's 8 coefficients
    torch.testing.assert_close(raw[:, 17:25], tensors["sh_rest"][:, :, 1])
    assert torch.all(raw[:, 3:6] == 0)  # normals unused


def test_y_up_file_rotates_positions_orientations_and_colours_exactly(tmp_path):
    tensors = _tensors(n=30, sh_degree=3)
    path = write_gaussians_ply(tmp_path / "g.ply", tensors)  # default: y-up
    file = read_gaussians_ply(path, frame="world")  # the file's own numbers, unrotated
    torch.testing.assert_close(file["means"], torch.from_numpy(to_y_up(tensors["means"].numpy())))
    # Orientation: the file's covariance is the world covariance seen in the y-up frame, R Σ Rᵀ.
    scales = tensors["log_scales"].exp()
    torch.testing.assert_close(
        covariance_3d(file["quats"], scales),
        R @ covariance_3d(tensors["quats"], scales) @ R.T,
        atol=1e-6,
        rtol=1e-5,
    )
    torch.testing.assert_close(file["sh_dc"], tensors["sh_dc"])  # DC is direction-free
    # View-dependent colour: seen from world direction d it equals the file's colour seen from to_y_up(d).
    d = F.normalize(torch.randn(30, 3, generator=torch.Generator().manual_seed(1)), dim=-1)
    world = sh_to_rgb(tensors["sh_dc"], tensors["sh_rest"], d)
    in_file = sh_to_rgb(file["sh_dc"], file["sh_rest"], torch.from_numpy(to_y_up(d.numpy())))
    torch.testing.assert_close(in_file, world, atol=1e-5, rtol=0)
    assert not torch.allclose(file["sh_rest"], tensors["sh_rest"], atol=1e-2)  # the coefficients really moved
    assert not torch.allclose(
        sh_to_rgb(file["sh_dc"], file["sh_rest"], d), world, atol=1e-2
    )  # wrong frame differs


def test_sh_rotation_is_orthogonal_per_band_and_inverts():
    rot = tuple(map(tuple, WORLD_TO_Y_UP.tolist()))
    inv = tuple(map(tuple, WORLD_TO_Y_UP.T.tolist()))
    M, M_inv = sh_rotation(rot, 4), sh_rotation(inv, 4)
    torch.testing.assert_close(M @ M_inv, torch.eye(15), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        M @ M.T, torch.eye(15), atol=1e-5, rtol=0
    )  # orthonormal basis: rotations are orthogonal
    blocks = torch.zeros(15, 15, dtype=torch.bool)
    for lo, hi in ((0, 3), (3, 8), (8, 15)):
        blocks[lo:hi, lo:hi] = True
    assert M[~blocks].abs().max() < 1e-5  # bands never mix
    t = _tensors(n=5, sh_degree=3)
    back = from_frame(to_frame(t, "y_up"), "y_up")
    torch.testing.assert_close(back["sh_rest"], t["sh_rest"], atol=1e-5, rtol=0)


def test_sh_degree_pads_or_truncates_the_rest(tmp_path):
    tensors = _tensors(n=6, sh_degree=1)
    padded = write_gaussians_ply(tmp_path / "p.ply", tensors, frame="world", sh_degree=3)
    names = _header_names(padded)
    assert [n for n in names if n.startswith("f_rest_")] == [f"f_rest_{i}" for i in range(45)]
    back = read_gaussians_ply(padded, frame="world")
    assert back["sh_rest"].shape == (6, 15, 3)
    torch.testing.assert_close(back["sh_rest"][:, :3], tensors["sh_rest"])
    assert torch.all(back["sh_rest"][:, 3:] == 0)
    truncated = write_gaussians_ply(tmp_path / "t.ply", tensors, frame="world", sh_degree=0)
    assert not any(n.startswith("f_rest_") for n in _header_names(truncated))
    # A degree-2 model reads the padded file: its own bands, the padding's zeros included.
    g = GaussianModel(GaussianConfig(init="ply", init_path=str(padded), init_frame="world", sh_degree=2))
    assert g.sh_rest.shape == (6, 8, 3) and torch.equal(g.sh_rest[:, 3:], torch.zeros(6, 5, 3))


def test_model_loads_a_ply_in_its_frame_and_exports_one(tmp_path):
    tensors = _tensors(n=10, sh_degree=2)
    path = write_gaussians_ply(tmp_path / "g.ply", tensors)
    g = GaussianModel(GaussianConfig(init="ply", init_path=str(path), sh_degree=1))  # y-up file; drops band 2
    assert g.sh_rest.shape == (10, 3, 3)
    torch.testing.assert_close(g.means, tensors["means"], atol=1e-6, rtol=0)
    torch.testing.assert_close(g.sh_rest, tensors["sh_rest"][:, :3], atol=1e-5, rtol=0)
    wrong = GaussianModel(GaussianConfig(init="ply", init_path=str(path), init_frame="world", sh_degree=1))
    torch.testing.assert_close(wrong.means, torch.from_numpy(to_y_up(tensors["means"].numpy())))
    files = g.export_files(
        tmp_path / "out", ExportConfig(gaussian_ply_frame="world", gaussian_ply_sh_degree=3)
    )
    assert files == {"gaussians_ply": str(tmp_path / "out" / "gaussians.ply")}
    exported = read_gaussians_ply(files["gaussians_ply"], frame="world")
    torch.testing.assert_close(exported["means"], g.means.detach())
    assert exported["sh_rest"].shape == (10, 15, 3)


def test_broken_files_are_value_errors_naming_the_problem(tmp_path):
    path = write_gaussians_ply(tmp_path / "g.ply", _tensors(n=8))
    data = path.read_bytes()
    cut = tmp_path / "cut.ply"
    cut.write_bytes(data[:-10])
    with pytest.raises(ValueError, match=r"truncated: 8 Gaussians need"):
        read_gaussians_ply(cut)
    not_ply = tmp_path / "x.ply"
    not_ply.write_bytes(b"hello")
    with pytest.raises(ValueError, match="not a PLY"):
        read_gaussians_ply(not_ply)
    ascii_ply = tmp_path / "a.ply"
    ascii_ply.write_bytes(b"ply\nformat ascii 1.0\nelement vertex 0\nend_header\n")
    with pytest.raises(ValueError, match="binary_little_endian"):
        read_gaussians_ply(ascii_ply)
    mesh_ply = tmp_path / "m.ply"
    mesh_ply.write_bytes(
        b"ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty float x\nproperty float y\n"
        b"property float z\nend_header\n" + np.zeros(3, "<f4").tobytes()
    )
    with pytest.raises(ValueError, match="lacks 3DGS properties"):
        read_gaussians_ply(mesh_ply)
