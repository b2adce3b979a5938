"""A training DataLoader that a mid-epoch resume continues at its batch, returned by the datamodule itself
(`LightningDataModule.train_dataloader`, Lightning's public hook) on one device.

The order of batches is a function of (seed, epoch) (the sampler's `set_epoch`, `ExactResume`'s seeds), so the
position is the number of batches the epoch has consumed, which Lightning's loop state already holds.
"""

from __future__ import annotations

import torch


def resumable(loader: torch.utils.data.DataLoader, trainer) -> torch.utils.data.DataLoader:
    """`loader`, resumable at its batch where Lightning injects no distributed sampler (one process, not
    DeepSpeed) and the loader has a batch sampler; else `loader` as it is (Lightning's sampler resumes at epoch
    ends)."""
    if trainer is None or loader.batch_sampler is None or trainer.world_size > 1 or trainer.overfit_batches \
            or getattr(trainer.strategy, "distributed_sampler_kwargs", None) is not None:
        return loader
    return _ResumableLoader(loader, trainer)


class _SkipConsumed(torch.utils.data.Sampler):
    """A batch sampler that starts each pass after the batches the epoch has already consumed.

    That number is the loop's own count (0 at an epoch start, k after a resume from step k of the epoch), read
    when the pass begins, i.e. after Lightning has restored its loop state.
    """

    def __init__(self, inner, consumed):
        self.inner, self.consumed = inner, consumed

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)

    def __iter__(self):
        skip = self.consumed()
        for i, batch in enumerate(self.inner):
            if i >= skip:
                yield batch

    def __len__(self) -> int:
        return len(self.inner)


class _ResumableLoader(torch.utils.data.DataLoader):
    """A single-process training DataLoader that a mid-epoch resume continues at its batch.

    The order of batches is a function of (seed, epoch) (the sampler's `set_epoch`, ExactResume's seeds), so the
    position is the number of batches the epoch has consumed, which the loop state already holds: nothing more
    is saved (`state_dict` is empty; having it tells Lightning the loader is resumable).
    """

    def __init__(self, loader: torch.utils.data.DataLoader, trainer):
        def consumed() -> int:
            return trainer.fit_loop.epoch_loop.batch_progress.current.ready if trainer.training else 0

        super().__init__(loader.dataset, batch_sampler=_SkipConsumed(loader.batch_sampler, consumed),
                         collate_fn=loader.collate_fn, num_workers=loader.num_workers, pin_memory=loader.pin_memory,
                         worker_init_fn=loader.worker_init_fn, persistent_workers=loader.persistent_workers)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
