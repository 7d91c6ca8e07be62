"""The analytic oracle prior: its denoiser is the exact posterior mean for point-mass scene distributions."""

from __future__ import annotations

import torch

from distill.denoiser import DenoiserContext
from distill.oracle import OracleDenoiser, oracle_prompt_embeddings, oracle_scenes, posterior_mean_x0
from distill.schedule import TimestepScheduleConfig
from distill.sds import SDSConfig, SDSGuidance
from geometry.cameras import make_cameras
from geometry.render_output import RenderOutput
from geometry.scene import BUILTIN_SCENES, builtin_scene


def _setup(size=24):
    cams = make_cameras([20.0, 5.0], [30.0, -100.0], 2.4, 45.0, size)
    background = torch.tensor([[1.0, 1.0, 1.0], [0.2, 0.5, 0.9]])[:, None, None, :].expand(2, size, size, 3)
    return cams, background.contiguous()


def test_point_mass_oracle_predicts_the_exact_noise():
    cams, background = _setup()
    scene = builtin_scene("a snowman")
    oracle = OracleDenoiser([scene])
    truth = scene.render(cams, background=background).rgb.permute(0, 3, 1, 2) * 2 - 1
    eps = torch.randn(truth.shape, generator=torch.Generator().manual_seed(0))
    for t in (20, 500, 980):
        tt = torch.full((2,), t)
        x_t = oracle.schedule.add_noise(truth, eps, tt)
        pred = oracle.predict_eps(x_t, tt, torch.ones(2, 1, 1), DenoiserContext(cams, background))
        torch.testing.assert_close(pred, eps, atol=2e-3 if t == 20 else 2e-4, rtol=0)


def test_composite_over_background_equals_direct_render():
    cams, background = _setup()
    scenes = [builtin_scene(n) for n in BUILTIN_SCENES[:2]]
    oracle = OracleDenoiser(scenes)
    images = oracle.scene_images(cams.with_resolution(24, 24), background, torch.ones(2, 2))
    for k, scene in enumerate(scenes):
        direct = scene.render(cams, background=background).rgb.permute(0, 3, 1, 2) * 2 - 1
        torch.testing.assert_close(images[k], direct, atol=1e-5, rtol=0)


def test_mixture_posterior_matches_an_independent_computation():
    g = torch.Generator().manual_seed(1)
    candidates = torch.rand(3, 2, 3, 8, 8, generator=g) * 2 - 1  # K=3 scenes, B=2
    weights = torch.tensor([[0.2, 0.3, 0.5], [1.0, 1.0, 1.0]]) / torch.tensor([[1.0], [3.0]])
    alpha_bar = torch.tensor([0.3, 0.05])
    x_t = torch.randn(2, 3, 8, 8, generator=g)
    got = posterior_mean_x0(x_t, candidates, weights.log(), alpha_bar)
    for b in range(2):
        ab = alpha_bar[b].double()
        logp = torch.stack(
            [
                weights[b, k].double().log()
                - ((x_t[b].double() - ab.sqrt() * candidates[k, b].double()) ** 2).sum() / (2 * (1 - ab))
                for k in range(3)
            ]
        )
        post = torch.softmax(logp, 0)
        expected = sum(post[k] * candidates[k, b].double() for k in range(3))
        torch.testing.assert_close(got[b].double(), expected, atol=1e-5, rtol=0)


def test_uniform_mixture_recognises_the_scene_at_low_noise():
    cams, background = _setup()
    scenes, index = oracle_scenes(builtin_scene("a donut"))
    oracle = OracleDenoiser(scenes)
    emb = oracle_prompt_embeddings(len(scenes), index)
    assert torch.equal(
        emb.prompt[0, 0], torch.nn.functional.one_hot(torch.tensor(index), len(scenes)).float()
    )
    uncond = emb.uncond.expand(2, -1, -1)
    truth = scenes[index].render(cams, background=background).rgb.permute(0, 3, 1, 2) * 2 - 1
    eps = torch.randn(truth.shape, generator=torch.Generator().manual_seed(2))
    t = torch.full((2,), 100)
    x_t = oracle.schedule.add_noise(truth, eps, t)
    pred = oracle.predict_eps(x_t, t, uncond, DenoiserContext(cams, background))
    torch.testing.assert_close(pred, eps, atol=1e-3, rtol=0)  # the posterior collapses on the true scene


def test_sds_on_the_oracle_pulls_the_render_toward_the_scene():
    """s = 1, any t: the SDS gradient on the render is exactly proportional to (render − truth)."""
    cams, background = _setup()
    scene = builtin_scene("a snowman")
    scenes, index = oracle_scenes(scene)
    cfg = SDSConfig(guidance_scale=1.0, weighting="sds", timestep=TimestepScheduleConfig(per_sample=True))
    guidance = SDSGuidance(cfg, OracleDenoiser(scenes), generator=torch.Generator().manual_seed(3))
    rgb = torch.rand(2, 24, 24, 3, generator=torch.Generator().manual_seed(4)).requires_grad_(True)
    render = RenderOutput(
        rgb, torch.ones(2, 24, 24, 1), torch.zeros(2, 24, 24, 1), extras={"background": background}
    )
    out = guidance(render, cams, oracle_prompt_embeddings(len(scenes), index), step=0)
    out.loss.backward()
    truth = scene.render(cams, background=background).rgb
    for b in range(2):
        direction = (rgb[b] - truth[b]).detach().flatten()
        cos = torch.nn.functional.cosine_similarity(rgb.grad[b].flatten(), direction, dim=0)
        assert cos > 0.9999, cos


def test_negative_prompt_scene_becomes_the_unconditional():
    emb = oracle_prompt_embeddings(6, 1, negative_index=4)
    assert emb.uncond[0, 0].tolist() == [0, 0, 0, 0, 1, 0]
    assert emb.prompt[0, 0].tolist() == [0, 1, 0, 0, 0, 0]


def test_zero_prior_weight_means_zero_posterior_even_when_closer():
    """A one-hot (conditional) oracle must denoise toward its scene even if x_t is far closer to another."""
    cams, background = _setup()
    scenes = [builtin_scene("a snowman"), builtin_scene("a lollipop")]
    oracle = OracleDenoiser(scenes)
    other = scenes[1].render(cams, background=background).rgb.permute(0, 3, 1, 2) * 2 - 1
    target = scenes[0].render(cams, background=background).rgb.permute(0, 3, 1, 2) * 2 - 1
    t = torch.full((2,), 30)
    x_t = oracle.schedule.add_noise(other, torch.zeros_like(other), t)  # x_t sits right on the wrong scene
    eps = oracle.predict_eps(
        x_t, t, torch.tensor([[[1.0, 0.0]]]).expand(2, 1, 2), DenoiserContext(cams, background)
    )
    x0 = oracle.schedule.eps_to_x0(x_t, eps, t)
    torch.testing.assert_close(x0, target, atol=1e-3, rtol=0)
