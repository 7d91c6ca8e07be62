"""MVDream: the camera vector, the camera embedding inside diffusers' UNet, joint denoising of the views, and
loading the tiny random model from the port folder, the original .pt and the converted folder (same weights,
same eps). The full-size original key list is converted on the meta device."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0

from distill.conditions.base import Conditioning
from distill.denoisers.mv_attention import set_num_views
from distill.denoisers.mvdream import MVDreamConfig, MVDreamDenoiser, mvdream_camera
from distill.denoisers.mvdream_convert import (
    MVDREAM_SD21_PARAMS,
    MVDREAM_UNET_CONFIG,
    CheckpointMismatchError,
    convert_mvdream_unet,
    main,
    unet_config_from_mvdream,
)
from distill.models import ModelLoadConfig, WeightsNotFoundError, load_components
from distill3d.errors import ConfigError, UserError
from geometry.cameras import make_cameras
from tests.fixtures.tiny_models import TEXT_DIM
from tests.fixtures.tiny_mvdream import TINY_MVDREAM_PARAMS, ldm_unet_shapes


def _load(path, **kwargs) -> MVDreamDenoiser:
    return MVDreamDenoiser.from_config(
        MVDreamConfig(pretrained_model_name_or_path=str(path), device="cpu", **kwargs)
    )


@pytest.fixture(scope="module")
def port(tiny_mvdream_path):
    return _load(tiny_mvdream_path)


def _inputs(objects: int = 1, views: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n = objects * views
    cams = make_cameras(15.0, torch.arange(n) * 90.0, 2.5, 40.0, 64)
    x = torch.randn(n, 4, 8, 8, generator=g)
    t = torch.full((n,), 500)
    return x, t, Conditioning(torch.randn(n, 7, TEXT_DIM, generator=g), cams)


def _mvdream_blender_c2w(elevation: float, azimuth: float) -> torch.Tensor:
    """MVDream's own sampler camera (bytedance/MVDream camera_utils.get_camera, blender_coord=True), by hand:
    a y-up look-at at the origin, columns (right, up, -forward), then the y/z flip to a z-up world."""
    e, a = math.radians(elevation), math.radians(azimuth)
    pos = torch.tensor(
        [math.cos(e) * math.sin(a), math.sin(e), math.cos(e) * math.cos(a)], dtype=torch.float64
    )
    forward = -pos / pos.norm()
    right = torch.linalg.cross(forward, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    right = right / right.norm()
    up = torch.linalg.cross(right, forward)
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, :3] = torch.stack([right, up, -forward], dim=1)
    c2w[:3, 3] = pos
    flip = torch.tensor([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=torch.float64)
    return (flip @ c2w).float()


def test_camera_vector_is_the_unit_translation_c2w_flattened_row_major():
    cams = make_cameras([10.0, 30.0], [0.0, 120.0], [2.0, 3.5], 40.0, 64)
    vec = mvdream_camera(cams.c2w)
    expected = cams.c2w.clone()
    expected[:, :3, 3] /= torch.tensor([2.0, 3.5])[:, None]
    torch.testing.assert_close(vec, expected.reshape(2, 16), rtol=1e-5, atol=1e-6)
    # Our (threestudio's) c2w is what MVDream was trained on: its sampler's camera at azimuth a is ours at a − 90°.
    for elevation, azimuth in ((15.0, 0.0), (0.0, 90.0), (30.0, 200.0)):
        ours = mvdream_camera(make_cameras(elevation, azimuth - 90.0, 1.7, 40.0, 64).c2w)[0]
        torch.testing.assert_close(
            ours, _mvdream_blender_c2w(elevation, azimuth).reshape(16), atol=1e-5, rtol=0
        )


def _tiny_unet(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel.from_config(unet_config_from_mvdream(TINY_MVDREAM_PARAMS)).eval()


def test_camera_embedding_is_added_to_the_time_embedding():
    unet = _tiny_unet()
    x, t, cond = _inputs()
    camera = mvdream_camera(cond.cameras.c2w)
    seen = {}
    resnet = unet.down_blocks[0].resnets[0]

    def record(module, args, out):  # returns None: the output is left alone
        seen.setdefault("in", args[0])

    hook = resnet.time_emb_proj.register_forward_hook(record)
    with torch.no_grad():
        out = unet(x, t, cond.embeddings, class_labels=camera).sample
        hook.remove()
        # MVDream (openaimodel forward): emb = time_embed(t_emb) + camera_embed(camera), camera NOT sinusoidal.
        time_emb = unet.time_embedding(unet.time_proj(t))
        linear_1, linear_2 = unet.class_embedding.linear_1, unet.class_embedding.linear_2
        camera_emb = linear_2(F.silu(linear_1(camera)))
        torch.testing.assert_close(seen["in"], F.silu(time_emb + camera_emb), rtol=1e-5, atol=1e-6)
        moved = unet(x, t, cond.embeddings, class_labels=camera.roll(1, dims=0)).sample
        assert (moved - out).abs().max() > 1e-4  # another camera, another prediction
        # A zero camera MLP output is exactly the UNet without any class embedding.
        torch.nn.init.zeros_(linear_2.weight), torch.nn.init.zeros_(linear_2.bias)
        config = {k: v for k, v in unet_config_from_mvdream(TINY_MVDREAM_PARAMS).items() if "class" not in k}
        plain = UNet2DConditionModel.from_config(config).eval()
        plain.load_state_dict({k: v for k, v in unet.state_dict().items() if "class_embedding" not in k})
        torch.testing.assert_close(
            unet(x, t, cond.embeddings, class_labels=camera).sample, plain(x, t, cond.embeddings).sample
        )


def test_views_are_denoised_jointly_and_one_view_is_the_plain_unet(port):
    x, t, cond = _inputs(objects=2)
    camera = mvdream_camera(cond.cameras.c2w)
    with torch.no_grad():
        joint = port.predict_eps(x, t, cond)
        set_num_views(port.unet, 1)
        port.num_views = 1
        try:
            single = port.predict_eps(x, t, cond)
            processors = {name: AttnProcessor2_0() for name in port.unet.attn_processors}
            reference = _tiny_unet()
            reference.load_state_dict(port.unet.state_dict())
            reference.set_attn_processor(processors)
            plain = reference(x, t, cond.embeddings, class_labels=camera).sample
        finally:
            set_num_views(port.unet, 4)
            port.num_views = 4
        other = x.clone()
        other[1:4] = torch.randn_like(other[1:4])  # object 0's other views only
        moved = port.predict_eps(other, t, cond)
    torch.testing.assert_close(single, plain, rtol=1e-5, atol=1e-5)  # eps-prediction: eps is the output
    assert (joint - single).abs().max() > 1e-4  # four views attend to each other
    assert (moved[0] - joint[0]).abs().max() > 1e-4  # view 0 sees its siblings
    torch.testing.assert_close(moved[4:], joint[4:])  # ... and nothing of the other object
    torch.testing.assert_close(
        port.predict_eps(x, t, Conditioning(cond.embeddings, extras={"camera": camera})), joint
    )


def test_port_and_original_checkpoint_load_the_same_model(port, tiny_mvdream_ckpt, tiny_mvdream_path):
    assert port.num_views == 4 and port.image_size == 64 and port.latent_size == 8
    assert port.load_config.pretrained_model_name_or_path == str(tiny_mvdream_path)
    original = _load(tiny_mvdream_ckpt, single_file_config=str(tiny_mvdream_path))
    x, t, cond = _inputs()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(original.predict_eps(x, t, cond), port.predict_eps(x, t, cond))
        torch.testing.assert_close(original.encode(images), port.encode(images))
    assert original.schedule.alphas_cumprod.shape == (1000,)
    torch.testing.assert_close(original.schedule.alphas_cumprod, port.schedule.alphas_cumprod)
    # The text prompt follows load_config; for both layouts that is a folder with tokenizer/ and text_encoder/.
    for denoiser in (port, original):
        text = load_components(
            ModelLoadConfig(denoiser.load_config.pretrained_model_name_or_path, device="cpu"),
            ("tokenizer", "text_encoder"),
        )
        assert text.text_encoder.config.hidden_size == TEXT_DIM


def test_convert_command_writes_a_plain_diffusers_folder_that_matches(
    port, tiny_mvdream_ckpt, tiny_mvdream_path, tmp_path
):
    out = tmp_path / "converted"
    assert (
        main(
            [
                str(tiny_mvdream_ckpt),
                str(out),
                "--config",
                str(tiny_mvdream_path),
                "--text-encoder",
                str(tiny_mvdream_path),
            ]
        )
        == 0
    )
    assert UNet2DConditionModel.load_config(out / "unet")["class_embed_type"] == "projection"
    converted = _load(out)
    x, t, cond = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(converted.predict_eps(x, t, cond), port.predict_eps(x, t, cond))
    assert (out / "tokenizer").is_dir() and (out / "text_encoder").is_dir()
    # The port folder converts too (text parts copied from it).
    assert main([str(tiny_mvdream_path), str(tmp_path / "from-port")]) == 0
    with torch.no_grad():
        torch.testing.assert_close(
            _load(tmp_path / "from-port").predict_eps(x, t, cond), port.predict_eps(x, t, cond)
        )


def test_convert_errors_are_one_line_and_leave_nothing(tiny_mvdream_path, tmp_path, capsys):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    for src in (broken, tmp_path / "absent.pt"):
        out = tmp_path / "out"
        assert main([str(src), str(out), "--config", str(tiny_mvdream_path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and "Fix:" in err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.pt"]  # no out dir, no temp dir


def test_wrong_architecture_or_model_is_a_clear_error(tiny_mvdream_ckpt, tiny_sd_path):
    with pytest.raises(CheckpointMismatchError, match="does not match the MVDream architecture.*wrong shape"):
        _load(tiny_mvdream_ckpt)  # tiny weights, but no single_file_config: the published architecture
    with pytest.raises(ConfigError, match="not MVDream"):
        _load(tiny_sd_path)
    with pytest.raises(WeightsNotFoundError, match="no such local file"):
        _load("/nonexistent/mvdream.pt")
    with pytest.raises(ConfigError, match="at least 1"):
        MVDreamConfig(num_views=0)


def test_batches_must_be_whole_objects(port):
    x, t, cond = _inputs(views=3)
    with pytest.raises(ConfigError, match="multiple of 4"):
        port.predict_eps(x, t, cond)
    with pytest.raises(UserError, match="needs each view's camera"):
        port.predict_eps(*_inputs()[:2], Conditioning(torch.zeros(4, 7, TEXT_DIM)))


def test_full_size_original_key_list_converts_exactly():
    """sd-v2.1-base-4view's UNet keys (from the architecture, on meta) ↔ diffusers' UNet, every key and shape."""
    assert MVDREAM_UNET_CONFIG["attention_head_dim"] == [5, 10, 20, 20]  # 64-channel heads
    assert MVDREAM_UNET_CONFIG["block_out_channels"] == [320, 640, 1280, 1280]
    assert MVDREAM_UNET_CONFIG["sample_size"] == 32 and MVDREAM_UNET_CONFIG["cross_attention_dim"] == 1024
    shapes = ldm_unet_shapes(MVDREAM_SD21_PARAMS)
    state = {f"model.diffusion_model.{k}": torch.empty(s, device="meta") for k, s in shapes.items()}
    state["first_stage_model.encoder.conv_in.weight"] = torch.empty(
        128, 3, 3, 3, device="meta"
    )  # not the UNet's
    converted = convert_mvdream_unet(state, MVDREAM_UNET_CONFIG)  # strict: raises on any mismatch
    with torch.device("meta"):
        expected = UNet2DConditionModel.from_config(MVDREAM_UNET_CONFIG).state_dict()
    assert {k: tuple(v.shape) for k, v in converted.items()} == {
        k: tuple(v.shape) for k, v in expected.items()
    }
    assert len(converted) == len(shapes)  # one-to-one
    assert (
        converted["class_embedding.linear_1.weight"] is state["model.diffusion_model.camera_embed.0.weight"]
    )
    # A key the architecture does not have is reported, not dropped.
    state["model.diffusion_model.extra.weight"] = torch.empty(3, device="meta")
    with pytest.raises(CheckpointMismatchError, match="unexpected 1 .*extra.weight"):
        convert_mvdream_unet(state, MVDREAM_UNET_CONFIG)
