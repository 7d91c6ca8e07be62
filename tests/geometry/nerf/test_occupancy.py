"""OccupancyGrid (torch twin of nerfacc's grid): EMA update, the mean-capped threshold, point queries."""

from __future__ import annotations

import torch

from geometry.nerf.occupancy import OccupancyGrid


def test_update_keeps_the_max_of_decayed_ema_and_new_value():
    grid = OccupancyGrid(radius=1.0, resolution=4)
    assert grid.occupied.all()  # starts all-occupied
    grid.update(lambda p: torch.full((p.shape[0],), 0.5), decay=0.9, threshold=0.1)
    assert torch.all(grid.density_ema == 0.5) and grid.occupied.all()
    grid.update(lambda p: torch.full((p.shape[0], 1), 0.2), decay=0.9, threshold=0.1)
    torch.testing.assert_close(grid.density_ema, torch.full((64,), 0.45))  # max(0.9·0.5, 0.2)
    grid.update(lambda p: (p[:, 0] > 0).float(), decay=0.1, threshold=0.1)
    ema = grid.density_ema.reshape(4, 4, 4)
    torch.testing.assert_close(ema[:2], torch.full((2, 4, 4), 0.045))  # decayed memory of 0.45
    assert torch.all(ema[2:] == 1.0)
    assert grid.occupied[2:].all() and not grid.occupied[:2].any()  # 0.045 < 0.1 ≤ 1


def test_threshold_cap_and_all_occupied_warmup():
    grid = OccupancyGrid(radius=2.0, resolution=4)
    value = lambda p: (p[:, 0] > 0).float()  # noqa: E731  1 in the x > 0 half, 0 elsewhere
    grid.update(value, decay=0.0, threshold=5.0)  # far above every value: capped at the mean (0.5)
    assert grid.occupied[2:].all() and not grid.occupied[:2].any()
    grid.update(value, decay=0.0, threshold=0.1, all_occupied=True)
    assert grid.occupied.all()
    points = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [2.5, 0.0, 0.0], [0.0, 0.0, -2.1]])
    grid.update(value, decay=0.0, threshold=0.1)
    assert grid.query(points).tolist() == [True, False, False, False]  # outside the cube: empty
    assert grid.query(points.view(2, 2, 3)).shape == (2, 2)


def test_jittered_centres_stay_in_their_cells():
    grid = OccupancyGrid(radius=0.5, resolution=3)
    torch.manual_seed(0)
    p = grid.cell_centers_jittered()
    cell = ((p / 0.5 + 1) * 0.5 * 3).floor().long()
    expected = torch.stack(torch.meshgrid(*[torch.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3)
    assert torch.equal(cell, expected)
