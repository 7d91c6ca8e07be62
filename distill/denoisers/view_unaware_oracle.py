"""The view-unaware 2D oracle (issue 13): an exact model that knows a view's elevation but not which side of the
object it sees — the analytic analogue of a text-to-image model that has no notion of the camera's azimuth.

For a camera at elevation e the candidates are the scene seen from every object-relative azimuth a_g of the grid
(the camera turned about the up axis to a_g), one view at a time. The embedding is the prior pi(k, g) over
(scene, side seen), shape (B, 1, K·G) k-major: the plain prompt is uniform over the sides of its scene(s); a
view-dependent prompt restricts the side ("front view": |a_g| < front_threshold, as SD is meant to read it), so
SDS, view-dependent prompting and Perp-Neg all run on it unchanged (distill.conditions.oracle.ViewUnawareOraclePrompt).
With the plain prompt every view is pulled toward whichever side it resembles most: the Janus problem.
"""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor

from distill.denoisers.azimuth_oracle import AzimuthOracle
from geometry.cameras import Cameras, pose_azimuth


class ViewUnawareOracle(AzimuthOracle):
    """`_target_: distill.denoisers.view_unaware_oracle.ViewUnawareOracle`; condition: ViewUnawareOraclePrompt."""

    num_views = 1

    def offsets(self, cameras: Cameras) -> Float[Tensor, "B G"]:
        # Turn each camera from its own azimuth to every grid azimuth: candidate g shows the side a_g.
        return self.azimuth_grid[None, :] - pose_azimuth(cameras.c2w).to(self.azimuth_grid.device)[:, None]

    def prior(self, embeddings: Float[Tensor, "B E"]) -> Float[Tensor, "B K G"]:
        expected = self.num_scenes * self.num_sides
        if embeddings.shape[1] != expected:
            raise ValueError(
                f"view-unaware oracle embeddings have {embeddings.shape[1]} weights for {self.num_scenes} "
                f"scenes × {self.num_sides} sides = {expected}: use ViewUnawareOraclePrompt as the prompt processor"
            )
        return embeddings.reshape(-1, self.num_scenes, self.num_sides)
