"""The Lightning DataModule: step ticks for training, fixed orbits for validation and the test turntable."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from geometry.cameras import Cameras
from systems.data import RandomCameraConfig, RandomCameraSampler, orbit_cameras


class _StepTicks(IterableDataset):
    """An endless stream of placeholders, one per training step.

    The system samples its cameras from the step itself (RandomCameraSampler.sample(global_step)) instead of
    taking them from the loader, because Lightning fetches batches ahead of time: a loader-side schedule
    would lag the step, and an exact resume would need the loader's state.
    """

    def __iter__(self):
        while True:
            yield torch.zeros(())


class _ViewList(Dataset):
    def __init__(self, cameras: Cameras) -> None:
        self.cameras = cameras

    def __len__(self) -> int:
        return len(self.cameras)

    def __getitem__(self, index: int) -> Cameras:
        return self.cameras[index]


def _identity(batch):
    return batch


class RandomCameraDataModule(pl.LightningDataModule):
    def __init__(self, cfg: RandomCameraConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.sampler = RandomCameraSampler(cfg)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_StepTicks(), batch_size=None, collate_fn=_identity, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            _ViewList(orbit_cameras(self.cfg, self.cfg.n_val_views)), batch_size=None, collate_fn=_identity
        )

    def test_dataloader(self) -> DataLoader:
        return DataLoader(
            _ViewList(orbit_cameras(self.cfg, self.cfg.n_test_views)), batch_size=None, collate_fn=_identity
        )
