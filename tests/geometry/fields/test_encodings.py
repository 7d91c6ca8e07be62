"""Frequency and spherical-harmonics encoding modules over the shared math (geometry/functional)."""

from __future__ import annotations

import math

import pytest
import torch

from geometry.fields.encodings import FrequencyEncoding, SphericalHarmonicsEncoding
from geometry.functional.frequency import frequency_bands, frequency_encode
from geometry.functional.sh import spherical_harmonics


def test_frequency_encoding_against_hand_values():
    enc = FrequencyEncoding(n_frequencies=3, include_input=True)
    x = torch.tensor([[0.3, -0.7, 0.1]])
    expected = [0.3, -0.7, 0.1]
    for v in (0.3, -0.7, 0.1):
        for k in range(3):
            expected += [math.sin(2**k * math.pi * v), math.cos(2**k * math.pi * v)]
    torch.testing.assert_close(enc(x)[0], torch.tensor(expected), atol=1e-6, rtol=0)
    assert enc.n_output_dims == 21
    without = FrequencyEncoding(2, include_input=False)(x)
    assert without.shape == (1, 12)
    torch.testing.assert_close(without, frequency_encode(x, frequency_bands(2), include_input=False))
    with pytest.raises(ValueError, match="3 dims"):
        enc(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="n_frequencies"):
        FrequencyEncoding(-1)


@pytest.mark.usefixtures("unchecked_types")  # ill-typed input on purpose: our own error message
def test_spherical_harmonics_encoding_normalizes_its_input():
    enc = SphericalHarmonicsEncoding(degree=4)
    d = torch.randn(100, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    unit = d / d.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(enc(3.0 * d), spherical_harmonics(unit, 4))
    # Zonal value on +z from a non-unit direction: only m = 0 survives, Y_l0 = sqrt((2l + 1) / 4π).
    up = enc(torch.tensor([[0.0, 0.0, 2.0]], dtype=torch.float64))[0]
    for band in range(4):
        assert up[band * band + band].item() == pytest.approx(math.sqrt((2 * band + 1) / (4 * math.pi)))
    assert enc.n_output_dims == 16 and SphericalHarmonicsEncoding(degree=2)(d[:3]).shape == (3, 4)
    with pytest.raises(ValueError, match="degree"):
        SphericalHarmonicsEncoding(degree=5)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        enc(torch.zeros(4, 2))
