"""The azimuth oracles (view-unaware 2D, multi-view) against their posteriors written out by brute force."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from distill.conditions.oracle import (
    OraclePrompt,
    OraclePromptConfig,
    ViewUnawareOraclePrompt,
    ViewUnawareOraclePromptConfig,
    side_masks,
)
from distill.denoisers.azimuth_oracle import AzimuthOracleConfig
from distill.denoisers.multiview_oracle import MultiViewOracle, MultiViewOracleConfig
from distill.denoisers.view_unaware_oracle import ViewUnawareOracle
from geometry.cameras import make_cameras

STEP = 30.0  # a 12-side grid keeps the brute force small
# A ball with a red block in front (+x) and a blue one on its left (+y): every side looks different, even at 16².
MARKER = """name: a marker
primitives:
  - {type: sphere, center: [0.0, 0.0, 0.0], radius: 0.4, color: [0.9, 0.9, 0.9]}
  - {type: box, center: [0.4, 0.0, 0.0], size: [0.3, 0.3, 0.3], color: [0.9, 0.1, 0.1]}
  - {type: box, center: [0.0, 0.4, 0.1], size: [0.2, 0.2, 0.4], color: [0.1, 0.2, 0.9]}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("scenes") / "marker.yaml"
    path.write_text(MARKER)
    return SimpleNamespace(scene=str(path), prompt="", negative_prompt="")


def library(run):
    return [run.scene, "a snowman"]


def cameras(azimuths, elevation=15.0, size=16):
    return make_cameras(elevation, torch.tensor(azimuths, dtype=torch.float32), 2.4, 45.0, size)


