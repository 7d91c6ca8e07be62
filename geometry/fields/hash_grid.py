"""The multiresolution hash-grid encoding (Instant-NGP, Müller et al. 2022, §3).

Hand-written twin of tinycudann's HashGrid (tcnn needs CUDA); on CUDA with tinycudann installed it is used instead.

The twin reproduces tcnn's GridEncoding exactly (include/tiny-cuda-nn/encodings/grid.h), so both share one flat
parameter vector and a GPU test can compare them:
- level l: scale = 2^(l·log2 b)·N_min − 1 (float32), resolution R = ceil(scale) + 1 (vertices per axis);
- position: pos = fma(scale, x, 0.5); cell = floor(pos) (as uint32); fraction = pos − cell (the 0.5 staggers levels);
- table size T_l = min(next_multiple(R³, 8), 2^log2_hashmap_size); dense index x + y·R + z·R² when R³ ≤ T_l,
  otherwise the spatial hash (x·1) ⊕ (y·2654435761) ⊕ (z·805459861) in uint32; then index mod T_l;
- parameters: levels concatenated, each a row-major (T_l, F) table; init uniform in ±1e-4;
- output: (N, L·F) with column l·F + f.

Fast path (linear interpolation): a dense level's table IS an (R, R, R, F) volume (z, y, x, f), so it is sampled
with torch's C++ trilinear `grid_sample` (fast CPU forward and backward for table and coordinates) instead of the
eight-corner gather. Points whose corners leave the volume (tcnn reads wrapped indices there) fall back to the gather.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

_U32 = 0xFFFFFFFF
# Instant-NGP eq. 4 primes (tcnn's coherent prime hash; the first "prime" 1 keeps x-neighbours cache-coherent).
HASH_PRIMES = (1, 2654435761, 805459861)
# Broadcast shapes that put the x / y / z corner pair on the last / middle / first of three corner axes.
_AXIS_SHAPES = ((1, 1, 2), (1, 2, 1), (2, 1, 1))


@dataclass
class HashGridConfig:
    """Multiresolution hash grid (Instant-NGP). Defaults follow REFERENCE.md (finest level ≈ 4096 over the box).

    start_level: progressive levels; None = all levels always on. Otherwise `start_level` levels are active until
        `start_step`, then one more every `update_steps` steps. Masked levels output zeros (so get no gradient).
    backend: "auto" = tinycudann for CUDA inputs when it imports, else the torch twin; "cuda" is "tcnn".
    compile: torch.compile the twin's forward (falls back to eager with a warning if compilation fails).
    chunk_size: points per twin evaluation; bounds the (chunk, levels, 8 corners) temporaries (~200 MB at 32k).
    """

    n_levels: int = 16
    n_features_per_level: int = 2
    log2_hashmap_size: int = 19
    base_resolution: int = 16
    per_level_scale: float = 1.447269237440378
    interpolation: Literal["linear", "smoothstep"] = "linear"
    start_level: int | None = None
    start_step: int = 0
    update_steps: int = 500
    backend: Literal["auto", "tcnn", "cuda", "torch"] = "auto"
    compile: bool = False
    chunk_size: int = 32768

    def __post_init__(self) -> None:
        if self.interpolation not in ("linear", "smoothstep"):
            raise ValueError(f"hash grid interpolation={self.interpolation!r}; use 'linear' or 'smoothstep'")
        if self.backend not in ("auto", "tcnn", "cuda", "torch"):
            raise ValueError(f"hash grid backend={self.backend!r}; use 'auto', 'tcnn' (= 'cuda') or 'torch'")
        if self.n_levels < 1 or self.n_levels > 32:
            raise ValueError(f"hash grid n_levels={self.n_levels}; use 1..32 (tcnn's offset table holds 32)")
        if self.n_features_per_level not in (1, 2, 4, 8):
            raise ValueError(f"n_features_per_level={self.n_features_per_level}; tcnn supports 1, 2, 4 or 8")
        if not 1 <= self.log2_hashmap_size <= 30:
            raise ValueError(f"log2_hashmap_size={self.log2_hashmap_size}; use 1..30 (19 is the usual)")
        if self.base_resolution < 2 or self.per_level_scale < 1.0:
            raise ValueError("hash grid needs base_resolution >= 2 and per_level_scale >= 1")
        if self.start_level is not None and not 1 <= self.start_level <= self.n_levels:
            raise ValueError(f"start_level={self.start_level}; use None or 1..n_levels={self.n_levels}")
        if self.update_steps < 1 or self.chunk_size < 1:
            raise ValueError("hash grid update_steps and chunk_size must be >= 1")


def level_layout(cfg: HashGridConfig) -> list[dict]:
    """Per-level scale, resolution, table size, offset (in entries) and dense flag, with tcnn's float32 math."""
    log2_scale = np.log2(np.float32(cfg.per_level_scale))  # tcnn: std::log2(float) on the host
    levels, offset = [], 0
    for level in range(cfg.n_levels):
        scale = np.float32(np.exp2(np.float32(level) * log2_scale) * np.float32(cfg.base_resolution) - 1)
        # "−1 … +1": base_resolution counts grid vertices, not cells (tcnn's grid_scale / grid_resolution).
        resolution = int(math.ceil(float(scale))) + 1
        dense_size = min(resolution**3, 2**31 - 1)
        size = min(-(-dense_size // 8) * 8, 2**cfg.log2_hashmap_size)  # 8-aligned, capped by the hash table
        dense = resolution**3 <= size
        levels.append(dict(scale=float(scale), resolution=resolution, size=size, offset=offset, dense=dense))
        offset += size
    return levels


def active_levels(cfg: HashGridConfig, step: int) -> int:
    """Number of active levels at a training step (progressive coarse-to-fine schedule)."""
    if cfg.start_level is None:
        return cfg.n_levels
    return min(cfg.n_levels, cfg.start_level + max(0, step - cfg.start_step) // cfg.update_steps)


def smoothstep(t: Float[Tensor, "..."]) -> Float[Tensor, "..."]:
    """C1 smoothstep t²(3 − 2t) on [0, 1] (tcnn's "Smoothstep" interpolation)."""
    return t * t * (3.0 - 2.0 * t)


def hash_grid_encode(
    x: Float[Tensor, "N 3"],
    params: Float[Tensor, " P"],
    scales: Float[Tensor, " L"],
    resolutions: Int[Tensor, " L"],
    sizes: Int[Tensor, " L"],
    offsets: Int[Tensor, " L"],
    dense: Bool[Tensor, " L"],
    n_features: int,
    smooth: bool,
) -> Float[Tensor, "N LF"]:
    """Instant-NGP multiresolution hash encoding (Müller et al. 2022, §3, eq. 4), vectorised over levels and corners.

    x: (N, 3) positions, nominally in [0, 1]³ (outside, indices wrap like tcnn's uint32 arithmetic).
    params: tcnn-layout flat table (see module docstring). Returns (N, L·F) float32.
    """
    # fma(scale, x, 0.5) rounded once to float32: the float64 product of two float32 values is exact.
    pos = (x.double()[:, None, :] * scales.double()[None, :, None] + 0.5).float()  # (N, L, 3)
    cell = torch.floor(pos)
    frac = pos - cell  # carries d/dx = scale, which the analytic normals need
    if smooth:
        frac = smoothstep(frac)
    grid = cell.long() & _U32  # (uint32)(int)floor(pos), (N, L, 3)
    # Per axis, the two corner coordinates {cell, cell + 1}; the 8 corners are their outer combination,
    # laid out (N, L, 2[z], 2[y], 2[x]) so that per-axis terms broadcast instead of being built 8 times.
    corner = torch.stack([grid, (grid + 1) & _U32], dim=-1)  # (N, L, 3, 2)
    cx, cy, cz = (corner[:, :, d].view(*corner.shape[:2], *shape) for d, shape in enumerate(_AXIS_SHAPES))
    res = resolutions.view(1, -1, 1, 1, 1)
    dense_index = (cx + cy * res + cz * (res * res)) & _U32
    hashed_index = cx ^ ((cy * HASH_PRIMES[1]) & _U32) ^ ((cz * HASH_PRIMES[2]) & _U32)
    index = torch.where(dense.view(1, -1, 1, 1, 1), dense_index, hashed_index)
    index = index % sizes.view(1, -1, 1, 1, 1) + offsets.view(1, -1, 1, 1, 1)  # (N, L, 2, 2, 2)
    # index_select: its index_add backward is ~2x faster on CPU than embedding's or advanced indexing's.
    table = params.view(-1, n_features)
    corner_values = table.index_select(0, index.reshape(-1)).view(*index.shape, n_features)
    # Trilinear weight of a corner: prod over axes of (1 − frac) at the lower and frac at the upper corner.
    w = torch.stack([1.0 - frac, frac], dim=-1)  # (N, L, 3, 2)
    wx, wy, wz = (w[:, :, d].view(*w.shape[:2], *shape) for d, shape in enumerate(_AXIS_SHAPES))
    weight = wx * wy * wz  # (N, L, 2, 2, 2)
    encoded = (corner_values * weight[..., None]).sum(dim=(2, 3, 4))  # (N, L, F)
    return encoded.reshape(x.shape[0], -1)


def dense_level_encode(
    x: Float[Tensor, "N 3"], volume: Float[Tensor, "F R R R"], scale: float
) -> tuple[Float[Tensor, "N F"], Bool[Tensor, " N"]]:
    """One dense hash-grid level by trilinear `grid_sample` (same values as `hash_grid_encode` with linear weights).

    volume: the level's first R³ table rows viewed as (F, D=z, H=y, W=x) (index x + y·R + z·R²).
    tcnn's vertex-unit position pos = scale·x + 0.5 maps to grid_sample's align_corners=True coordinate
    g = 2·pos/(R − 1) − 1 (grid's last dim ordered x, y, z). Returns (values, outside): `outside` marks points
    with a corner beyond vertex R − 1 or below 0, where tcnn reads wrapped indices; their values are
    meaningless here and must come from the gather path.
    """
    res = volume.shape[-1]
    pos = x * scale + 0.5  # (N, 3), vertex units
    outside = ((pos < 0) | (pos >= res - 1)).any(dim=-1)
    g = pos * (2.0 / (res - 1)) - 1.0
    sampled = F.grid_sample(
        volume[None], g.view(1, 1, 1, -1, 3), mode="bilinear", padding_mode="zeros", align_corners=True
    )  # (1, F, 1, 1, N)
    return sampled.view(volume.shape[0], -1).t(), outside


def _tinycudann_importable() -> bool:
    try:
        import tinycudann  # noqa: F401
    except Exception:  # ImportError, or a CUDA/driver error raised while loading its extension
        return False
    return True


class HashGrid(nn.Module):
    """Multiresolution hash grid: (N, 3) in [0, 1]³ → (N, n_levels·F) float32, on tcnn or its torch twin.

    `params` is one flat parameter in tcnn's layout, so checkpoints are backend-independent.
    """

    def __init__(self, cfg: HashGridConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or HashGridConfig()
        self.layout = level_layout(cfg)
        self.n_output_dims = cfg.n_levels * cfg.n_features_per_level
        n_entries = self.layout[-1]["offset"] + self.layout[-1]["size"]
        self.params = nn.Parameter(torch.empty(n_entries * cfg.n_features_per_level).uniform_(-1e-4, 1e-4))
        for name, key, dtype in [
            ("scales", "scale", torch.float32),
            ("resolutions", "resolution", torch.long),
            ("sizes", "size", torch.long),
            ("offsets", "offset", torch.long),
            ("dense", "dense", torch.bool),
        ]:
            self.register_buffer(
                name, torch.tensor([lv[key] for lv in self.layout], dtype=dtype), persistent=False
            )
        self.register_buffer("level_mask", torch.ones(cfg.n_levels), persistent=False)
        self._encode = torch.compile(hash_grid_encode, dynamic=True) if cfg.compile else hash_grid_encode
        self._compile_checked = not cfg.compile
        self._tcnn = (
            None  # created lazily on the first CUDA call; kept out of the module tree (params shared)
        )
        self.set_step(0)

    @property
    def n_active_levels(self) -> int:
        return int(self.level_mask.sum().item())

    def set_step(self, step: int) -> None:
        """Update the progressive level mask for this training step."""
        n_active = active_levels(self.cfg, step)
        self.level_mask.copy_((torch.arange(self.cfg.n_levels) < n_active).float())

    def params_to_tcnn(self) -> Float[Tensor, " P"]:
        """A copy of the parameters as tcnn's flat `Encoding.params` vector (already the same layout)."""
        return self.params.detach().clone()

    @torch.no_grad()
    def params_from_tcnn(self, flat: Float[Tensor, " P"]) -> None:
        """Load parameters from a tcnn `Encoding.params` vector of the same configuration."""
        if flat.shape != self.params.shape:
            raise ValueError(
                f"tcnn params have shape {tuple(flat.shape)} but this hash grid needs {tuple(self.params.shape)}; "
                "build both from the same HashGridConfig (levels, features, table size, resolutions)"
            )
        self.params.copy_(flat.to(self.params))

    def uses_tcnn(self, x: Tensor) -> bool:
        """Whether a call with input x goes to tinycudann (raises if the chosen backend cannot run)."""
        backend = self.cfg.backend
        if backend == "torch":
            return False
        if backend == "auto":
            return x.is_cuda and _tinycudann_importable()
        if not x.is_cuda:
            raise RuntimeError(
                f"hash grid backend={backend!r} needs CUDA inputs; use backend='auto' or 'torch'"
            )
        if not _tinycudann_importable():
            raise ImportError(
                "hash grid backend='tcnn' but tinycudann is not importable; install it with "
                "pip install git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch "
                "or use backend='auto' / 'torch'"
            )
        return True

    def forward(self, x: Float[Tensor, "N 3"]) -> Float[Tensor, "N LF"]:
        if x.ndim != 2 or x.shape[-1] != 3:
            raise ValueError(f"HashGrid expects points of shape (N, 3) in [0, 1]^3, got {tuple(x.shape)}")
        x = x.float()
        encoded = self._forward_tcnn(x) if self.uses_tcnn(x) else self._forward_torch(x)
        mask = self.level_mask.to(encoded).repeat_interleave(self.cfg.n_features_per_level)
        return encoded * mask  # masked levels: zero output and, through the product, zero gradient

    def _forward_torch(self, x: Tensor) -> Tensor:
        chunks = [self._encode_chunk(c) for c in x.split(self.cfg.chunk_size)] if x.shape[0] else []
        return torch.cat(chunks) if chunks else x.new_zeros(0, self.n_output_dims)

    def _encode_chunk(self, x: Tensor) -> Tensor:
        if (
            self.cfg.interpolation == "linear"
            and not self.cfg.compile
            and any(lv["dense"] for lv in self.layout)
        ):
            return self._encode_chunk_dense(x)
        return self._encode_chunk_gather(x)

    def _encode_chunk_dense(self, x: Tensor) -> Tensor:
        """Dense levels through grid_sample, hashed levels (and wrapped boundary points) through the gather."""
        feats = self.cfg.n_features_per_level
        # split (not slicing per level): its backward assembles the parameter gradient with one cat
        tables = self.params.split([lv["size"] * feats for lv in self.layout])
        hashed = [i for i, lv in enumerate(self.layout) if not lv["dense"]]
        hashed_out = None
        if hashed:
            sel = torch.tensor(hashed, device=x.device)
            hashed_out = hash_grid_encode(
                x, self.params, *(b[sel] for b in (self.scales, self.resolutions, self.sizes, self.offsets)),
                self.dense[sel], n_features=feats, smooth=False,
            ).view(x.shape[0], len(hashed), feats)  # fmt: skip
        levels, n_hashed = [], 0
        for i, lv in enumerate(self.layout):
            if not lv["dense"]:
                levels.append(hashed_out[:, n_hashed])
                n_hashed += 1
                continue
            res = lv["resolution"]
            volume = tables[i][: res**3 * feats].view(res, res, res, feats).permute(3, 0, 1, 2)
            values, outside = dense_level_encode(x, volume, lv["scale"])
            if outside.any():  # exact tcnn wrap-around semantics for the few boundary points
                idx = outside.nonzero().squeeze(-1)
                b = slice(i, i + 1)
                fixed = hash_grid_encode(
                    x[idx], self.params, self.scales[b], self.resolutions[b], self.sizes[b], self.offsets[b],
                    self.dense[b], n_features=feats, smooth=False,
                )  # fmt: skip
                values = values.index_put((idx,), fixed)
            levels.append(values)
        return torch.stack(levels, dim=1).reshape(x.shape[0], -1)

    def _encode_chunk_gather(self, x: Tensor) -> Tensor:
        args = (x, self.params, self.scales, self.resolutions, self.sizes, self.offsets, self.dense)
        kwargs = dict(n_features=self.cfg.n_features_per_level, smooth=self.cfg.interpolation == "smoothstep")
        if self._compile_checked:
            return self._encode(*args, **kwargs)
        try:
            out = self._encode(*args, **kwargs)
        except Exception as err:  # inductor needs a working C++/Triton toolchain; the eager twin does not
            warnings.warn(
                f"torch.compile of the hash grid failed ({type(err).__name__}: {err}); running eager.",
                stacklevel=3,
            )
            self._encode = hash_grid_encode
            out = hash_grid_encode(*args, **kwargs)
        self._compile_checked = True
        return out

    def _forward_tcnn(self, x: Tensor) -> Tensor:
        import tinycudann as tcnn

        if self._tcnn is None or self._tcnn.params.device != x.device:
            config = {
                "otype": "HashGrid",
                "n_levels": self.cfg.n_levels,
                "n_features_per_level": self.cfg.n_features_per_level,
                "log2_hashmap_size": self.cfg.log2_hashmap_size,
                "base_resolution": self.cfg.base_resolution,
                "per_level_scale": self.cfg.per_level_scale,
                "interpolation": "Smoothstep" if self.cfg.interpolation == "smoothstep" else "Linear",
            }
            with torch.cuda.device(x.device):
                encoding = tcnn.Encoding(3, config, dtype=torch.float32)
            if encoding.params.numel() != self.params.numel():
                raise RuntimeError(
                    f"tinycudann allocates {encoding.params.numel()} hash-grid params but the torch twin "
                    f"{self.params.numel()}: this tinycudann version lays out the grid differently; "
                    "use backend='torch'"
                )
            object.__setattr__(self, "_tcnn", encoding)  # not a submodule: no duplicate state_dict entry
        self._tcnn.params = self.params  # share the one parameter (re-bound in case it was replaced)
        return self._tcnn(x.contiguous()).float()
