"""Real spherical harmonics up to degree 3 (16 coefficients): the one copy used by encodings, learned
backgrounds and Gaussian colours.

Standard real, orthonormal basis with the Condon–Shortley phase, in the order and with the constants of the
3DGS reference (`C0..C3` of its sh_utils) and tinycudann's SphericalHarmonics encoding. For unit directions
the 3DGS l=3 polynomials `4z² − x² − y²` and `2z² − 3x² − 3y²` equal `5z² − 1` and `5z² − 3` used here.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

SH_C0 = 0.28209479177387814  # Y_00 = 1 / (2 sqrt(pi)); 3DGS .ply: f_dc = (rgb − 0.5) / SH_C0
SH_C1 = 0.4886025119029199
SH_C2 = (
    1.0925484305920792,
    -1.0925484305920792,
    0.31539156525252005,
    -1.0925484305920792,
    0.5462742152960396,
)
SH_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def spherical_harmonics(dirs: Float[Tensor, "*S 3"], bands: int) -> Float[Tensor, "*S C"]:
    """Y_lm of unit directions for l < bands (bands 1..4, C = bands²), orthonormal: ∫ Y_i Y_j dω = δ_ij."""
    if not 1 <= bands <= 4:
        raise ValueError(f"spherical harmonics: bands={bands}; use 1..4 (degree 0..3)")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, SH_C0)]
    if bands > 1:
        out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if bands > 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [
            SH_C2[0] * x * y,
            SH_C2[1] * y * z,
            SH_C2[2] * (3.0 * zz - 1.0),
            SH_C2[3] * x * z,
            SH_C2[4] * (xx - yy),
        ]
    if bands > 3:
        out += [
            SH_C3[0] * y * (3.0 * xx - yy),
            SH_C3[1] * x * y * z,
            SH_C3[2] * y * (5.0 * zz - 1.0),
            SH_C3[3] * z * (5.0 * zz - 3.0),
            SH_C3[4] * x * (5.0 * zz - 1.0),
            SH_C3[5] * z * (xx - yy),
            SH_C3[6] * x * (xx - 3.0 * yy),
        ]
    return torch.stack(out, dim=-1)
