"""The scene file format: one-line errors naming the problem, YAML files, built-in names."""

from __future__ import annotations

import math

import pytest

from geometry.analytic import SceneError, builtin_scene, load_scene, resolve_scene, scene_from_dict
from geometry.analytic.primitives import Box, Cone


def _valid() -> dict:
    return {
        "name": "t",
        "primitives": [{"type": "sphere", "center": [0, 0, 0], "radius": 0.5, "color": [1, 0, 0]}],
    }


def _with(**changes) -> dict:
    d = _valid()
    for key, value in changes.items():
        if value is None:
            del d["primitives"][0][key]
        else:
            d["primitives"][0][key] = value
    return d


BAD = [
    (_with(type="pyramid"), "primitive 0: unknown or missing type 'pyramid'"),
    (_with(radius=None), "primitive 0 (sphere): missing field 'radius'"),
    (_with(radiuss=0.2), "primitive 0 (sphere): unexpected field 'radiuss'"),
    (_with(center=[0, 0]), "field 'center' must be a list of 3"),
    (_with(color=[1.2, 0, 0]), "field 'color' values must be in [0, 1]"),
    (_with(radius=-0.1), "field 'radius' must be > 0"),
    (_with(radius="big"), "field 'radius' must be a finite number"),
    (_with(center=[0.8, 0, 0], radius=0.3), "primitive 0 (sphere) reaches distance 1.1000"),
    ({"name": "t"}, "'primitives' must be a non-empty list"),
    ({"primitives": _valid()["primitives"]}, "missing or empty 'name'"),
    ({**_valid(), "lights": []}, "unexpected top-level key 'lights'"),
    ([1, 2], "a scene must be a mapping"),
    (
        {
            "name": "t",
            "primitives": [
                {
                    "type": "torus",
                    "center": [0, 0, 0],
                    "radius_major": 0.2,
                    "radius_minor": 0.3,
                    "color": [0, 0, 0],
                }
            ],
        },
        "radius_minor must be smaller than radius_major",
    ),
]


@pytest.mark.parametrize("data, message", BAD)
def test_scene_errors_name_the_problem(data, message):
    with pytest.raises(SceneError) as err:
        scene_from_dict(data, source="my.yaml")
    text = str(err.value)
    assert message in text and text.startswith("my.yaml") and "\n" not in text


def test_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nprimitives: [ {type: sphere\n")
    with pytest.raises(SceneError, match=r"bad\.yaml: malformed YAML at line \d+") as err:
        load_scene(bad)
    assert "\n" not in str(err.value)
    with pytest.raises(SceneError, match=r"missing\.yaml: scene file not found.*a snowman"):
        load_scene(tmp_path / "missing.yaml")
    with pytest.raises(SceneError, match="unknown built-in scene 'a spaceship'; choose one of: a snowman"):
        resolve_scene("a spaceship")


def test_load_roundtrip_and_resolve(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: two things\nprimitives:\n"
        "  - {type: cone, center: [0, 0, 0.1], radius: 0.2, height: 0.4, rotation_deg: [0, 90, 0], color: [1, 0.5, 0]}\n"
        "  - {type: box, center: [0, 0, -0.3], size: [0.2, 0.3, 0.1], color: [0, 0, 1]}\n"
    )
    scene = resolve_scene(str(path))
    assert scene.name == "two things"
    assert scene.primitives == (
        Cone(center=(0, 0, 0.1), radius=0.2, height=0.4, rotation_deg=(0, 90, 0), color=(1, 0.5, 0)),
        Box(center=(0, 0, -0.3), size=(0.2, 0.3, 0.1), color=(0, 0, 1)),
    )
    # The rotated cone's apex points along +x, the farthest point of the scene.
    assert scene.bounding_radius == pytest.approx(
        max(math.hypot(0.2, 0.1 + 0.2), math.hypot(0.1, 0.15, 0.35))
    )
    for alias in ("A Snowman", "snowman", "  a   snowman "):
        assert resolve_scene(alias) == builtin_scene("a snowman")


def test_a_multi_mode_prompt_names_several_scenes():
    from geometry.analytic import resolve_scenes

    assert [s.name for s in resolve_scenes("a snowman | a donut")] == ["a snowman", "a donut"]
    assert [s.name for s in resolve_scenes("a snowman")] == ["a snowman"]
    with pytest.raises(SceneError, match="empty mode"):
        resolve_scenes("a snowman|")
    with pytest.raises(SceneError, match="same scene twice"):
        resolve_scenes("a donut|donut")
    with pytest.raises(SceneError, match="unknown built-in scene 'a teapot'"):
        resolve_scenes("a snowman|a teapot")
