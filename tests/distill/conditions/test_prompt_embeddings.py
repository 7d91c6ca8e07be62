"""distill.conditions.prompt_embeddings: per-camera view selection, Perp-Neg blending, the Condition API."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distill.conditions.base import ConditionBatch, Conditioning
from distill.conditions.prompt_embeddings import PromptEmbeddings, ViewOptions
from distill.conditions.views import BACK, FRONT, OVERHEAD, SIDE
from geometry.cameras import make_cameras
from tests.distill.conditions.perp_neg_reference import grid, reference_perp_neg


def _random_embeddings(**options) -> tuple[PromptEmbeddings, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    prompt, uncond, views = (
        torch.randn(1, 5, 3, generator=g),
        torch.randn(1, 5, 3, generator=g),
        torch.randn(4, 5, 3, generator=g),
    )
    return PromptEmbeddings(prompt, uncond, views, ViewOptions(**options)), prompt, uncond, views


def test_perp_neg_embeddings_blend_the_reference_views():
    """Positive = the r-blend of the rule's two views (overhead: the overhead one); negatives named."""
    emb, _, uncond, views = _random_embeddings()
    elev, az = grid()
    out, weights = emb.perp_neg_embeddings(elev, az)
    assert out.shape == (len(az), 4, 5, 3)
    for i, (e, a) in enumerate(zip(elev.tolist(), az.tolist(), strict=True)):
        positive, negatives, expected_w = reference_perp_neg(e, a)
        expected_pos = sum(c * views[v] for v, c in positive)
        torch.testing.assert_close(out[i, 0], expected_pos, msg=f"positive at elevation {e}, azimuth {a}")
        torch.testing.assert_close(out[i, 1], uncond[0])
        assert weights[i].tolist() == pytest.approx(expected_w, abs=1e-5), (e, a)
        if negatives is not None:
            torch.testing.assert_close(out[i, 2], views[negatives[0]])
            torch.testing.assert_close(out[i, 3], views[negatives[1]])


def test_perp_neg_uses_the_configured_curves():
    emb, *_ = _random_embeddings(perp_neg_f_fs=(1.0, 0.0, 0.0), perp_neg_f_sf=(2.0, 0.0, 0.0))
    _, weights = emb.perp_neg_embeddings(torch.zeros(1), torch.tensor([10.0]))
    assert weights[0].tolist() == pytest.approx([-1.0, -2.0])


def test_forward_gives_the_cfg_pair_per_camera():
    emb, prompt, uncond, views = _random_embeddings()
    cams = make_cameras([0.0, 0.0, 0.0, 80.0], [10.0, 90.0, -170.0, 0.0], 1.5, 50.0, 8)
    batch = emb(cams)
    assert isinstance(batch, ConditionBatch) and batch.negatives == [] and batch.negative_weights is None
    torch.testing.assert_close(batch.cond.embeddings, views[torch.tensor([FRONT, SIDE, BACK, OVERHEAD])])
    torch.testing.assert_close(batch.uncond.embeddings, uncond.expand(4, -1, -1))
    assert batch.cond.cameras is cams and batch.uncond.cameras is cams
    cond_plain, _ = emb.text_embeddings(cams.elevation, cams.azimuth, view_dependent=False)
    torch.testing.assert_close(cond_plain, prompt.expand(4, -1, -1))
    flat, *_ = _random_embeddings(view_dependent_prompting=False)
    torch.testing.assert_close(flat(cams).cond.embeddings, prompt.expand(4, -1, -1))


@pytest.mark.parametrize("asked, configured", [(True, False), (False, True)])
def test_forward_with_perp_neg_gives_two_negatives(asked, configured):
    emb, *_ = _random_embeddings(use_perp_neg=configured)
    cams = make_cameras([0.0, 70.0], [30.0, 135.0], 1.5, 50.0, 8)
    batch = emb(cams, negatives=asked)
    expected, weights = emb.perp_neg_embeddings(cams.elevation, cams.azimuth)
    assert len(batch.passes()) == 4
    for k, part in enumerate(batch.passes()):
        torch.testing.assert_close(part.embeddings, expected[:, k])
        assert part.cameras is cams
    torch.testing.assert_close(batch.negative_weights, weights)


def test_condition_batch_cat_and_background():
    emb, *_ = _random_embeddings()
    cams = make_cameras(0.0, [0.0, 100.0], 1.5, 50.0, 8)
    background = torch.rand(2, 8, 8, 3)
    batch = emb(cams, negatives=True).with_background(background)
    stacked = Conditioning.cat(batch.passes())
    assert len(stacked) == 8
    torch.testing.assert_close(stacked.embeddings, torch.cat([p.embeddings for p in batch.passes()]))
    torch.testing.assert_close(stacked.background, background.repeat(4, 1, 1, 1))
    torch.testing.assert_close(stacked.cameras.azimuth, cams.azimuth.repeat(4))


def test_buffers_move_with_the_module_but_stay_out_of_checkpoints():
    emb, prompt, *_ = _random_embeddings()
    parent = nn.Module()
    parent.condition = emb
    assert parent.state_dict() == {}
    assert {n for n, _ in parent.named_buffers()} == {
        "condition.prompt",
        "condition.uncond",
        "condition.views",
    }
    parent.to(torch.float64)
    assert emb.prompt.dtype == torch.float64
    torch.testing.assert_close(emb.prompt, prompt.double())


@pytest.mark.usefixtures("unchecked_types")  # the last check passes mismatched shapes on purpose
def test_from_tensors_for_oracle_weight_vectors():
    w = torch.tensor([[[0.2, 0.8, 0.0]]])  # (1, 1, K) scene-mixture weights
    emb = PromptEmbeddings.from_tensors(w, view_dependent_prompting=False)
    cond, uncond = emb.text_embeddings(torch.zeros(3), torch.tensor([0.0, 90.0, 180.0]))
    torch.testing.assert_close(cond, w.expand(3, 1, 3))
    assert torch.equal(uncond, torch.zeros(3, 1, 3))
    # views default to the prompt for every direction, so view-dependent selection changes nothing.
    vd = PromptEmbeddings.from_tensors(w)
    torch.testing.assert_close(
        vd.text_embeddings(torch.tensor([0.0, 80.0]), torch.tensor([0.0, 180.0]))[0], w.expand(2, 1, 3)
    )
    with pytest.raises(ValueError, match="shapes disagree"):
        PromptEmbeddings.from_tensors(w, uncond=torch.zeros(1, 2, 3))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(front_threshold=100.0, back_threshold=100.0), "overlap"),
        (dict(perp_neg_f_sb=(1.0, 0.5)), "perp_neg_f_sb"),
    ],
)
@pytest.mark.usefixtures("unchecked_types")  # ill-typed input on purpose: our own error message
def test_bad_view_options_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ViewOptions(**kwargs)
