"""A system built from its components and stepped in-process, without the runner: the constructor takes the
renderer, guidance and condition, the guidance's trainable part is optimized and checkpointed, frozen weights are
not. And through the command: that trainable part resumes exactly."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from distill.conditions.oracle import OraclePrompt, OraclePromptConfig
from distill.denoisers.oracle import OracleConfig, OracleDenoiser
from distill.guidance.sds import SDSConfig
from geometry.fields.backgrounds import SolidBackground
from geometry.fields.hash_grid import HashGridConfig
from geometry.fields.materials import NoMaterial
from geometry.nerf.field import ImplicitVolume, NeRFConfig
from geometry.nerf.renderer import VolumeRenderer, VolumeRendererConfig
from systems.components import Components, declared_losses
from systems.config import RunInfo, ShadingConfig, SystemConfig
from systems.data import RandomCameraConfig
from systems.datamodule import RandomCameraDataModule
from systems.dreamfusion import DreamFusion
from systems.losses import LossWeights
from tests.fixtures.trainable_guidance import OffsetSDS
from tests.systems.cli import run_cli
from tests.systems.test_resume import FAST as RESUME_FAST


def build_system(steps: int = 3) -> tuple[DreamFusion, RandomCameraDataModule]:
    run = RunInfo(prompt="a snowman", max_steps=steps)
    grid = HashGridConfig(n_levels=3, log2_hashmap_size=10, backend="torch")
    field = ImplicitVolume(NeRFConfig(hash_grid=grid, density_bias="blob_magic3d"))
    renderer = VolumeRenderer(
        VolumeRendererConfig(num_samples_per_ray=12, backend="torch", return_normal_in_training=False),
        field, NoMaterial(), SolidBackground(),
    )  # fmt: skip
    denoiser = OracleDenoiser.from_config(OracleConfig(), run)
    guidance = OffsetSDS(SDSConfig(guidance_scale=1.0), denoiser, max_steps=steps)
    condition = OraclePrompt.from_config(OraclePromptConfig(), run, denoiser)
    losses = LossWeights(
        {"lambda_guidance": 1.0, "lambda_offset": 1.0}, declared_losses(VolumeRenderer, OffsetSDS)
    )
    cfg = SystemConfig(shading=ShadingConfig(mode="albedo"))
    data = RandomCameraDataModule(RandomCameraConfig(height=[16], n_val_views=1, n_test_views=1))
    system = DreamFusion(cfg, run, Components([renderer], guidance, condition, [], losses), data.sampler)
    return system, data


def test_a_system_steps_without_the_runner_and_trains_its_guidance(tmp_path):
    pl.seed_everything(0, verbose=False)
    system, data = build_system(steps=3)
    before = {k: v.clone() for k, v in system.state_dict().items()}
    trainer = pl.Trainer(
        max_steps=3, max_epochs=-1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, default_root_dir=str(tmp_path), accelerator="cpu",
    )  # fmt: skip
    trainer.fit(system, datamodule=data)
    assert trainer.global_step == 3
    after = system.state_dict()
    # The guidance's own parameter trained (toward the mean render colour), checkpointed under its name.
    assert "guidance.offset" in after and not torch.equal(after["guidance.offset"], before["guidance.offset"])
    assert after["guidance.offset"].abs().sum() > 0
    # The 3D parameters trained too; frozen weights (the oracle holds only buffers) never enter the state dict.
    assert not torch.equal(
        after["renderer.geometry.encoding.params"], before["renderer.geometry.encoding.params"]
    )
    assert not [k for k in after if k.startswith("guidance.denoiser.")]
    names = [g["name"] for g in system.optimizers().optimizer.param_groups]
    assert "guidance.offset" in names
    trainer.save_checkpoint(str(tmp_path / "s.ckpt"))
    saved = torch.load(tmp_path / "s.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert "guidance.offset" in saved


GUIDANCE = [
    "system.guidance._target_=tests.fixtures.trainable_guidance.OffsetSDS",
    "+system.loss.lambda_offset=1.0",
]
FAST = [*RESUME_FAST, *GUIDANCE]


def _state(run_dir):
    ckpt = torch.load(run_dir / "ckpts" / "last.ckpt", map_location="cpu", weights_only=False)
    return ckpt["state_dict"], ckpt["optimizer_states"][0]


def test_a_trainable_guidance_resumes_exactly_through_the_command(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run_cli([*FAST, "trainer.max_steps=8", f"run_dir={straight}"], cwd=tmp_path).returncode == 0
    first = run_cli([*FAST, "trainer.max_steps=4", f"run_dir={split}"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    halfway = _state(split)[0]["guidance.offset"].clone()
    again = run_cli([f"resume={split}", "trainer.max_steps=8"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    (a, opt_a), (b, opt_b) = _state(straight), _state(split)
    assert a.keys() == b.keys() and "guidance.offset" in a
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"
    assert not torch.equal(halfway, b["guidance.offset"])  # it kept training after the resume
    names = [g["name"] for g in opt_a["param_groups"]]
    index = names.index("guidance.offset")
    param_id = opt_a["param_groups"][index]["params"][0]
    assert torch.equal(opt_a["state"][param_id]["exp_avg"], opt_b["state"][param_id]["exp_avg"])
