"""Backgrounds: the colour seen along rays that leave the object, as a function of view direction.

All return (B, H, W, 3) in [0, 1] for unit ray directions (B, H, W, 3). In training mode each background is
replaced, with probability `random_color_prob` per batch element, by a solid colour so the object cannot
"paint" its background into the volume: a uniform random colour (DreamFusion / threestudio) or, with
`random_color_mode: black_white`, white or black at random (DreamGaussian's inverted background).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor, nn

from geometry.functional.frequency import frequency_bands, frequency_encode
from geometry.functional.mlp import mlp
from geometry.functional.sh import spherical_harmonics

RANDOM_COLOR_MODES = ("uniform", "black_white")


def random_color_augment(
    background: Float[Tensor, "B H W 3"],
    prob: float,
    generator: torch.Generator | None = None,
    mode: str = "uniform",
) -> Float[Tensor, "B H W 3"]:
    """Replace each batch element's background by a solid colour with probability `prob`.

    mode "uniform": the colour is uniform in [0, 1]³; "black_white": white or black with equal odds.
    """
    B = background.shape[0]
    device = background.device
    replace = torch.rand(B, generator=generator, device=device) < prob
    if mode == "black_white":
        colors = (torch.rand(B, 1, generator=generator, device=device) < 0.5).float().expand(B, 3)
    else:
        colors = torch.rand(B, 3, generator=generator, device=device)
    solid = colors.to(background)[:, None, None, :].expand_as(background)
    return torch.where(replace[:, None, None, None], solid, background)


class Background(nn.Module):
    """Base class: subclasses implement `color(dirs)`; `forward` adds the training-time augmentation."""

    def __init__(self, random_color_prob: float = 0.0, random_color_mode: str = "uniform") -> None:
        super().__init__()
        if not 0.0 <= random_color_prob <= 1.0:
            raise ValueError(f"random_color_prob must be in [0, 1], got {random_color_prob}.")
        if random_color_mode not in RANDOM_COLOR_MODES:
            raise ValueError(f"random_color_mode={random_color_mode!r}: use one of {RANDOM_COLOR_MODES}.")
        self.random_color_prob = random_color_prob
        self.random_color_mode = random_color_mode

    def color(self, dirs: Float[Tensor, "B H W 3"]) -> Float[Tensor, "B H W 3"]:
        raise NotImplementedError

    def forward(
        self, dirs: Float[Tensor, "B H W 3"], generator: torch.Generator | None = None
    ) -> Float[Tensor, "B H W 3"]:
        bg = self.color(dirs)
        if self.training and self.random_color_prob > 0:
            bg = random_color_augment(bg, self.random_color_prob, generator, self.random_color_mode)
        return bg


class SolidBackground(Background):
    """One fixed colour (RGB in [0, 1]) everywhere."""

    def __init__(
        self,
        color: Sequence[float] = (1.0, 1.0, 1.0),
        random_color_prob: float = 0.0,
        random_color_mode: str = "uniform",
    ):
        super().__init__(random_color_prob, random_color_mode)
        self.register_buffer("rgb", torch.tensor(color, dtype=torch.float32))

    def color(self, dirs):
        return self.rgb.to(dirs)[None, None, None, :].expand(*dirs.shape[:-1], 3)


class _DirectionMLP(Background):
    """MLP(encoding(direction)) → sigmoid; shared by the two learned backgrounds."""

    def __init__(self, in_dim: int, hidden: int, n_hidden_layers: int, random_color_prob: float) -> None:
        super().__init__(random_color_prob)
        self.mlp = mlp(in_dim, hidden, n_hidden_layers, 3)

    def encode(self, dirs: Tensor) -> Tensor:
        raise NotImplementedError

    def color(self, dirs):
        return torch.sigmoid(self.mlp(self.encode(dirs)))


class LearnedBackground(_DirectionMLP):
    """DreamFusion/threestudio background: small MLP on SH (degree 3, 16 terms) of the view direction, sigmoid.

    SH degree 3 is band-limited, so the background stays smooth: it can only explain low-frequency colour.
    """

    def __init__(self, hidden: int = 32, n_hidden_layers: int = 2, random_color_prob: float = 0.5) -> None:
        super().__init__(16, hidden, n_hidden_layers, random_color_prob)

    def encode(self, dirs):
        return spherical_harmonics(dirs, 4)


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
        self.register_buffer("freqs", frequency_bands(n_frequencies), persistent=False)

    def encode(self, dirs):
        return frequency_encode(dirs, self.freqs)
