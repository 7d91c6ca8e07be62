"""Materials: DreamFusion's Lambertian shading at known angles, and the shading modes."""

from __future__ import annotations

import pytest
import torch

from geometry.fields.materials import DiffuseWithPointLight, NoMaterial


def test_lambertian_known_angles_and_modes():
    mat = DiffuseWithPointLight((0.1, 0.1, 0.1), (0.9, 0.9, 0.9))
    theta = torch.tensor([0.0, 60.0, 90.0, 120.0]).deg2rad()
    light = torch.stack([torch.zeros(4), theta.sin(), theta.cos()], -1) * 10.0
    points, normal = torch.zeros(4, 3), torch.tensor([[0.0, 0.0, 1.0]]).expand(4, 3)
    albedo = torch.tensor([[0.5, 1.0, 0.2]]).expand(4, 3)
    cos = theta.cos().clamp_min(0)[:, None]
    torch.testing.assert_close(mat(albedo, normal, points, light, "lambertian"), albedo * (0.1 + 0.9 * cos))
    torch.testing.assert_close(
        mat(albedo, normal, points, light, "textureless"), (0.1 + 0.9 * cos).expand(4, 3)
    )
    torch.testing.assert_close(mat(albedo, None, points, light, "albedo"), albedo)
    assert (
        mat.requires_normal("lambertian") and mat.requires_normal(None) and not mat.requires_normal("albedo")
    )
    with pytest.raises(ValueError, match="shading mode"):
        mat(albedo, normal, points, light, "phong")
    with pytest.raises(ValueError, match="needs normals"):
        mat(albedo, None, points, light, "lambertian")


def test_no_material_is_unlit_in_every_mode():
    albedo = torch.rand(5, 3)
    mat = NoMaterial()
    for mode in ("albedo", "lambertian", "textureless", None):
        assert torch.equal(mat(albedo, None, None, None, mode), albedo)
        assert not mat.requires_normal(mode)
    with pytest.raises(ValueError, match="shading mode"):
        mat(albedo, shading="phong")
