"""Encoding modules over the shared math: NeRF frequency encoding and spherical harmonics of directions."""

from __future__ import annotations

import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from geometry.functional.frequency import frequency_bands, frequency_encode
from geometry.functional.sh import spherical_harmonics


class FrequencyEncoding(nn.Module):
    """NeRF positional encoding (Mildenhall et al. 2020, eq. 4): sin/cos(2^k·π·x) for k < n_frequencies.

    Input (N, D); output (N, D·include_input + 2·D·n_frequencies), laid out like tcnn's Frequency encoding:
    [x (if include_input)] then per input dim d, per frequency k: sin(2^k π x_d), cos(2^k π x_d).
    """

    def __init__(self, n_frequencies: int, include_input: bool = True, in_dims: int = 3) -> None:
        super().__init__()
        if n_frequencies < 0:
            raise ValueError(f"n_frequencies={n_frequencies}; use >= 0")
        self.n_frequencies, self.include_input, self.in_dims = n_frequencies, include_input, in_dims
        self.n_output_dims = in_dims * (int(include_input) + 2 * n_frequencies)
        self.register_buffer("freqs", frequency_bands(n_frequencies), persistent=False)

    def forward(self, x: Float[Tensor, "N D"]) -> Float[Tensor, "N E"]:
        if x.shape[-1] != self.in_dims:
            raise ValueError(f"FrequencyEncoding built for {self.in_dims} dims, got input {tuple(x.shape)}")
        return frequency_encode(x, self.freqs, self.include_input)


class SphericalHarmonicsEncoding(nn.Module):
    """SH encoding of view directions: (N, 3) directions (normalized here) → (N, degree²).

    degree counts bands (1..4), as tcnn's SphericalHarmonics `degree`. tcnn takes (d + 1) / 2 in [0, 1]³;
    this takes the direction itself.
    """

    def __init__(self, degree: int = 4) -> None:
        super().__init__()
        if not 1 <= degree <= 4:
            raise ValueError(f"SphericalHarmonicsEncoding degree={degree}; use 1..4 (bands)")
        self.degree = degree
        self.n_output_dims = degree * degree

    def forward(self, directions: Float[Tensor, "N 3"]) -> Float[Tensor, "N C"]:
        if directions.shape[-1] != 3:
            raise ValueError(
                f"SphericalHarmonicsEncoding expects (N, 3) directions, got {tuple(directions.shape)}"
            )
        return spherical_harmonics(F.normalize(directions, dim=-1), self.degree)
