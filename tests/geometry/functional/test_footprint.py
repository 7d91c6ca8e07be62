"""box_cells: every integer cell of many boxes at once, in a fixed order, against hand-written lists."""

from __future__ import annotations

import itertools

import torch

from geometry.functional.footprint import box_cells


def _cells(lo, size):
    owner, cell = box_cells(torch.tensor(lo), torch.tensor(size))
    return owner.tolist(), [tuple(c) for c in cell.tolist()]


def test_one_2d_box_lists_its_cells_first_axis_fastest():
    owner, cells = _cells([[2, 3]], [[2, 3]])
    assert owner == [0] * 6
    assert cells == [(2, 3), (3, 3), (2, 4), (3, 4), (2, 5), (3, 5)]


def test_several_2d_boxes_with_empty_and_negative_sizes():
    lo = [[0, 0], [5, 5], [-1, 7], [9, 9], [1, -2], [4, 4]]
    size = [[1, 2], [0, 3], [2, 1], [-2, -3], [3, 0], [-1, 4]]
    owner, cells = _cells(lo, size)
    # Boxes 1 (zero width), 3 (both negative: the product would be positive), 4 (zero height) and 5 (one
    # negative side) contribute nothing; the others keep their order.
    assert owner == [0, 0, 2, 2]
    assert cells == [(0, 0), (0, 1), (-1, 7), (0, 7)]


def test_3d_boxes():
    owner, cells = _cells([[0, 0, 0], [10, -3, 2]], [[2, 1, 2], [1, 2, 1]])
    assert owner == [0, 0, 0, 0, 1, 1]
    assert cells == [(0, 0, 0), (1, 0, 0), (0, 0, 1), (1, 0, 1), (10, -3, 2), (10, -2, 2)]


def test_all_empty_gives_empty_lists_of_the_right_shape():
    owner, cell = box_cells(torch.tensor([[1, 2, 3], [4, 5, 6]]), torch.tensor([[0, 1, 1], [2, -1, 1]]))
    assert owner.shape == (0,) and cell.shape == (0, 3)


def test_random_boxes_against_itertools():
    gen = torch.Generator().manual_seed(0)
    lo = torch.randint(-5, 5, (30, 3), generator=gen)
    size = torch.randint(-1, 4, (30, 3), generator=gen)
    owner, cell = box_cells(lo, size)
    expected_owner, expected_cells = [], []
    for i, (low, s) in enumerate(zip(lo.tolist(), size.tolist(), strict=True)):
        ranges = [range(low[d], low[d] + s[d]) for d in range(3)]
        for z, y, x in itertools.product(*reversed(ranges)):  # last axis slowest, first axis fastest
            expected_owner.append(i)
            expected_cells.append((x, y, z))
    assert owner.tolist() == expected_owner
    assert [tuple(c) for c in cell.tolist()] == expected_cells
    assert len(expected_owner) > 50  # the random boxes are not all empty