def brute_force_x0(x_t, alpha_bar, candidates, prior, views):
    """E[x0 | x_t] written out: candidates (N, B, 3, H, W), prior (B, N); views share their candidate."""
    out = torch.zeros_like(x_t)
    for o in range(x_t.shape[0] // views):
        idx = slice(o * views, (o + 1) * views)
        log_post = prior[o * views].log().clone()
        for n in range(candidates.shape[0]):
            diff = x_t[idx] - alpha_bar.sqrt() * candidates[n, idx]
            log_post[n] = log_post[n] - diff.pow(2).sum() / (2 * (1 - alpha_bar))
        post = torch.softmax(log_post, 0)
        out[idx] = (post[:, None, None, None, None] * candidates[:, idx]).sum(0)
    return out


def turned_renders(scene, azimuths, elevation=15.0, size=16):
    """(B, 3, H, W) in [-1, 1] of `scene` from these absolute azimuths (white background)."""
    cams = cameras(azimuths, elevation, size)
    return scene.render(cams, background=torch.ones(len(cams), 3)).rgb.permute(0, 3, 1, 2) * 2 - 1


def test_multiview_oracle_is_the_joint_posterior_over_the_shared_azimuth(run):
    oracle = MultiViewOracle.from_config(MultiViewOracleConfig(library=library(run), azimuth_step=STEP), run)
    prompt = OraclePrompt.from_config(OraclePromptConfig(), run, oracle)
    cams = cameras([0.0, 90.0, 180.0, -90.0])
    cond = prompt(cams).cond
    t = torch.full((4,), 600)
    alpha_bar = oracle.schedule.alpha_bar(t, torch.zeros(1)).reshape(-1)[0]
    x_t = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    # Candidates by hand: scene k turned by phi_g (camera azimuth + phi_g) for every view.
    rows, prior = [], []
    for k, scene in enumerate(oracle.scenes):
        for phi in oracle.azimuth_grid.tolist():
            rows.append(turned_renders(scene, [a + phi for a in (0.0, 90.0, 180.0, -90.0)]))
            prior.append(float(cond.embeddings[0, 0, k]) / oracle.num_sides)
    expected = brute_force_x0(x_t, alpha_bar, torch.stack(rows), torch.tensor([prior] * 4), views=4)
    eps = oracle.predict_eps(x_t, t, cond)
    got = oracle.schedule.eps_to_x0(x_t, eps, t)
    assert torch.allclose(got, expected, atol=1e-4)


def test_multiview_views_agree_where_single_views_do_not(run):
    """Noisy views of the scene from DIFFERENT global turns: the multi-view oracle brings all four to one turn;
    the view-unaware oracle keeps each view's own side."""
    mv = MultiViewOracle.from_config(MultiViewOracleConfig(library=library(run), azimuth_step=STEP), run)
    vu = ViewUnawareOracle.from_config(AzimuthOracleConfig(library=library(run), azimuth_step=STEP), run)
    marker = mv.scenes[0]
    cam_az = [0.0, 90.0, 180.0, -90.0]
    seen = [0.0, 90.0, 0.0, -90.0]  # the back camera sees the front again: a two-faced object
    x0 = turned_renders(marker, seen)
    t = torch.full((4,), 100)
    x_t = mv.schedule.add_noise(x0, 0.05 * torch.randn_like(x0), t)
    mv_x0 = mv.schedule.eps_to_x0(
        x_t,
        mv.predict_eps(x_t, t, OraclePrompt.from_config(OraclePromptConfig(), run, mv)(cameras(cam_az)).cond),
        t,
    )
    vu_prompt = ViewUnawareOraclePrompt.from_config(ViewUnawareOraclePromptConfig(), run, vu)
    vu_x0 = vu.schedule.eps_to_x0(x_t, vu.predict_eps(x_t, t, vu_prompt(cameras(cam_az)).cond), t)
    assert torch.allclose(vu_x0, x0, atol=1e-3)  # each view keeps the side it resembles: Janus is allowed
    consistent = [turned_renders(marker, [a + phi for a in cam_az]) for phi in mv.azimuth_grid.tolist()]
    errors = torch.stack([(mv_x0 - c).abs().max() for c in consistent])
    assert float(errors.min()) < 1e-3  # the multi-view answer is ONE turn of the scene for all four views
    assert float((mv_x0 - x0).abs().max()) > 0.5  # ... so it cannot be the two-faced input


def test_view_prompts_restrict_the_side_seen(run):
    vu = ViewUnawareOracle.from_config(AzimuthOracleConfig(library=library(run), azimuth_step=STEP), run)
    prompt = ViewUnawareOraclePrompt.from_config(
        ViewUnawareOraclePromptConfig(view_dependent_prompting=True), run, vu
    )
    masks = side_masks(vu.azimuth_grid, 45.0, 45.0)
    assert masks[:3].sum(0).eq(1).all()  # front, side, back partition the sides
    cams = cameras([170.0])  # a back view: its prompt allows only |a| > 135
    cond = prompt(cams).cond
    t = torch.full((1,), 999)  # at t = T−1 the posterior is (almost) the prior: the mean over allowed sides
    x_t = torch.zeros(1, 3, 16, 16)
    x0 = vu.schedule.eps_to_x0(x_t, vu.predict_eps(x_t, t, cond), t)
    marker = vu.scenes[0]
    back_sides = vu.azimuth_grid[masks[2].bool()].tolist()
    expected = turned_renders(marker, back_sides).mean(0, keepdim=True)
    everything = turned_renders(marker, vu.azimuth_grid.tolist()).mean(0, keepdim=True)
    assert (x0 - expected).abs().mean() < 0.2 * (x0 - everything).abs().mean()


def test_cache_serves_repeated_poses_with_identical_results(run):
    vu = ViewUnawareOracle.from_config(AzimuthOracleConfig(library=library(run), azimuth_step=STEP), run)
    cond = ViewUnawareOraclePrompt.from_config(ViewUnawareOraclePromptConfig(), run, vu)(cameras([30.0])).cond
    x_t, t = torch.randn(1, 3, 16, 16), torch.full((1,), 300)
    first = vu.predict_eps(x_t, t, cond)
    misses = vu.cache.misses
    second = vu.predict_eps(x_t, t, cond)
    assert vu.cache.misses == misses and vu.cache.hits >= vu.num_sides
    assert torch.equal(first, second)


def test_bad_inputs_are_named(run):
    with pytest.raises(ValueError, match="divide 360"):
        AzimuthOracleConfig(azimuth_step=7.0)
    mv = MultiViewOracle.from_config(MultiViewOracleConfig(library=library(run), azimuth_step=STEP), run)
    cond = OraclePrompt.from_config(OraclePromptConfig(), run, mv)(cameras([0.0, 90.0, 180.0])).cond
    with pytest.raises(ValueError, match="4-view objects"):
        mv.predict_eps(torch.zeros(3, 3, 16, 16), torch.full((3,), 10), cond)
    cond4 = OraclePrompt.from_config(OraclePromptConfig(), run, mv)(cameras([0.0, 90.0, 180.0, 0.0])).cond
    with pytest.raises(ValueError, match="share one timestep"):
        mv.predict_eps(torch.zeros(4, 3, 16, 16), torch.tensor([10, 10, 10, 20]), cond4)
    with pytest.raises(ValueError, match="ViewUnawareOraclePrompt"):
        vu = ViewUnawareOracle.from_config(AzimuthOracleConfig(library=library(run), azimuth_step=STEP), run)
        vu.predict_eps(
            torch.zeros(1, 3, 16, 16),
            torch.full((1,), 10),
            OraclePrompt.from_config(OraclePromptConfig(), run, vu)(cameras([0.0])).cond,
        )
