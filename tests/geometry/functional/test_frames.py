"""World (z-up, front +x) → y-up (glTF: front +Z, up +Y): a proper rotation, the same as a matrix and a quaternion."""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from geometry.functional.frames import (
    WORLD_TO_Y_UP,
    WORLD_TO_Y_UP_QUAT,
    from_y_up,
    quat_multiply,
    quats_to_y_up,
    to_y_up,
)
from geometry.gaussians.functional import quat_to_rotmat


def test_axes_map_front_to_plus_z_and_up_to_plus_y():
    world = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])  # front, left-to-right (+y), up
    np.testing.assert_array_equal(to_y_up(world), [[0, 0, 1], [1, 0, 0], [0, 1, 0]])
    assert np.linalg.det(WORLD_TO_Y_UP) == 1.0  # a rotation: nothing is mirrored
    points = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
    np.testing.assert_allclose(from_y_up(to_y_up(points)), points, atol=1e-6)
    np.testing.assert_allclose(to_y_up(points)[:, [2, 0, 1]], points, atol=1e-6)  # (X, Y, Z) = (y, z, x)


def test_quaternion_is_the_matrix():
    q = torch.tensor([WORLD_TO_Y_UP_QUAT], dtype=torch.float64)
    torch.testing.assert_close(quat_to_rotmat(q)[0], torch.from_numpy(WORLD_TO_Y_UP))
    # Hamilton product composes rotations: R(a ⊗ b) = R(a) R(b); scipy (x, y, z, w) as the reference.
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 10, 4, generator=gen, dtype=torch.float64).unbind(0)
    a, b = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(quat_to_rotmat(quat_multiply(a, b)), quat_to_rotmat(a) @ quat_to_rotmat(b))
    scipy = Rotation.from_quat(a[:, [1, 2, 3, 0]].numpy()).as_matrix()
    torch.testing.assert_close(quat_to_rotmat(a), torch.from_numpy(scipy))
    # An object's orientation expressed in the y-up frame: R_yup = W R_world.
    torch.testing.assert_close(
        quat_to_rotmat(quats_to_y_up(a)), torch.from_numpy(WORLD_TO_Y_UP) @ quat_to_rotmat(a)
    )
