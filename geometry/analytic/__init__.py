"""Analytic scenes (the oracles' ground truth): primitives with exact SDFs, the Scene, the YAML file format."""

from geometry.analytic.scene import Scene
from geometry.analytic.scene_io import (
    BUILTIN_SCENES,
    SceneError,
    builtin_scene,
    load_scene,
    resolve_scene,
    resolve_scenes,
    scene_from_dict,
)

__all__ = [
    "BUILTIN_SCENES",
    "Scene",
    "SceneError",
    "builtin_scene",
    "load_scene",
    "resolve_scene",
    "resolve_scenes",
    "scene_from_dict",
]
