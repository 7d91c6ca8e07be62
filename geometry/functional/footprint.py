"""Enumerating every integer cell of many axis-aligned boxes at once (no Python loop over boxes).

The splatting twin lists the pixels of each Gaussian's footprint, the UV rasterizer the texels of each
triangle's bounding box, and the Gaussians' export index the grid cells each Gaussian touches: all three are
"for box i, every cell in lo_i .. lo_i + size_i − 1", flattened with repeat_interleave.
"""

from __future__ import annotations

import torch
from jaxtyping import Int
from torch import Tensor


def box_cells(
    lo: Int[Tensor, "N D"], size: Int[Tensor, "N D"]
) -> tuple[Int[Tensor, "P"], Int[Tensor, "P D"]]:
    """(owner (P,), cell (P, D)) for every cell of every box; box i spans lo_i .. lo_i + size_i − 1 per axis.

    Cells are listed box by box (owner is sorted), the first axis varying fastest. Boxes with a zero or
    negative size contribute nothing.
    """
    size = size.clamp_min(0)
    count = size.prod(-1)
    total = int(count.sum())
    device = lo.device
    owner = torch.repeat_interleave(torch.arange(lo.shape[0], device=device), count, output_size=total)
    local = torch.arange(total, device=device) - torch.repeat_interleave(
        count.cumsum(0) - count, count, output_size=total
    )
    sizes = size[owner]
    coords = []
    for d in range(lo.shape[1]):
        coords.append(local % sizes[:, d])
        local = local // sizes[:, d]
    return owner, lo[owner] + torch.stack(coords, dim=-1)
