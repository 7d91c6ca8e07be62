"""The extraction memory estimate: the suggested resolution fits the budget, the next size up does not."""

from __future__ import annotations

from geometry.mesh.memory import GB, extraction_bytes, largest_resolution, memory_problem


def test_the_largest_resolution_is_the_largest_that_fits():
    for budget_gb in (2.0, 8.0, 24.0, 128.0):
        res = largest_resolution(budget_gb * GB)
        assert res % 16 == 0
        assert extraction_bytes(res) <= budget_gb * GB < extraction_bytes(res + 16)


def test_memory_problem_names_the_estimate_and_the_fix():
    assert memory_problem(256, max_memory_gb=8.0) is None
    problem = memory_problem(1024, max_memory_gb=8.0)
    assert problem.startswith("export.resolution=1024 needs about 65 GB")
    assert f"use export.resolution={largest_resolution(8.0 * GB)} or less" in problem
