"""The multi-view oracle (issue 13): the V views of one object denoised jointly, with the object's global azimuth
unknown but shared by all of them — the exact analogue of MVDream's cross-view attention.

Candidates for the views of an object are the scene turned by every global azimuth phi_g of the grid, the same
phi_g for all its views; the joint posterior p(k, g | x_t^1..V) multiplies the views' likelihoods, so the views
of one object always agree on which side faces which camera (distill/denoisers/azimuth_oracle.py). The prior
over phi is uniform and the embedding is the plain oracle's scene weights (B, 1, K): its prompt processor is
distill.conditions.oracle.OraclePrompt. The run may settle on any global azimuth, so it is measured by
metrics.psnr_aligned (the best turn about the up axis).
"""

from __future__ import annotations

from dataclasses import dataclass

from jaxtyping import Float
from torch import Tensor

from distill.denoisers.azimuth_oracle import AzimuthOracle, AzimuthOracleConfig
from geometry.cameras import Cameras


@dataclass
class MultiViewOracleConfig(AzimuthOracleConfig):
    """num_views: views per object denoised jointly (the batch is object-major; MVDream: 4)."""

    num_views: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_views < 1:
            raise ValueError(f"num_views={self.num_views} must be at least 1")


class MultiViewOracle(AzimuthOracle):
    """`_target_: distill.denoisers.multiview_oracle.MultiViewOracle`; condition: OraclePrompt."""

    Config = MultiViewOracleConfig

    def __init__(
        self, scenes, azimuth_step: float = 5.0, schedule=None, cache_entries: int = 4096, num_views: int = 4
    ):
        super().__init__(scenes, azimuth_step, schedule, cache_entries)
        self.num_views = num_views

    @classmethod
    def from_config(cls, cfg: MultiViewOracleConfig, run=None) -> MultiViewOracle:
        return cls(
            cls.library(cfg, run), cfg.azimuth_step, cache_entries=cfg.cache_entries, num_views=cfg.num_views
        )

    def offsets(self, cameras: Cameras) -> Float[Tensor, "B G"]:
        return self.azimuth_grid[None, :].expand(len(cameras), -1)

    def prior(self, embeddings: Float[Tensor, "B E"]) -> Float[Tensor, "B K G"]:
        if embeddings.shape[1] != self.num_scenes:
            raise ValueError(
                f"multi-view oracle embeddings have {embeddings.shape[1]} weights for {self.num_scenes} scenes: "
                "use OraclePrompt as the prompt processor"
            )
        return embeddings[:, :, None].expand(-1, -1, self.num_sides) / self.num_sides
