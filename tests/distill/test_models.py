"""distill.models: loading tiny SD / IF folders, dtypes, freezing, and the one-line missing-weights errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from distill.models import (
    ModelLoadConfig,
    WeightsNotFoundError,
    freeze,
    frozen_module_names,
    frozen_state_dict_keys,
    load_components,
)
from distill3d.errors import UserError
from tests.distill.custom_unet import TaggedUNet
from tests.fixtures.tiny_models import build_tiny_sd

MISSING_HUB_ID = "distill3d-tests/no-such-model-anywhere"


def _all_frozen(module: nn.Module) -> bool:
    return not module.training and all(not p.requires_grad for p in module.parameters())


def test_tiny_sd_loads_frozen_with_saved_weights(tiny_sd_path):
    parts = load_components(ModelLoadConfig(str(tiny_sd_path), device="cpu"))
    for m in (parts.unet, parts.vae, parts.text_encoder):
        assert _all_frozen(m)
        assert all(p.dtype == torch.float32 for p in m.parameters())
    assert type(parts.text_encoder).__name__ == "CLIPTextModel"
    assert type(parts.scheduler).__name__ == "DDPMScheduler"
    assert parts.scheduler.config.beta_schedule == "scaled_linear"
    # The loaded UNet holds exactly the tensors in the saved safetensors file.
    saved = load_file(tiny_sd_path / "unet" / "diffusion_pytorch_model.safetensors")
    loaded = parts.unet.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    # 8x VAE downsampling like SD: 64² image -> 4×8² latents.
    latents = parts.vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean
    assert latents.shape == (1, 4, 8, 8)


def test_tiny_if_loads_t5_and_pixel_unet(tiny_if_path):
    parts = load_components(
        ModelLoadConfig(str(tiny_if_path), device="cpu"), ("unet", "text_encoder", "tokenizer", "scheduler")
    )
    assert type(parts.text_encoder).__name__ == "T5EncoderModel"
    assert _all_frozen(parts.text_encoder) and _all_frozen(parts.unet)
    assert (parts.unet.config.in_channels, parts.unet.config.out_channels) == (3, 6)
    assert parts.scheduler.config.variance_type == "learned_range"
    with pytest.raises(ValueError, match="vae"):
        load_components(ModelLoadConfig(str(tiny_if_path)), ("vae",))


@pytest.mark.parametrize("name, dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_dtype_honored(tiny_sd_path, name, dtype):
    parts = load_components(
        ModelLoadConfig(str(tiny_sd_path), torch_dtype=name, device="cpu"), ("unet", "vae")
    )
    for m in (parts.unet, parts.vae):
        assert all(p.dtype == dtype for p in m.parameters())
    saved = load_file(tiny_sd_path / "unet" / "diffusion_pytorch_model.safetensors")
    loaded = parts.unet.state_dict()
    assert all(torch.equal(saved[k].to(dtype), loaded[k]) for k in saved)


def test_fixture_builds_are_deterministic(tmp_path):
    a, b = build_tiny_sd(tmp_path / "a"), build_tiny_sd(tmp_path / "b")
    for sub in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        sa, sb = load_file(a / sub), load_file(b / sub)
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_missing_local_path_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "sd"
    with pytest.raises(WeightsNotFoundError) as err:
        load_components(ModelLoadConfig(str(missing)))
    assert str(missing) in str(err.value)
    assert "\n" not in str(err.value)
    # The command tells bad input from bugs by this base class.
    assert isinstance(err.value, UserError) and isinstance(err.value, RuntimeError)


def test_missing_subfolder_is_named(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(WeightsNotFoundError, match="no 'unet/' subfolder"):
        load_components(ModelLoadConfig(str(tmp_path / "half")), ("unet",))


def test_uncached_hub_id_offline_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = ModelLoadConfig(MISSING_HUB_ID)  # local_files_only None -> follows HF_HUB_OFFLINE
    assert cfg.offline
    with pytest.raises(WeightsNotFoundError) as err:
        load_components(cfg, ("unet",))
    msg = str(err.value)
    assert MISSING_HUB_ID in msg and "offline" in msg
    assert "hf download" in msg and "HF_HUB_OFFLINE" in msg and "local" in msg
    assert "\n" not in msg
    # No hub exception chained: the user sees our line, not a huggingface_hub traceback.
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_single_file_offline_needs_config(tmp_path):
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"")
    with pytest.raises(WeightsNotFoundError, match="single_file_config"):
        load_components(ModelLoadConfig(str(ckpt), local_files_only=True))


def test_subprocess_user_sees_one_line(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        from distill.models import ModelLoadConfig, WeightsNotFoundError, load_components
        try:
            load_components(ModelLoadConfig("{MISSING_HUB_ID}"), ("unet",))
        except WeightsNotFoundError as exc:
            sys.exit(f"error: {{exc}}")
        """
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Could not load") and MISSING_HUB_ID in last and "offline" in last


