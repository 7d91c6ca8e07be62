"""The DreamFusion recipe (Poole et al. 2022): a NeRF rendered from random cameras, scored by SDS, regularized.

Everything it needs is BaseSystem's loop; this class exists so experiments name the recipe they follow
(`_target_: systems.dreamfusion.DreamFusion`) and recipe-specific behaviour has a home.
"""

from __future__ import annotations

from systems.base import BaseSystem


class DreamFusion(BaseSystem):
    """NeRF + SDS (also the offline demo with the oracle prior)."""
