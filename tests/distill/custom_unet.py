"""An importable UNet subclass for the `ModelLoadConfig.component_classes` tests (test_models.py)."""

from __future__ import annotations

from diffusers import UNet2DConditionModel


class TaggedUNet(UNet2DConditionModel):
    """The diffusers UNet unchanged: only its type tells a test which class loaded the weights."""