def test_frozen_state_dict_keys_keep_trainable_adapters(tiny_sd_path):
    parts = load_components(ModelLoadConfig(str(tiny_sd_path), device="cpu"), ("unet",))
    system = nn.Module()
    system.guidance = nn.Module()
    system.guidance.unet = parts.unet
    system.head = nn.Linear(2, 2)
    # A LoRA-like parameter made trainable inside the frozen UNet must still be checkpointed.
    adapter_name, adapter = next(iter(parts.unet.named_parameters()))
    adapter.requires_grad_(True)
    assert frozen_module_names(system) == ["guidance.unet"]
    frozen = frozen_state_dict_keys(system)
    expected = {"guidance.unet." + k for k in parts.unet.state_dict()} - {"guidance.unet." + adapter_name}
    assert frozen == expected


def test_gated_repo_online_says_login(tiny_sd_path, monkeypatch):
    """A 401 from the hub while loading a component becomes one line telling the user to log in."""
    from types import SimpleNamespace

    from diffusers import UNet2DConditionModel
    from huggingface_hub.errors import GatedRepoError

    response = SimpleNamespace(headers={}, status_code=401, request=None)

    def gated(*args, **kwargs):
        raise GatedRepoError("401 Client Error: access to this model is restricted", response=response)

    monkeypatch.setattr(UNet2DConditionModel, "from_pretrained", gated)
    with pytest.raises(WeightsNotFoundError) as err:
        load_components(ModelLoadConfig(str(tiny_sd_path), local_files_only=False), ("unet",))
    msg = str(err.value)
    assert "gated" in msg and "hf auth login" in msg and "unet" in msg and "online" in msg
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_frozen_keys_come_from_the_module_tree_not_the_state_dict(tiny_sd_path):
    """A system dropping frozen keys from its own state_dict() still gets them from frozen_state_dict_keys."""
    parts = load_components(ModelLoadConfig(str(tiny_sd_path), device="cpu"), ("vae",))

    class System(nn.Module):
        def __init__(self):
            super().__init__()
            self.guidance = nn.Module()
            self.guidance.vae = parts.vae
            self.guidance.register_buffer("anchor", torch.zeros(1), persistent=False)
            self.head = nn.Linear(2, 2)

        def state_dict(self, *args, **kwargs):
            full = super().state_dict(*args, **kwargs)
            return {k: v for k, v in full.items() if not k.startswith("guidance.vae.")}

    system = System()
    assert set(system.state_dict()) == {"head.weight", "head.bias"}
    assert frozen_state_dict_keys(system) == {"guidance.vae." + k for k in parts.vae.state_dict()}
    # freeze marks any module: only the outermost frozen module is named.
    freeze(system.head)
    assert frozen_module_names(system) == ["guidance.vae", "head"]
    assert {"head.weight", "head.bias"} <= frozen_state_dict_keys(system)


COMPONENT_CLASS = "tests.distill.custom_unet.TaggedUNet"


def test_component_classes_load_the_unet_with_a_custom_class(tiny_sd_path):
    cfg = ModelLoadConfig(str(tiny_sd_path), device="cpu", component_classes={"unet": COMPONENT_CLASS})
    parts = load_components(cfg, ("unet", "vae"))
    assert type(parts.unet) is TaggedUNet
    assert type(parts.vae).__name__ == "AutoencoderKL"  # the other components keep model_index.json's classes
    assert _all_frozen(parts.unet)
    saved = load_file(tiny_sd_path / "unet" / "diffusion_pytorch_model.safetensors")
    loaded = parts.unet.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    default = load_components(ModelLoadConfig(str(tiny_sd_path), device="cpu"), ("unet",))
    assert type(default.unet).__name__ == "UNet2DConditionModel"


def test_component_classes_dtype_reaches_the_custom_class(tiny_sd_path):
    cfg = ModelLoadConfig(
        str(tiny_sd_path), torch_dtype="fp16", device="cpu", component_classes={"unet": COMPONENT_CLASS}
    )
    unet = load_components(cfg, ("unet",)).unet
    assert type(unet) is TaggedUNet and all(p.dtype == torch.float16 for p in unet.parameters())


@pytest.mark.parametrize(
    "classes, match",
    [
        ({"unet": "tests.distill.custom_unet.NoSuchUNet"}, "cannot be imported"),
        ({"unet": "no_such_package.module.UNet"}, "cannot be imported"),
    ],
)
def test_bad_component_class_path_is_one_line(tiny_sd_path, classes, match):
    cfg = ModelLoadConfig(str(tiny_sd_path), device="cpu", component_classes=classes)
    with pytest.raises(ValueError, match=match) as err:
        load_components(cfg, ("unet",))
    assert "\n" not in str(err.value) and "component_classes.unet" in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__


@pytest.mark.parametrize(
    "classes, match",
    [
        ({"controlnet": COMPONENT_CLASS}, "unknown component"),
        ({"unet": "TaggedUNet"}, "package.module.Class"),
    ],
)
def test_bad_component_classes_are_refused_before_loading(classes, match):
    with pytest.raises(ValueError, match=match) as err:
        ModelLoadConfig("unused/model", component_classes=classes)
    assert "\n" not in str(err.value)
