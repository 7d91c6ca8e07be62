"""Perp-Neg's view-interpolation rule written out by hand (plain Python math), for tests to compare with."""

from __future__ import annotations

import math

import torch

from distill.conditions.views import BACK, FRONT, OVERHEAD, SIDE

# The Perp-Neg curves (a, b, c) of f(r) = a·exp(−b·r) + c (stable-dreamfusion / threestudio defaults).
F_FS = F_SF = (4.0, 0.5, -2.426)
F_SB = (1.0, 0.5, -0.606)
F_FSB = (1.0, 0.5, 0.967)
PERP_NEG_AZIMUTHS = (0.0, 30.0, -60.0, 89.0, 90.0, 135.0, -170.0, 180.0, 270.0)
PERP_NEG_ELEVATIONS = (0.0, 30.0, 61.0, 80.0)


def reference_perp_neg(elevation: float, azimuth: float, overhead_threshold: float = 60.0):
    """The Perp-Neg rule written out scalar by scalar, in plain Python math.

    Returns (positive [(view, coefficient), ...], negative views (a, b), weights (w_a, w_b)).
    """

    def f(abc, r):
        return abc[0] * math.exp(-abc[1] * r) + abc[2]

    if elevation > overhead_threshold:
        return [(OVERHEAD, 1.0)], None, (0.0, 0.0)
    a = abs((azimuth + 180.0) % 360.0 - 180.0)  # |azimuth| after wrapping to (-180, 180]
    if a < 90.0:
        r = 1.0 - a / 90.0
        return [(FRONT, r), (SIDE, 1.0 - r)], (FRONT, SIDE), (-f(F_FS, r), -f(F_SF, 1.0 - r))
    r = 2.0 - a / 90.0
    return [(SIDE, r), (BACK, 1.0 - r)], (SIDE, FRONT), (-f(F_SB, r), -f(F_FSB, r))


def grid() -> tuple[torch.Tensor, torch.Tensor]:
    """Every (elevation, azimuth) of the two lists above, flattened."""
    elev, az = zip(*[(e, a) for e in PERP_NEG_ELEVATIONS for a in PERP_NEG_AZIMUTHS], strict=True)
    return torch.tensor(elev), torch.tensor(az)
