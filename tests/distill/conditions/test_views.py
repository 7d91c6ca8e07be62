"""distill.conditions.views: view selection at the boundaries, azimuth wrapping, Perp-Neg's view rule."""

from __future__ import annotations

import math

import pytest
import torch

from distill.conditions.prompt_embeddings import ViewOptions
from distill.conditions.views import (
    BACK,
    DIRECTIONS,
    FRONT,
    OVERHEAD,
    SIDE,
    perp_neg_weights,
    shifted_exp_decay,
    view_direction,
    wrap_azimuth,
)
from tests.distill.conditions.perp_neg_reference import F_FS, F_FSB, F_SB, F_SF, grid, reference_perp_neg


def test_view_direction_boundaries():
    assert DIRECTIONS == ("front", "side", "back", "overhead") and (FRONT, SIDE, BACK, OVERHEAD) == (
        0,
        1,
        2,
        3,
    )
    az = torch.tensor(
        [0.0, 44.99, 45.0, -45.0, 45.01, 134.99, 135.0, -135.0, 135.01, 180.0, -180.0, 405.0, -315.5]
    )
    expected = [FRONT, FRONT, SIDE, SIDE, SIDE, SIDE, SIDE, SIDE, BACK, BACK, BACK, SIDE, FRONT]
    assert view_direction(torch.zeros_like(az), az).tolist() == expected
    elev = torch.tensor([60.0, 60.01, 90.0, -10.0])
    got = view_direction(elev, torch.tensor([0.0, 0.0, 180.0, 180.0]))
    assert got.tolist() == [FRONT, OVERHEAD, OVERHEAD, BACK]
    options = ViewOptions(front_threshold=30, back_threshold=60, overhead_threshold=45)
    got = view_direction(torch.tensor([0.0, 0.0, 0.0, 50.0]), torch.tensor([29.0, 31.0, 121.0, 0.0]), options)
    assert got.tolist() == [FRONT, SIDE, BACK, OVERHEAD]


def test_wrap_azimuth_to_half_open_interval():
    az = torch.tensor([0.0, 180.0, -180.0, 181.0, 270.0, -270.0, 540.0, -315.5, 720.0])
    assert wrap_azimuth(az).tolist() == pytest.approx(
        [0.0, 180.0, 180.0, -179.0, -90.0, 90.0, 180.0, 44.5, 0.0]
    )


def test_shifted_exp_decay_is_a_exp_minus_b_r_plus_c():
    r = torch.tensor([0.0, 0.25, 1.0])
    expected = [2.0 * math.exp(-3.0 * v) - 0.5 for v in (0.0, 0.25, 1.0)]
    assert shifted_exp_decay((2.0, 3.0, -0.5), r).tolist() == pytest.approx(expected, abs=1e-6)


def test_perp_neg_weights_follow_the_reference_rule():
    """r, weights and view indices at every (elevation, azimuth) of the grid equal the rule written by hand.

    The front half negates FRONT and SIDE with (−f_fs(r), −f_sf(1−r)); the back half SIDE and FRONT with
    (−f_sb(r), −f_fsb(r)); overhead views take the overhead prompt and zero-weight negatives."""
    elev, az = grid()
    r, weights, views = perp_neg_weights(elev, az, F_SB, F_FSB, F_FS, F_SF)
    assert r.shape == (len(az),) and weights.shape == (len(az), 2) and views.shape == (len(az), 4)
    for i, (e, a) in enumerate(zip(elev.tolist(), az.tolist(), strict=True)):
        positive, negatives, expected_w = reference_perp_neg(e, a)
        assert weights[i].tolist() == pytest.approx(expected_w, abs=1e-5), (e, a)
        if negatives is None:  # overhead: the positive is the overhead view alone
            assert views[i, :2].tolist() == [OVERHEAD, OVERHEAD], (e, a)
            continue
        (p0, c0), (p1, c1) = positive
        assert views[i].tolist() == [p0, p1, *negatives], (e, a)
        assert r[i].item() == pytest.approx(c0, abs=1e-6) and 1 - r[i].item() == pytest.approx(c1, abs=1e-6)


def test_perp_neg_front_view_negates_front_and_side_not_back():
    """The corrected front-half rule: at az = 0 the negatives are FRONT (≈ 0 weight) and SIDE, never BACK."""
    r, weights, views = perp_neg_weights(torch.zeros(2), torch.tensor([0.0, 30.0]), F_SB, F_FSB, F_FS, F_SF)
    assert views.tolist() == [[FRONT, SIDE, FRONT, SIDE], [FRONT, SIDE, FRONT, SIDE]]
    # 4·exp(−0.5) − 2.426 ≈ 0 (the constants are chosen so): the pure front view does not push against itself.
    assert abs(weights[0, 0].item()) < 1e-3
    assert weights[0, 1].item() == pytest.approx(-(4.0 - 2.426), abs=1e-5)  # f_sf(1 − r) at r = 1
    assert weights[1, 1].item() == pytest.approx(-(4.0 * math.exp(-0.5 / 3) - 2.426), abs=1e-5)


def test_perp_neg_overhead_threshold_is_configurable():
    elev, az = torch.tensor([50.0, 50.0]), torch.tensor([30.0, 150.0])
    _, w_default, v_default = perp_neg_weights(elev, az, F_SB, F_FSB, F_FS, F_SF)
    assert (v_default[:, 0] != OVERHEAD).all() and (w_default != 0).all()
    _, w_low, v_low = perp_neg_weights(elev, az, F_SB, F_FSB, F_FS, F_SF, overhead_threshold=45.0)
    assert (v_low[:, :2] == OVERHEAD).all() and (w_low == 0).all()
