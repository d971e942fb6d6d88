"""What every data set's LightningDataModule shares: its `datasets` by split, served in whole batches, the
global batch size shared out among DDP processes."""
import pytorch_lightning as pl
from torch.utils.data import DataLoader

from draw.errors import UserError


def _batch_as_is(batch):
    return batch


class DataModule(pl.LightningDataModule):
    """A subclass fills `self.datasets` ("train", "val", "test") in setup() with datasets whose
    __getitems__ returns a whole batch, and has `batch_size` and `num_workers` hyper-parameters."""

    def __init__(self):
        super().__init__()
        self.datasets = {}

    @property
    def per_process_batch_size(self) -> int:
        """data.batch_size is the global batch: under DDP each process takes its share."""
        processes = self.trainer.world_size if self.trainer is not None else 1
        if self.hparams.batch_size % processes:
            raise UserError(f"data.batch_size={self.hparams.batch_size} must divide among {processes} processes")
        return self.hparams.batch_size // processes

    def _loader(self, split: str, shuffle: bool = False):
        return DataLoader(
            self.datasets[split],
            batch_size=self.per_process_batch_size,
            shuffle=shuffle,
            num_workers=self.hparams.num_workers,
            collate_fn=_batch_as_is,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        return self._loader("val")

    def test_dataloader(self):
        return self._loader("test")
