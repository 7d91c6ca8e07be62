"""The analytic oracle prior: its denoiser is the exact posterior mean for point-mass scene distributions."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from distill.conditions.base import Conditioning
from distill.conditions.oracle import OraclePrompt, OraclePromptConfig
from distill.denoisers.oracle import OracleConfig, OracleDenoiser, posterior_mean_x0
from distill.guidance.sds import SDSConfig, SDSGuidance
from distill.timesteps import TimestepScheduleConfig
from geometry.analytic import BUILTIN_SCENES, builtin_scene
from geometry.cameras import make_cameras
from geometry.render_output import RenderOutput
from systems.config import RunInfo


def _setup(size=24):
    cams = make_cameras([20.0, 5.0], [30.0, -100.0], 2.4, 45.0, size)
    background = torch.tensor([[1.0, 1.0, 1.0], [0.2, 0.5, 0.9]])[:, None, None, :].expand(2, size, size, 3)
    return cams, background.contiguous()


def _image(scene, cams, background):
    return scene.render(cams, background=background).rgb.permute(0, 3, 1, 2) * 2 - 1


def test_point_mass_oracle_predicts_the_exact_noise():
    cams, background = _setup()
    scene = builtin_scene("a snowman")
    oracle = OracleDenoiser([scene])
    truth = _image(scene, cams, background)
    eps = torch.randn(truth.shape, generator=torch.Generator().manual_seed(0))
    for t in (20, 500, 980):
        tt = torch.full((2,), t)
        x_t = oracle.schedule.add_noise(truth, eps, tt)
        pred = oracle.predict_eps(x_t, tt, Conditioning(torch.ones(2, 1, 1), cams, background))
        torch.testing.assert_close(pred, eps, atol=2e-3 if t == 20 else 2e-4, rtol=0)


def test_composite_over_background_equals_direct_render():
    cams, background = _setup()
    scenes = [builtin_scene(n) for n in BUILTIN_SCENES[:2]]
    oracle = OracleDenoiser(scenes)
    images = oracle.scene_images(cams.with_resolution(24, 24), background, torch.ones(2, 2))
    for k, scene in enumerate(scenes):
        torch.testing.assert_close(images[k], _image(scene, cams, background), atol=1e-5, rtol=0)


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
    run = RunInfo(prompt="a donut")
    oracle = OracleDenoiser.from_config(OracleConfig(), run)
    assert [s.name for s in oracle.scenes] == list(BUILTIN_SCENES)
    index = oracle.scene_index(builtin_scene("a donut"))
    emb = OraclePrompt.from_config(OraclePromptConfig(), run, oracle)
    assert torch.equal(
        emb.prompt[0, 0], torch.nn.functional.one_hot(torch.tensor(index), len(BUILTIN_SCENES)).float()
    )
    batch = emb(cams)
    truth = _image(oracle.scenes[index], cams, background)
    eps = torch.randn(truth.shape, generator=torch.Generator().manual_seed(2))
    t = torch.full((2,), 100)
    x_t = oracle.schedule.add_noise(truth, eps, t)
    pred = oracle.predict_eps(x_t, t, batch.uncond.with_background(background))  # uniform over the library
    torch.testing.assert_close(pred, eps, atol=1e-3, rtol=0)  # the posterior collapses on the true scene


def _snowman_sds(guidance_scale=1.0, seed=3, size=24, library=None):
    cams, background = _setup(size)
    run = SimpleNamespace(prompt="a snowman", negative_prompt="", scene=None)  # any object with these three
    oracle = OracleDenoiser.from_config(OracleConfig(library=library), run)
    condition = OraclePrompt.from_config(OraclePromptConfig(), run, oracle)
    cfg = SDSConfig(
        guidance_scale=guidance_scale, weighting="sds", timestep=TimestepScheduleConfig(per_sample=True)
    )
    guidance = SDSGuidance(cfg, oracle, generator=torch.Generator().manual_seed(seed))
    truth = OracleDenoiser.ground_truth(OracleConfig(), run).render(cams, background=background).rgb
    return guidance, condition, cams, background, truth


def _render(rgb, background):
    b, h, w, _ = rgb.shape
    return RenderOutput(
        rgb, torch.ones(b, h, w, 1), torch.zeros(b, h, w, 1), extras={"background": background}
    )


def test_sds_on_the_oracle_pulls_the_render_toward_the_scene():
    """s = 1, any t: the SDS gradient on the render is exactly proportional to (render − truth)."""
    guidance, condition, cams, background, truth = _snowman_sds()
    assert guidance.denoiser.num_scenes == len(BUILTIN_SCENES)
    rgb = torch.rand(2, 24, 24, 3, generator=torch.Generator().manual_seed(4)).requires_grad_(True)
    out = guidance(_render(rgb, background), cams, condition, step=0)
    out.losses["guidance"].backward()
    for b in range(2):
        direction = (rgb[b] - truth[b]).detach().flatten()
        cos = torch.nn.functional.cosine_similarity(rgb.grad[b].flatten(), direction, dim=0)
        assert cos > 0.9999, cos


def test_sds_descent_on_the_oracle_converges_to_the_scene():
    """Gradient descent on a free image under oracle SDS with CFG 7.5 over a two-scene library (the
    unconditional pass mixes in the lollipop) reaches the snowman's render."""
    guidance, condition, cams, background, truth = _snowman_sds(
        7.5, seed=5, size=16, library=["a snowman", "a lollipop"]
    )
    rgb = torch.full((2, 16, 16, 3), 0.5).requires_grad_(True)
    opt = torch.optim.Adam([rgb], lr=0.05)
    start = (rgb - truth).abs().mean().item()
    for step in range(80):
        opt.zero_grad()
        guidance(_render(rgb, background), cams, condition, step=step).losses["guidance"].backward()
        opt.step()
        with torch.no_grad():
            rgb.clamp_(0, 1)
    end = (rgb - truth).abs().mean().item()
    assert end < 0.1 * start, (start, end)
    lollipop = builtin_scene("a lollipop").render(cams, background=background).rgb
    assert end < 0.2 * (rgb - lollipop).abs().mean().item()  # the prompt's scene, not the other one


