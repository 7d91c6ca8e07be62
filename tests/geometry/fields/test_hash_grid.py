"""Hash grid (torch twin of tinycudann) against tinycudann's formulas written out independently."""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import pytest
import torch

from geometry.fields.hash_grid import HashGrid, HashGridConfig, smoothstep

M32 = 2**32

# 3 levels, resolutions 4, 8, 16 vertices; table 1024: levels 0-1 dense (64, 512 entries), level 2 hashed (4096 > 1024).
SMALL = dict(n_levels=3, n_features_per_level=2, log2_hashmap_size=10, base_resolution=4, per_level_scale=2.0)


def tcnn_levels(n_levels, log2_hashmap_size, base_resolution, per_level_scale, **_):
    """Level layout written out from tinycudann's grid.h (float32 host math), independent of the module."""
    out, offset = [], 0
    for level in range(n_levels):
        scale = np.float32(
            np.exp2(np.float32(level) * np.log2(np.float32(per_level_scale))) * np.float32(base_resolution)
        ) - np.float32(1.0)
        res = math.ceil(float(scale)) + 1
        size = min(((res**3 + 7) // 8) * 8, 2**log2_hashmap_size)
        out.append((float(scale), res, size, offset, res**3 <= size))
        offset += size
    return out


def vertex_index(level, xyz):
    """Table row of integer vertex xyz at a level: dense row-major or the Instant-NGP XOR hash (eq. 4)."""
    _, res, size, _, dense = level
    x, y, z = (v % M32 for v in xyz)
    if dense:
        return (x + y * res + z * res * res) % M32 % size
    return ((x * 1) ^ (y * 2654435761 % M32) ^ (z * 805459861 % M32)) % size


def make_grid(**overrides):
    cfg = HashGridConfig(**{**SMALL, "backend": "torch", **overrides})
    grid = HashGrid(cfg)
    gen = torch.Generator().manual_seed(0)
    grid.params_from_tcnn(torch.randn(grid.params.numel(), generator=gen))
    return grid


def level_table(grid, level):
    _, _, size, offset, _ = tcnn_levels(**SMALL)[level]
    F = grid.cfg.n_features_per_level
    return grid.params.detach().view(-1, F)[offset : offset + size]


def test_layout_matches_tcnn_formula_for_default_config():
    cfg = HashGridConfig()
    expected = tcnn_levels(**vars(cfg))
    grid = HashGrid(cfg)
    assert [(lv["resolution"], lv["size"], lv["offset"], lv["dense"]) for lv in grid.layout] == [
        e[1:] for e in expected
    ]
    assert grid.params.numel() == sum(e[2] for e in expected) * cfg.n_features_per_level
    assert expected[0][1] == 16 and expected[-1][1] == 4096  # base 16 vertices, finest ≈ 4096 over the box
    assert grid.params.abs().max() <= 1e-4  # tcnn init: uniform in ±1e-4
    assert grid.n_output_dims == 32


def test_vertices_return_stored_entries_dense_and_hashed():
    grid = make_grid()
    levels = tcnn_levels(**SMALL)
    gen = torch.Generator().manual_seed(1)
    for li, level in enumerate(levels):
        scale, res = level[0], level[1]
        k = torch.randint(1, res - 1, (40, 3), generator=gen)
        x = (k.double() - 0.5) / scale  # pos = scale·x + 0.5 lands on the vertex
        out = grid(x.float())[:, 2 * li : 2 * li + 2]
        rows = [vertex_index(level, kk.tolist()) for kk in k]
        expected = level_table(grid, li)[rows]
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert levels[2][4] is False and levels[0][4] is True  # both index kinds were exercised


@pytest.mark.parametrize("level_index", [0, 2])
def test_cell_midpoint_is_mean_of_its_eight_corners(level_index):
    grid = make_grid()
    level = tcnn_levels(**SMALL)[level_index]
    k = [1, 2, 0]
    x = torch.tensor([k], dtype=torch.float64) / level[0]  # pos = scale·x + 0.5 = k + 0.5
    out = grid(x.float())[0, 2 * level_index : 2 * level_index + 2]
    corners = [[k[0] + (c & 1), k[1] + (c >> 1 & 1), k[2] + (c >> 2 & 1)] for c in range(8)]
    expected = level_table(grid, level_index)[[vertex_index(level, c) for c in corners]].mean(0)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_smoothstep_weights():
    t = torch.tensor([0.0, 0.5, 1.0, 0.25])
    torch.testing.assert_close(smoothstep(t), torch.tensor([0.0, 0.5, 1.0, 0.25**2 * (3 - 0.5)]))


@pytest.mark.parametrize("interpolation", ["linear", "smoothstep"])
def test_random_points_match_a_per_point_reference(interpolation):
    grid = make_grid(interpolation=interpolation)
    x = torch.rand(25, 3, generator=torch.Generator().manual_seed(2))
    out = grid(x)
    levels = tcnn_levels(**SMALL)
    for n in range(x.shape[0]):
        for li, level in enumerate(levels):
            pos = [float(np.float32(level[0] * float(v) + 0.5)) for v in x[n]]
            base = [math.floor(p) for p in pos]
            t = [p - b for p, b in zip(pos, base, strict=True)]
            if interpolation == "smoothstep":
                t = [v * v * (3 - 2 * v) for v in t]
            acc = torch.zeros(2, dtype=torch.float64)
            for c in range(8):
                bits = [(c >> d) & 1 for d in range(3)]
                w = math.prod(t[d] if bits[d] else 1 - t[d] for d in range(3))
                row = vertex_index(level, [base[d] + bits[d] for d in range(3)])
                acc += w * level_table(grid, li)[row].double()
            torch.testing.assert_close(out[n, 2 * li : 2 * li + 2].double(), acc, atol=2e-5, rtol=0)


def test_progressive_levels_mask_outputs_and_gradients():
    grid = make_grid(start_level=1, start_step=10, update_steps=5)
    assert grid.n_active_levels == 1
    for step, n_active in [(14, 1), (15, 2), (19, 2), (20, 3), (1000, 3)]:
        grid.set_step(step)
        assert grid.n_active_levels == n_active
    grid.set_step(15)  # levels 0, 1 on; level 2 off
    x = torch.rand(64, 3, generator=torch.Generator().manual_seed(3))
    out = grid(x)
    assert torch.all(out[:, 4:] == 0) and out[:, :4].abs().min() > 0
    out.square().sum().backward()
    levels = tcnn_levels(**SMALL)
    grads = [grid.params.grad.view(-1, 2)[off : off + size] for _, _, size, off, _ in levels]
    assert grads[0].abs().sum() > 0 and grads[1].abs().sum() > 0  # gradients reach the table
    assert torch.all(grads[2] == 0)


def test_params_tcnn_round_trip_and_shape_error():
    grid = make_grid()
    flat = torch.randn(grid.params.numel())
    grid.params_from_tcnn(flat)
    exported = grid.params_to_tcnn()
    assert torch.equal(exported, flat)
    exported.zero_()  # a copy, not a view of the parameter
    assert torch.equal(grid.params.detach(), flat)
    with pytest.raises(ValueError, match="same HashGridConfig"):
        grid.params_from_tcnn(torch.zeros(grid.params.numel() + 8))


@pytest.mark.usefixtures("unchecked_types")  # ill-typed input on purpose: our own error message
def test_bad_inputs_have_clear_errors():
    with pytest.raises(ValueError, match="interpolation"):
        HashGridConfig(interpolation="cubic")
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        make_grid()(torch.rand(4, 2))
    with pytest.raises(RuntimeError, match="CUDA"):
        make_grid(backend="tcnn")(torch.rand(4, 3))


@pytest.mark.slow  # inductor's C++ compile: ~70 s on a loaded 2-core CPU
# The test-time shape checker cannot run on dynamo's fake tensors; users compile without it.
@pytest.mark.usefixtures("unchecked_types")
def test_torch_compile_matches_eager():
    eager = make_grid(interpolation="smoothstep")
    compiled = make_grid(interpolation="smoothstep", compile=True)
    x = torch.rand(300, 3, generator=torch.Generator().manual_seed(4))
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = compiled(x)
    print(f"compile + first call: {time.perf_counter() - start:.1f} s")
    assert not [w for w in caught if "hash grid failed" in str(w.message)], "compilation fell back to eager"
    torch.testing.assert_close(out, eager(x), atol=1e-6, rtol=0)
    torch.testing.assert_close(compiled(x[:77]), eager(x[:77]), atol=1e-6, rtol=0)  # another size


def test_compile_failure_falls_back_with_warning():
    grid = make_grid(compile=True)

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    grid._encode = broken
    x = torch.rand(10, 3)
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler"):
        out = grid(x)
    torch.testing.assert_close(out, make_grid()(x))


@pytest.mark.gpu
@pytest.mark.parametrize("interpolation", ["linear", "smoothstep"])
def test_tcnn_matches_torch_twin_values_and_gradients(interpolation):
    pytest.importorskip("tinycudann")
    base = dict(interpolation=interpolation, n_levels=16, log2_hashmap_size=19, base_resolution=16)
    base["per_level_scale"] = 1.447269237440378
    twin = HashGrid(HashGridConfig(**base, backend="torch")).cuda()
    tcnn = HashGrid(HashGridConfig(**base, backend="tcnn")).cuda()
    gen = torch.Generator(device="cuda").manual_seed(0)
    shared = torch.rand(twin.params.numel(), device="cuda", generator=gen) * 2 - 1
    twin.params_from_tcnn(shared)
    tcnn.params_from_tcnn(twin.params_to_tcnn())
    x = torch.rand(4096, 3, device="cuda", generator=gen)
    x_twin, x_tcnn = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_twin, out_tcnn = twin(x_twin), tcnn(x_tcnn)
    # Same fp32 formulas; only summation order differs (8 corners): ~1e-6 on outputs of size ≤ 1.
    torch.testing.assert_close(out_tcnn, out_twin, atol=1e-5, rtol=1e-5)
    upstream = torch.randn(out_twin.shape, device="cuda", generator=gen)
    (out_twin * upstream).sum().backward()
    (out_tcnn * upstream).sum().backward()
    # Table gradients are atomic fp32 sums over points sharing a vertex: order-dependent rounding only.
    torch.testing.assert_close(tcnn.params.grad, twin.params.grad, atol=1e-4, rtol=1e-4)
    # Input gradients scale with the level resolution (up to ~4096 × weights): relative tolerance.
    torch.testing.assert_close(x_tcnn.grad, x_twin.grad, atol=1e-2, rtol=1e-3)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        dict(n_levels=4, log2_hashmap_size=16, base_resolution=16, per_level_scale=1.5),
    ],  # mixed / all dense
)
def test_grid_sample_dense_path_matches_the_gather_path(overrides):
    """Dense levels via grid_sample == the eight-corner gather: values, table gradients and input gradients,
    including points on the faces (tcnn wraps the upper corner there) and outside [0, 1]^3."""
    grid = make_grid(**overrides)
    assert any(lv["dense"] for lv in grid.layout)
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(3000, 3, generator=gen)
    x[:50] = torch.randint(0, 2, (50, 3), generator=gen).float()  # cube corners and edges
    x[50:100, 0] = 1.0  # on the x = 1 face: upper corner beyond vertex R - 1
    x[100:150] = x[100:150] * 1.4 - 0.2  # outside the unit cube: uint32 wrap-around indices
    x.requires_grad_(True)
    upstream = torch.randn(x.shape[0], grid.n_output_dims, generator=gen)
    results = []
    for encode in (grid._encode_chunk_dense, grid._encode_chunk_gather):
        out = encode(x)
        results.append((out, *torch.autograd.grad((out * upstream).sum(), [x, grid.params])))
    (fast, fast_dx, fast_dp), (ref, ref_dx, ref_dp) = results
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_dp, ref_dp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_dx, ref_dx, atol=1e-3, rtol=1e-4)  # d/dx carries scale (up to ~80)
    torch.testing.assert_close(grid(x.detach()), ref.detach(), atol=1e-5, rtol=1e-5)  # public forward agrees
