"""Several stages in one command (experiment=demo-stages: NeRF → Gaussians on its surface), and resume inside
the second stage: the first is not re-run, the second continues exactly where it stopped."""

from __future__ import annotations

import pytest
import torch

from distill3d.errors import ConfigError
from systems.app.stages import overlay, plan_stages
from tests.systems.cli import run_cli, summary
from tests.systems.experiments import tiny_overrides

EXACT = [
    "system.optimizer.lr_scheduler=none",
    "stages.1.system.position_lr_steps=10",  # an LR decay defined over the run length would change on extension
    "stages.1.system.optimizer.lr_scheduler=none",
]


def _ckpt(path):
    state = torch.load(path, map_location="cpu", weights_only=False)
    return state["state_dict"], state["global_step"]


def _run(tmp_path, name, extra):
    overrides, _ = tiny_overrides("demo-stages", lambda model: model)
    run_dir = tmp_path / name
    result = run_cli(
        ["experiment=demo-stages", f"run_dir={run_dir}", *overrides, *EXACT, *extra], cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.mark.slow  # three short real runs
def test_resume_continues_inside_the_second_stage(tmp_path):
    straight = _run(tmp_path, "straight", ["stages.1.trainer.max_steps=5"])
    split = _run(tmp_path, "split", [])  # both stages 2 steps
    coarse = (split / "ckpts" / "coarse.ckpt").read_bytes()
    assert _ckpt(split / "ckpts" / "last.ckpt")[1] == 2
    again = run_cli([f"resume={split}", "stages.1.trainer.max_steps=5"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "initialized from stage coarse" not in again.stderr  # the second stage resumed, it did not restart
    assert (split / "ckpts" / "coarse.ckpt").read_bytes() == coarse  # the first stage was not re-run
    s = summary(split)
    assert [(st["name"], st["steps"], st["status"]) for st in s["stages"]] == [
        ("coarse", 2, "completed"),
        ("gaussians", 5, "completed"),
    ]
    (a, step_a), (b, step_b) = _ckpt(straight / "ckpts" / "last.ckpt"), _ckpt(split / "ckpts" / "last.ckpt")
    assert step_a == step_b == 5 and a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resuming inside the stage"


def test_stage_plans_overlay_sections_and_replace_a_changed_target():
    base = {
        "system": {
            "_target_": "A",
            "geometry": {"_target_": "nerf", "radius": 1.0, "grid": 16},
            "loss": {"x": 1},
        }
    }
    stages = plan_stages(
        {
            **base,
            "trainer": {"max_steps": 10},
            "stages": [
                {"name": "one", "trainer": {"max_steps": 3}},
                {
                    "name": "two",
                    "system": {"geometry": {"_target_": "gaussians", "num_points": 5}, "loss": {"y": 2}},
                },
            ],
        }
    )
    assert [s.name for s in stages] == ["one", "two"] and stages[1].init_from == "one"
    assert stages[0].raw["trainer"] == {"max_steps": 3} and stages[1].raw["trainer"] == {"max_steps": 10}
    assert stages[1].raw["system"]["geometry"] == {"_target_": "gaussians", "num_points": 5}  # replaced whole
    # A stage's loss weights replace the inherited ones (they name the stage's own regularizers).
    assert stages[1].raw["system"]["loss"] == {"y": 2} and stages[0].raw["system"]["loss"] == {"x": 1}
    assert stages[0].checkpoint == "ckpts/one.ckpt" and stages[1].checkpoint == "ckpts/last.ckpt"
    assert overlay({"a": {"b": 1}}, {"a": {"c": 2}}) == {"a": {"b": 1, "c": 2}}


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([{"trainer": {}}], "needs a name"),
        ([{"name": "a"}, {"name": "a"}], "used twice"),
        ([{"name": "a", "init_from": "b"}], "names no earlier stage"),
        ([{"name": "a", "steps": 3}], "unknown key"),
    ],
)
def test_malformed_stages_are_one_line_errors(stages, message):
    with pytest.raises(ConfigError, match=message):
        plan_stages({"system": {}, "stages": stages})


@pytest.mark.slow  # two short real runs
def test_weights_of_a_nerf_run_start_a_dmtet_refine_from_its_density(tmp_path, tiny_sd_path):
    """magic3d-refine weights=<a NeRF run>: the DMTet is initialized from that run's NeRF (another geometry, so
    its config.yaml is read and `init_from` converts), not refused as a checkpoint of another model."""
    grid = ["hash_grid.n_levels=4", "hash_grid.log2_hashmap_size=12"]
    coarse = tmp_path / "coarse"
    nerf, _ = tiny_overrides("demo", lambda model: model)
    result = run_cli(
        ["experiment=demo", f"run_dir={coarse}", *nerf, "system.geometry.radius=2.0",
         "system.geometry.hash_grid.base_resolution=16", "system.geometry.hash_grid.per_level_scale=1.447269237440378",
         "system.geometry.hash_grid.backend=auto"],
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    refine_overrides, _ = tiny_overrides("magic3d-refine", lambda model: str(tiny_sd_path))
    refine = tmp_path / "refine"
    result = run_cli(
        ["experiment=magic3d-refine", f"weights={coarse}", f"run_dir={refine}", *refine_overrides,
         *(f"system.geometry.{g}" for g in grid)],
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "initialized from" in result.stderr and "ImplicitVolume" in result.stderr
    assert summary(refine)["export"]["status"] == "completed"
