"""Analytic density fields for the mesh tests: spheres as steep sigmoids of their signed distance."""

from __future__ import annotations

import torch

SHARPNESS, PEAK = 0.01, 100.0  # density = PEAK·sigmoid(−sdf / SHARPNESS): surface at PEAK / 2


def sphere_sdf(points, center=(0.0, 0.0, 0.0), r=0.5):
    return (points - torch.tensor(center)).norm(dim=-1) - r


def density_of(sdf_fn):
    return lambda p: PEAK * torch.sigmoid(-sdf_fn(p) / SHARPNESS)
