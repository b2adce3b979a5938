"""bench/cpu_budget.py: the CPU-seconds training budget bench/grpo.py gives both sides of its comparison."""

from __future__ import annotations

import sys
import time

import pytest
import torch

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "bench"))



@pytest.mark.parametrize("budget, batches", [(0.0, 1), (0.25, None)])
def test_the_fit_stops_once_the_process_has_used_its_cpu_seconds(budget, batches):
    import lightning.pytorch as pl
    from cpu_budget import CpuBudget

    class Burn(pl.LightningModule):
        """Each step burns ~0.05 s of CPU, so a 0.25 s budget stops after about 5 of the 1000 batches."""

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.steps = 0

        def training_step(self, batch, batch_idx):
            end = time.process_time() + 0.05
            while time.process_time() < end:
                pass
            self.steps += 1
            return (self.w - 1).pow(2).sum()

        def train_dataloader(self):
            return torch.utils.data.DataLoader(torch.zeros(1000, 1), batch_size=1)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    module = Burn()
    trainer = pl.Trainer(max_epochs=1, callbacks=[CpuBudget(budget)], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(module)
    if batches is not None:
        assert module.steps == batches
    else:
        assert 3 <= module.steps <= 8, module.steps  # stopped at the budget, not at the end of the epoch
