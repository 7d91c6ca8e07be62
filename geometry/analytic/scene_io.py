"""The scene file format (DESIGN.md §8): YAML loading, validation with one-line errors, built-in library.

    name: a snowman
    primitives:
      - {type: sphere, center: [0, 0, -0.3], radius: 0.35, color: [0.95, 0.95, 0.95]}
      - {type: cone, center: [0.3, 0, 0.2], radius: 0.05, height: 0.2, rotation_deg: [0, 90, 0], color: [1, 0.5, 0]}

Types and their fields: sphere (radius), box (size: [sx, sy, sz]), cylinder (radius, height; axis local z),
torus (radius_major, radius_minor; local xy plane), cone (radius, height; base at z = -h/2, apex at +h/2).
Every primitive needs `center` and `color` ([r, g, b] in [0, 1]); `rotation_deg: [rx, ry, rz]` is optional
(extrinsic x, then y, then z). The union must lie inside the unit sphere.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from distill3d.errors import UserError
from geometry.analytic.primitives import PRIMITIVE_TYPES, Primitive
from geometry.analytic.scene import Scene

# Prompt-like name -> file in geometry/analytic/scenes/. The file's `name:` must equal the key.
_BUILTIN_FILES: dict[str, str] = {
    "a snowman": "snowman.yaml",
    "a mushroom": "mushroom.yaml",
    "a table": "table.yaml",
    "a donut": "donut.yaml",
    "a rocket": "rocket.yaml",
    "a lollipop": "lollipop.yaml",
}
BUILTIN_SCENES: tuple[str, ...] = tuple(_BUILTIN_FILES)

_VEC3_FIELDS = {"center", "color", "rotation_deg", "size"}
_POSITIVE_FIELDS = {"radius", "height", "radius_major", "radius_minor", "size"}
_BOUND_TOL = 1e-6


class SceneError(UserError, ValueError):
    """Bad scene input; the message is one line naming the source, the primitive, the field and the fix."""


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _field_value(name: str, value: Any, where: str) -> float | tuple[float, float, float]:
    """Validate and convert one primitive field; `where` prefixes the error message."""
    if name in _VEC3_FIELDS:
        if not isinstance(value, list | tuple) or len(value) != 3 or not all(_is_number(v) for v in value):
            raise SceneError(f"{where}: field '{name}' must be a list of 3 finite numbers, got {value!r}")
        vec = tuple(float(v) for v in value)
        if name == "color" and not all(0.0 <= v <= 1.0 for v in vec):
            raise SceneError(
                f"{where}: field 'color' values must be in [0, 1], got {value!r} (divide 0-255 by 255)"
            )
        if name in _POSITIVE_FIELDS and not all(v > 0 for v in vec):
            raise SceneError(f"{where}: field '{name}' values must be > 0, got {value!r}")
        return vec
    if not _is_number(value):
        raise SceneError(f"{where}: field '{name}' must be a finite number, got {value!r}")
    if name in _POSITIVE_FIELDS and value <= 0:
        raise SceneError(f"{where}: field '{name}' must be > 0, got {value!r}")
    return float(value)


def _primitive_from_dict(d: Any, index: int, source: str) -> Primitive:
    where = f"{source}: primitive {index}"
    if not isinstance(d, dict):
        raise SceneError(f"{where}: expected a mapping like {{type: sphere, ...}}, got {d!r}")
    kind = d.get("type")
    if kind not in PRIMITIVE_TYPES:
        raise SceneError(
            f"{where}: unknown or missing type {kind!r}; use one of {', '.join(PRIMITIVE_TYPES)}"
        )
    cls = PRIMITIVE_TYPES[kind]
    where = f"{where} ({kind})"
    allowed = {f.name: f for f in fields(cls)}
    extra = sorted(set(d) - set(allowed) - {"type"})
    if extra:
        raise SceneError(f"{where}: unexpected field '{extra[0]}'; {kind} takes {', '.join(allowed)}")
    for name, f in allowed.items():
        if name not in d and f.default is MISSING:
            raise SceneError(f"{where}: missing field '{name}'; {kind} needs {', '.join(allowed)}")
    prim = cls(**{name: _field_value(name, value, where) for name, value in d.items() if name != "type"})
    if isinstance(prim, PRIMITIVE_TYPES["torus"]) and prim.radius_minor >= prim.radius_major:
        raise SceneError(f"{where}: radius_minor must be smaller than radius_major (a ring torus)")
    return prim


def scene_from_dict(d: Any, source: str = "<dict>") -> Scene:
    """Build and validate a Scene from the parsed YAML mapping {name, primitives}."""
    if not isinstance(d, dict):
        raise SceneError(
            f"{source}: a scene must be a mapping with 'name' and 'primitives', got {type(d).__name__}"
        )
    extra = sorted(set(d) - {"name", "primitives"})
    if extra:
        raise SceneError(
            f"{source}: unexpected top-level key '{extra[0]}'; a scene has only 'name' and 'primitives'"
        )
    name = d.get("name")
    if not isinstance(name, str) or not name.strip():
        raise SceneError(f"{source}: missing or empty 'name'; add e.g. `name: a snowman`")
    prims = d.get("primitives")
    if not isinstance(prims, list) or not prims:
        raise SceneError(f"{source}: 'primitives' must be a non-empty list of primitives")
    primitives = tuple(_primitive_from_dict(p, i, source) for i, p in enumerate(prims))
    for i, p in enumerate(primitives):
        r = p.bounding_radius()
        if r > 1.0 + _BOUND_TOL:
            raise SceneError(
                f"{source}: primitive {i} ({p.TYPE}) reaches distance {r:.4f} from the origin; "
                "scenes must fit inside the unit sphere (move it closer or shrink it)"
            )
    return Scene(name=name.strip(), primitives=primitives)


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SceneError(f"{source}: malformed YAML{at}: {problem}; fix the syntax") from None


def load_scene(path: str | Path) -> Scene:
    """Load and validate a scene YAML file."""
    path = Path(path)
    if not path.is_file():
        raise SceneError(
            f"{path}: scene file not found; pass an existing .yaml path or a built-in scene "
            f"({', '.join(BUILTIN_SCENES)})"
        )
    return scene_from_dict(_parse_yaml(path.read_text(), str(path)), str(path))


def _normalize_name(name: str) -> str:
    key = " ".join(name.lower().split())
    for article in ("a ", "an "):
        if key.startswith(article):
            return key[len(article) :]
    return key


def builtin_scene(name: str) -> Scene:
    """A scene from the built-in library by name (case-insensitive; the leading 'a '/'an ' is optional)."""
    wanted = _normalize_name(name)
    for key, filename in _BUILTIN_FILES.items():
        if _normalize_name(key) == wanted:
            text = (resources.files("geometry.analytic") / "scenes" / filename).read_text()
            return scene_from_dict(_parse_yaml(text, f"<builtin {filename}>"), f"<builtin {filename}>")
    raise SceneError(
        f"unknown built-in scene {name!r}; choose one of: {', '.join(BUILTIN_SCENES)} or a .yaml path"
    )


MODE_SEPARATOR = "|"


def resolve_scenes(text: str | Path) -> list[Scene]:
    """The scenes of a multi-mode prompt: "a snowman|a donut" names two modes of equal prior weight (each part
    a built-in name or a YAML path); a prompt without '|' is one scene. Repeated scenes are refused."""
    if isinstance(text, Path) or MODE_SEPARATOR not in str(text):
        return [resolve_scene(text)]
    parts = [p.strip() for p in str(text).split(MODE_SEPARATOR)]
    if any(not p for p in parts):
        raise SceneError(f"{str(text)!r}: an empty mode between '|'; write e.g. 'a snowman|a donut'")
    scenes = [resolve_scene(p) for p in parts]
    names = [s.name for s in scenes]
    if len(set(names)) != len(names):
        raise SceneError(
            f"{str(text)!r} names the same scene twice ({', '.join(names)}); name distinct scenes"
        )
    return scenes


def resolve_scene(name_or_path: str | Path) -> Scene:
    """A built-in scene name, or a path to a scene YAML file."""
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or text.lower().endswith((".yaml", ".yml")) or Path(text).is_file():
        return load_scene(text)
    return builtin_scene(text)
