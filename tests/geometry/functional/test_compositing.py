"""Compositing over a background and the opacity regularizers (the shared copies every renderer uses)."""

from __future__ import annotations

import math

import pytest
import torch

from geometry.functional.compositing import background_image, over_background
from geometry.functional.regularizers import covered_mean, opaque_loss, sparsity_loss


def test_background_image_accepts_the_documented_shapes():
    like = torch.zeros(1, dtype=torch.float64)
    white = background_image(None, 2, 3, 4, like)
    assert white.shape == (2, 3, 4, 3) and white.dtype == torch.float64 and torch.all(white == 1)
    one = background_image(torch.tensor([0.1, 0.2, 0.3]), 2, 3, 4, like)
    torch.testing.assert_close(one, torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64).expand(2, 3, 4, 3))
    per_image = background_image(torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]), 2, 3, 4, like)
    assert torch.all(per_image[0] == torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    assert torch.all(per_image[1] == torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    full = torch.rand(2, 3, 4, 3)
    torch.testing.assert_close(background_image(full, 2, 3, 4, like), full.double())
    for bad in (torch.zeros(5, 3), torch.zeros(2, 4), torch.zeros(2, 3, 5, 3)):
        with pytest.raises(ValueError, match="background has shape"):
            background_image(bad, 2, 3, 4, like)


def test_over_operator_on_premultiplied_colour():
    colour, alpha = torch.tensor([[[[0.2, 0.1, 0.0]]]]), torch.tensor([[[[0.4]]]])
    bg = torch.tensor([[[[1.0, 0.5, 0.0]]]])
    torch.testing.assert_close(over_background(colour, alpha, bg), torch.tensor([[[[0.8, 0.4, 0.0]]]]))


def test_regularizer_formulas():
    a = torch.tensor([0.0, 0.5, 1.0]).view(1, 1, 3, 1)
    expected_sparsity = (math.sqrt(0.01) + math.sqrt(0.26) + math.sqrt(1.01)) / 3
    assert sparsity_loss(a).item() == pytest.approx(expected_sparsity, rel=1e-6)
    h = -(0.5 * math.log(0.5) * 2)
    eps = 1e-5
    h_edge = -(eps * math.log(eps) + (1 - eps) * math.log(1 - eps))
    assert opaque_loss(a).item() == pytest.approx((2 * h_edge + h) / 3, rel=1e-4)
    values = torch.tensor([1.0, 2.0, 6.0]).view(1, 1, 3, 1)
    assert covered_mean(values, a > 0).item() == pytest.approx(4.0)  # (2 + 6) / 2, not (1 + 2 + 6) / 3
    assert covered_mean(values, a > 2).item() == 0.0  # nothing covered
