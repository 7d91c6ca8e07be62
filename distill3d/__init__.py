"""The project's shared base: the user-error class and atomic file writes, importable from every layer.

`distill/`, `geometry/` and `systems/` all raise user errors and write files; this package sits below all three
(it imports none of them), so each keeps its one-way dependencies (docs/ARCHITECTURE.md).
"""


def __getattr__(name: str):
    # `distill3d.typecheck` (the test suite's type checker) imports beartype, a development dependency: loaded
    # only when asked for, by attribute as jaxtyping's pytest option resolves it.
    if name == "typecheck":
        import importlib

        return importlib.import_module("distill3d.typecheck")
    raise AttributeError(f"module 'distill3d' has no attribute {name!r}")