def test_negative_prompt_scene_becomes_the_unconditional():
    run = RunInfo(prompt="a mushroom", negative_prompt="a rocket")
    oracle = OracleDenoiser.from_config(OracleConfig(), run)
    emb = OraclePrompt.from_config(OraclePromptConfig(), run, oracle)
    names = [s.name for s in oracle.scenes]
    assert emb.prompt[0, 0].tolist() == [float(n == "a mushroom") for n in names]
    assert emb.uncond[0, 0].tolist() == [float(n == "a rocket") for n in names]


def test_zero_prior_weight_means_zero_posterior_even_when_closer():
    """A one-hot (conditional) oracle must denoise toward its scene even if x_t is far closer to another."""
    cams, background = _setup()
    scenes = [builtin_scene("a snowman"), builtin_scene("a lollipop")]
    oracle = OracleDenoiser(scenes)
    other, target = _image(scenes[1], cams, background), _image(scenes[0], cams, background)
    t = torch.full((2,), 30)
    x_t = oracle.schedule.add_noise(other, torch.zeros_like(other), t)  # x_t sits right on the wrong scene
    eps = oracle.predict_eps(
        x_t, t, Conditioning(torch.tensor([[[1.0, 0.0]]]).expand(2, 1, 2), cams, background)
    )
    x0 = oracle.schedule.eps_to_x0(x_t, eps, t)
    torch.testing.assert_close(x0, target, atol=1e-3, rtol=0)


def test_without_a_background_the_oracle_assumes_white():
    cams, background = _setup()
    white = torch.ones_like(background)
    scene = builtin_scene("a table")
    oracle = OracleDenoiser([scene])
    truth = _image(scene, cams, white)
    t, eps = torch.full((2,), 400), torch.randn(truth.shape, generator=torch.Generator().manual_seed(6))
    x_t = oracle.schedule.add_noise(truth, eps, t)
    torch.testing.assert_close(
        oracle.predict_eps(x_t, t, Conditioning(torch.ones(2, 1, 1), cams)), eps, atol=2e-4, rtol=0
    )


def test_library_config_and_the_run_scene(tmp_path):
    # A library of names; the run's scene joins it when missing.
    oracle = OracleDenoiser.from_config(
        OracleConfig(library=["a table", "a donut"]), RunInfo(prompt="a rocket")
    )
    assert [s.name for s in oracle.scenes] == ["a table", "a donut", "a rocket"]
    # scene= wins over the prompt, and may be a YAML file.
    path = tmp_path / "ball.yaml"
    path.write_text(
        "name: a ball\nprimitives:\n  - {type: sphere, center: [0, 0, 0], radius: 0.3, color: [1, 0, 0]}\n"
    )
    run = RunInfo(prompt="a red ball", scene=str(path))
    assert OracleDenoiser.ground_truth(OracleConfig(), run).name == "a ball"
    oracle = OracleDenoiser.from_config(OracleConfig(), run)
    assert oracle.scenes[-1].name == "a ball" and oracle.num_scenes == len(BUILTIN_SCENES) + 1
    assert oracle.scene_index(oracle.scenes[-1]) == len(BUILTIN_SCENES)
    with pytest.raises(ValueError, match="not in the oracle's library"):
        OracleDenoiser([builtin_scene("a table")]).scene_index(builtin_scene("a donut"))


def test_bad_inputs_are_clear_errors():
    cams, background = _setup()
    oracle = OracleDenoiser([builtin_scene("a snowman"), builtin_scene("a donut")])
    x_t, t = torch.zeros(2, 3, 24, 24), torch.full((2,), 10)
    with pytest.raises(ValueError, match="cameras"):
        oracle.predict_eps(x_t, t, Conditioning(torch.ones(2, 1, 2)))
    with pytest.raises(ValueError, match="3 weights for 2 scenes"):
        oracle.predict_eps(x_t, t, Conditioning(torch.ones(2, 1, 3), cams, background))
    with pytest.raises(ValueError, match="at least one scene"):
        OracleDenoiser([])


def test_oracle_is_a_pixel_denoiser_without_resizing():
    oracle = OracleDenoiser([builtin_scene("a snowman")])
    assert oracle.space == "pixel" and oracle.image_size is None and oracle.latent_size is None
    images = torch.rand(1, 3, 5, 7)
    torch.testing.assert_close(oracle.decode(oracle.encode(images)), images)
    assert oracle.state_dict() == {}  # nothing to checkpoint (the scenes are data, the anchor non-persistent)
