"""Camera math and conventions, defined once (DESIGN.md §3).

World: right-handed, z-up. Cameras: OpenGL convention (x right, y up, looking down -z).
Camera position for elevation e, azimuth a (degrees), distance d:
    d * (cos e cos a, cos e sin a, sin e)      -- azimuth 0 on +x, elevation 90 on +z.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor


@dataclass
class Cameras:
    """A batch of B pinhole cameras that share one image size.

    c2w:       (B, 4, 4) camera-to-world (OpenGL camera axes).
    fovy:      (B,) vertical field of view, radians.
    height, width: image size in pixels.
    elevation, azimuth: (B,) degrees; distance: (B,) world units (as sampled; c2w is the truth).
    light_position: (B, 3) world position of a point light, or None.
    """

    c2w: Float[Tensor, "B 4 4"]
    fovy: Float[Tensor, "B"]
    height: int
    width: int
    elevation: Float[Tensor, "B"]
    azimuth: Float[Tensor, "B"]
    distance: Float[Tensor, "B"]
    light_position: Float[Tensor, "B 3"] | None = None

    def __len__(self) -> int:
        return self.c2w.shape[0]

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    @property
    def position(self) -> Float[Tensor, "B 3"]:
        return self.c2w[:, :3, 3]

    @property
    def focal(self) -> Float[Tensor, "B"]:
        """Focal length in pixels (square pixels)."""
        return focal_from_fovy(self.fovy, self.height)

    def to(self, device: torch.device | str) -> Cameras:
        return self._map(lambda t: t.to(device))

    def __getitem__(self, index: int | slice | Tensor) -> Cameras:
        if isinstance(index, int):
            index = slice(index, index + 1)
        return self._map(lambda t: t[index])

    def with_resolution(self, height: int, width: int) -> Cameras:
        return replace(self, height=height, width=width)

    def _map(self, fn) -> Cameras:
        values = {}
        for f in fields(self):
            v = getattr(self, f.name)
            values[f.name] = fn(v) if isinstance(v, Tensor) else v
        return Cameras(**values)

    @staticmethod
    def cat(cams: list[Cameras]) -> Cameras:
        first = cams[0]
        values = {}
        for f in fields(first):
            vs = [getattr(c, f.name) for c in cams]
            if isinstance(vs[0], Tensor):
                values[f.name] = torch.cat(vs, dim=0)
            elif vs[0] is None:
                values[f.name] = None
            else:
                values[f.name] = vs[0]
        return Cameras(**values)


def spherical_to_position(
    elevation_deg: Float[Tensor, "B"], azimuth_deg: Float[Tensor, "B"], distance: Float[Tensor, "B"]
) -> Float[Tensor, "B 3"]:
    e, a = torch.deg2rad(elevation_deg), torch.deg2rad(azimuth_deg)
    return distance[:, None] * torch.stack([e.cos() * a.cos(), e.cos() * a.sin(), e.sin()], dim=-1)


def c2w_from_spherical(
    elevation_deg: Float[Tensor, "B"], azimuth_deg: Float[Tensor, "B"], distance: Float[Tensor, "B"]
) -> Float[Tensor, "B 4 4"]:
    """Camera-to-world poses looking at the origin.

    Built from the spherical frame instead of a generic look-at, so the pose stays well defined at the
    poles (elevation ±90): camera up = d(position)/d(elevation), i.e. world up at elevation 0.
    """
    e, a = torch.deg2rad(elevation_deg), torch.deg2rad(azimuth_deg)
    back = torch.stack([e.cos() * a.cos(), e.cos() * a.sin(), e.sin()], dim=-1)  # camera +z
    up = torch.stack([-e.sin() * a.cos(), -e.sin() * a.sin(), e.cos()], dim=-1)  # camera +y
    right = torch.cross(up, back, dim=-1)  # camera +x = y × z (right-handed)
    c2w = torch.zeros(elevation_deg.shape[0], 4, 4, dtype=back.dtype, device=back.device)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2] = right, up, back
    c2w[:, :3, 3] = distance[:, None] * back
    c2w[:, 3, 3] = 1.0
    return c2w


def look_at(
    eye: Float[Tensor, "B 3"], target: Float[Tensor, "B 3"], up: Float[Tensor, "B 3"] | None = None
) -> Float[Tensor, "B 4 4"]:
    """Generic look-at (OpenGL axes). `up` defaults to world +z; must not be parallel to the view axis."""
    if up is None:
        up = torch.tensor([0.0, 0.0, 1.0], dtype=eye.dtype, device=eye.device).expand_as(eye)
    back = F.normalize(eye - target, dim=-1)
    right = F.normalize(torch.cross(up, back, dim=-1), dim=-1)
    true_up = torch.cross(back, right, dim=-1)
    c2w = torch.zeros(eye.shape[0], 4, 4, dtype=eye.dtype, device=eye.device)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, true_up, back, eye
    c2w[:, 3, 3] = 1.0
    return c2w


def make_cameras(
    elevation_deg: Tensor | float | Sequence[float],
    azimuth_deg: Tensor | float | Sequence[float],
    distance: Tensor | float | Sequence[float],
    fovy_deg: Tensor | float | Sequence[float],
    height: int,
    width: int | None = None,
    device: torch.device | str = "cpu",
) -> Cameras:
    """Cameras on a sphere looking at the origin; scalars broadcast to the batch."""
    tensors = [
        torch.as_tensor(v, dtype=torch.float32, device=device).reshape(-1)
        for v in (elevation_deg, azimuth_deg, distance, fovy_deg)
    ]
    batch = max(t.shape[0] for t in tensors)
    elev, azim, dist, fovy = (t.expand(batch).clone() for t in tensors)
    return Cameras(
        c2w=c2w_from_spherical(elev, azim, dist),
        fovy=torch.deg2rad(fovy),
        height=height,
        width=width if width is not None else height,
        elevation=elev,
        azimuth=azim,
        distance=dist,
    )


def rotate_about_up(c2w: Float[Tensor, "B 4 4"], degrees: Float[Tensor, "B"]) -> Float[Tensor, "B 4 4"]:
    """The poses turned about the world up axis (z) by `degrees` (counter-clockwise seen from above): a camera
    at azimuth a goes to azimuth a + degrees, the same elevation and distance. Equivalently, the camera sees
    the world turned by −degrees (the azimuth oracles' "which side does this view see")."""
    theta = torch.deg2rad(degrees.to(c2w.dtype))
    rot = torch.zeros_like(c2w)
    rot[:, 0, 0], rot[:, 0, 1] = theta.cos(), -theta.sin()
    rot[:, 1, 0], rot[:, 1, 1] = theta.sin(), theta.cos()
    rot[:, 2, 2] = rot[:, 3, 3] = 1.0
    return rot @ c2w


def pose_azimuth(c2w: Float[Tensor, "B 4 4"]) -> Float[Tensor, "B"]:
    """Azimuth in degrees of each camera position (atan2(y, x), 0 on +x): the truth when poses are perturbed."""
    return torch.rad2deg(torch.atan2(c2w[:, 1, 3], c2w[:, 0, 3]))


def focal_from_fovy(fovy: Float[Tensor, "B"], height: int) -> Float[Tensor, "B"]:
    return 0.5 * height / torch.tan(0.5 * fovy)


def intrinsics(cameras: Cameras) -> Float[Tensor, "B 3 3"]:
    """Pixel-space K (computer-vision form: +y down in the image, principal point at the image center)."""
    f = cameras.focal
    K = torch.zeros(len(cameras), 3, 3, dtype=f.dtype, device=f.device)
    K[:, 0, 0], K[:, 1, 1] = f, f
    K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = 0.5 * cameras.width, 0.5 * cameras.height, 1.0
    return K


def ray_directions_camera(cameras: Cameras) -> Float[Tensor, "B H W 3"]:
    """Unnormalized camera-space directions through pixel centers; row 0 is the top of the image."""
    H, W, device = cameras.height, cameras.width, cameras.device
    j = torch.arange(W, dtype=torch.float32, device=device) + 0.5
    i = torch.arange(H, dtype=torch.float32, device=device) + 0.5
    ii, jj = torch.meshgrid(i, j, indexing="ij")  # (H, W)
    f = cameras.focal[:, None, None]
    x = (jj[None] - 0.5 * W) / f
    y = -(ii[None] - 0.5 * H) / f  # image rows grow downward, camera y grows upward
    return torch.stack([x, y, -torch.ones_like(x)], dim=-1)


def get_rays(cameras: Cameras) -> tuple[Float[Tensor, "B H W 3"], Float[Tensor, "B H W 3"]]:
    """World-space ray origins and unit directions through every pixel center."""
    d_cam = ray_directions_camera(cameras)
    rot = cameras.c2w[:, None, None, :3, :3]  # (B,1,1,3,3)
    d_world = F.normalize((rot @ d_cam[..., None])[..., 0], dim=-1)
    origins = cameras.position[:, None, None, :].expand_as(d_world)
    return origins, d_world


def perspective(fovy: Float[Tensor, "B"], aspect: float, near: float = 0.01, far: float = 100.0) -> Tensor:
    """OpenGL projection matrix (B, 4, 4) mapping camera space to clip space."""
    t = torch.tan(0.5 * fovy)
    P = torch.zeros(fovy.shape[0], 4, 4, dtype=fovy.dtype, device=fovy.device)
    P[:, 0, 0] = 1.0 / (aspect * t)
    P[:, 1, 1] = 1.0 / t
    P[:, 2, 2] = -(far + near) / (far - near)
    P[:, 2, 3] = -2.0 * far * near / (far - near)
    P[:, 3, 2] = -1.0
    return P


def mvp_matrix(cameras: Cameras, near: float = 0.01, far: float = 100.0) -> Float[Tensor, "B 4 4"]:
    """World → clip space: projection @ world-to-camera."""
    proj = perspective(cameras.fovy, cameras.width / cameras.height, near, far)
    return proj @ torch.linalg.inv(cameras.c2w)


def project_points(cameras: Cameras, points: Float[Tensor, "B N 3"]) -> Float[Tensor, "B N 2"]:
    """World points → pixel coordinates (x to the right, y down, pixel centers at +0.5)."""
    w2c = torch.linalg.inv(cameras.c2w)
    p_cam = (w2c[:, None, :3, :3] @ points[..., None])[..., 0] + w2c[:, None, :3, 3]
    f = cameras.focal[:, None]
    x = f * p_cam[..., 0] / -p_cam[..., 2] + 0.5 * cameras.width
    y = -f * p_cam[..., 1] / -p_cam[..., 2] + 0.5 * cameras.height
    return torch.stack([x, y], dim=-1)
