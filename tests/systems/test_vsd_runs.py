"""VSD through the real `distill3d` command: ProlificDreamer with a LoRA particle model on the tiny SD folder
(exact resume of LoRA + camera embedding + Adam state, no base weights in checkpoints, the LoRA in peft's
format), and n particles on the two-mode oracle prompt (per-particle metrics, exports, side-by-side turntable)."""

from __future__ import annotations

import json

import imageio.v3 as iio
import torch

from tests.systems.cli import run_cli, summary
from tests.systems.test_resume import FAST

TINY_PROLIFIC = [
    "experiment=prolificdreamer",
    "~stages",  # stage 1 (the NeRF with VSD) alone
    *FAST,
    "data.resolution_milestones=[]",
    "data.batch_size=[1]",
    "data.eval_height=32",
    "system.guidance.denoiser.torch_dtype=fp32",
]


def _ckpt(run_dir):
    return torch.load(run_dir / "ckpts" / "last.ckpt", map_location="cpu", weights_only=False)


def test_prolificdreamer_lora_resume_is_exact_and_keeps_base_weights_out(tmp_path, tiny_sd_path):
    model = f"system.guidance.denoiser.pretrained_model_name_or_path={tiny_sd_path}"
    straight, split = tmp_path / "straight", tmp_path / "split"
    for run_dir, steps in ((straight, 12), (split, 6)):
        result = run_cli(
            [*TINY_PROLIFIC, model, f"trainer.max_steps={steps}", f"run_dir={run_dir}"], cwd=tmp_path
        )
        assert result.returncode == 0, result.stderr[-3000:]
    halfway = _ckpt(split)["state_dict"]
    result = run_cli([f"resume={split}", "trainer.max_steps=12"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = _ckpt(straight), _ckpt(split)
    assert a["global_step"] == b["global_step"] == 12 and a["state_dict"].keys() == b["state_dict"].keys()
    keys = list(a["state_dict"])
    lora = [k for k in keys if ".lora_" in k]
    camera = [k for k in keys if "camera_embedding" in k]
    assert lora and camera, keys[:10]
    base = [k for k in keys if k.startswith("guidance.") and k not in lora and k not in camera]
    assert not base, base[:5]  # no base-UNet / VAE weight in the checkpoint
    for key in keys:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), f"{key} differs after resume"
    assert any(not torch.equal(halfway[k], b["state_dict"][k]) for k in lora), "the LoRA did not train"
    states_a, states_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert states_a.keys() == states_b.keys()
    for index in states_a:
        assert torch.equal(states_a[index]["exp_avg_sq"], states_b[index]["exp_avg_sq"])
    groups = {g["name"]: g for g in a["optimizer_states"][0]["param_groups"]}
    particle = groups["guidance.particle"]
    assert particle["lr"] == 1e-4 and particle["decoupled_weight_decay"] and particle["weight_decay"] > 0
    # The LoRA in peft's own format, beside the run's other outputs.
    folder = split / "export" / "particle_model"
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["r"] == 4 and set(config["target_modules"]) == {"to_q", "to_k", "to_v", "to_out.0"}
    assert (folder / "adapter_model.safetensors").stat().st_size > 0


def test_two_particles_on_a_two_mode_prompt_are_evaluated_exported_and_shown_side_by_side(tmp_path):
    run_dir = tmp_path / "run"
    args = [
        "experiment=demo-vsd",
        *[a for a in FAST if a != "export.enabled=false"],
        "data.resolution_milestones=[]",
        "data.batch_size=[1]",
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        "system.geometry.density_bias=blob_magic3d",  # a surface to export after 3 steps
        "eval.n_views=2",
        f"run_dir={run_dir}",
    ]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    s = summary(run_dir)
    rows = s["metrics"]["particles"]
    assert [r["index"] for r in rows] == [0, 1] and s["metrics"]["modes"] == 2
    assert all(r["scene"] in ("a snowman", "a donut") and 0 < r["psnr"] < 100 for r in rows)
    assert s["metrics"]["modes_covered"] == len({r["scene"] for r in rows})
    assert "particle 1:" in result.stdout and "modes covered:" in result.stdout
    for i in range(2):
        assert (run_dir / "export" / f"particle_{i}" / "model.glb").stat().st_size > 0
    assert set(s["artifacts"]["export"]) == {"particle_0", "particle_1"}
    # 32² eval views: a turntable frame is rgb | normal per particle, a validation row rgb|normal|opacity|depth.
    frame = iio.imread(run_dir / "video" / "test.mp4", index=0)
    grid = iio.imread(next((run_dir / "save").glob("*-val.png")))
    assert frame.shape[:2] == (32, 2 * 2 * 32) and grid.shape[:2] == (32, 2 * 4 * 32)
    ckpt = _ckpt(run_dir)["state_dict"]
    first = [k for k in ckpt if k.startswith("renderer.geometry.")]
    second = [k for k in ckpt if k.startswith("extra_particles.0.geometry.")]
    assert len(first) == len(second) > 0
    # Two independent models: their weights differ (different initialisations, different gradients).
    k = first[0]
    assert not torch.equal(ckpt[k], ckpt[k.replace("renderer.", "extra_particles.0.", 1)])
