"""Backgrounds: the colour seen along rays that leave the volume, as a function of view direction.

All return (B, H, W, 3) in [0, 1] for unit ray directions (B, H, W, 3). In training mode each background is
replaced, with probability `random_color_prob` per batch element, by a random solid colour (DreamFusion /
threestudio augmentation, p = 0.5) so the object cannot "paint" its background into the volume.

The SH and frequency encodings here are small local polynomials (written here because geometry/encodings.py
was being written in parallel); they are the standard real SH basis (degree 3) and NeRF positional encoding.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn


def sh_basis_degree3(dirs: Float[Tensor, "*S 3"]) -> Float[Tensor, "*S 16"]:
    """Real spherical harmonics Y_lm, l = 0..3 (16 terms), orthonormal on the unit sphere (∫ Y_i Y_j dω = δ_ij)."""
    x, y, z = dirs.unbind(-1)
    xx, yy, zz = x * x, y * y, z * z
    return torch.stack(
        [
            torch.full_like(x, 0.28209479177387814),
            -0.48860251190291987 * y,
            0.48860251190291987 * z,
            -0.48860251190291987 * x,
            1.0925484305920792 * x * y,
            -1.0925484305920792 * y * z,
            0.94617469575755997 * zz - 0.31539156525251999,
            -1.0925484305920792 * x * z,
            0.54627421529603959 * (xx - yy),
            0.59004358992664352 * y * (3 * xx - yy),
            2.8906114426405538 * x * y * z,
            0.45704579946446572 * y * (5 * zz - 1),
            0.3731763325901154 * z * (5 * zz - 3),
            0.45704579946446572 * x * (5 * zz - 1),
            1.4453057213202769 * z * (xx - yy),
            0.59004358992664352 * x * (xx - 3 * yy),
        ],
        dim=-1,
    )


def frequency_encoding(x: Float[Tensor, "*S D"], n_frequencies: int) -> Float[Tensor, "*S E"]:
    """NeRF positional encoding (Mildenhall et al. 2020, eq. 4): [x, sin(2^k π x), cos(2^k π x)], k < L."""
    freqs = (2.0 ** torch.arange(n_frequencies, device=x.device, dtype=x.dtype)) * torch.pi
    angles = (x[..., None, :] * freqs[:, None]).flatten(-2)
    return torch.cat([x, angles.sin(), angles.cos()], dim=-1)


def random_color_augment(
    background: Float[Tensor, "B H W 3"], prob: float, generator: torch.Generator | None = None
) -> Float[Tensor, "B H W 3"]:
    """Replace each batch element's background by a uniform random solid colour with probability `prob`."""
    B = background.shape[0]
    device = background.device
    replace = torch.rand(B, generator=generator, device=device) < prob
    colors = torch.rand(B, 3, generator=generator, device=device).to(background)
    solid = colors[:, None, None, :].expand_as(background)
    return torch.where(replace[:, None, None, None], solid, background)


class Background(nn.Module):
    """Base class: subclasses implement `color(dirs)`; `forward` adds the training-time augmentation."""

    def __init__(self, random_color_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= random_color_prob <= 1.0:
            raise ValueError(f"random_color_prob must be in [0, 1], got {random_color_prob}.")
        self.random_color_prob = random_color_prob

    def color(self, dirs: Float[Tensor, "B H W 3"]) -> Float[Tensor, "B H W 3"]:
        raise NotImplementedError

    def forward(
        self, dirs: Float[Tensor, "B H W 3"], generator: torch.Generator | None = None
    ) -> Float[Tensor, "B H W 3"]:
        bg = self.color(dirs)
        if self.training and self.random_color_prob > 0:
            bg = random_color_augment(bg, self.random_color_prob, generator)
        return bg


class SolidBackground(Background):
    """One fixed colour (RGB in [0, 1]) everywhere."""

    def __init__(self, color: tuple[float, float, float] = (1.0, 1.0, 1.0), random_color_prob: float = 0.0):
        super().__init__(random_color_prob)
        self.register_buffer("rgb", torch.tensor(color, dtype=torch.float32))

    def color(self, dirs):
        return self.rgb.to(dirs)[None, None, None, :].expand(*dirs.shape[:-1], 3)


class _DirectionMLP(Background):
    """MLP(encoding(direction)) → sigmoid; shared by the two learned backgrounds."""

    def __init__(self, in_dim: int, hidden: int, n_hidden_layers: int, random_color_prob: float) -> None:
        super().__init__(random_color_prob)
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(n_hidden_layers):
            layers += [nn.Linear(dim, hidden), nn.ReLU(inplace=True)]
            dim = hidden
        layers.append(nn.Linear(dim, 3))
        self.mlp = nn.Sequential(*layers)

    def encode(self, dirs: Tensor) -> Tensor:
        raise NotImplementedError

    def color(self, dirs):
        return torch.sigmoid(self.mlp(self.encode(dirs)))


class LearnedBackground(_DirectionMLP):
    """DreamFusion/threestudio background: small MLP on SH(degree 3) of the view direction, sigmoid output.

    SH degree 3 is band-limited, so the background stays smooth: it can only explain low-frequency colour.
    """

    def __init__(self, hidden: int = 32, n_hidden_layers: int = 2, random_color_prob: float = 0.5) -> None:
        super().__init__(16, hidden, n_hidden_layers, random_color_prob)

    def encode(self, dirs):
        return sh_basis_degree3(dirs)


class NeuralEnvironmentMap(_DirectionMLP):
    """Environment map: MLP on a frequency (positional) encoding of the direction, sigmoid output.

    Unlike LearnedBackground's SH degree 3, the frequency encoding (n_frequencies octaves) can represent sharp,
    high-frequency sky detail — more expressive, and more prone to absorbing the object if unregularized.
    """

    def __init__(
        self,
        n_frequencies: int = 6,
        hidden: int = 64,
        n_hidden_layers: int = 2,
        random_color_prob: float = 0.5,
    ) -> None:
        super().__init__(3 + 6 * n_frequencies, hidden, n_hidden_layers, random_color_prob)
        self.n_frequencies = n_frequencies

    def encode(self, dirs):
        return frequency_encoding(dirs, self.n_frequencies)
