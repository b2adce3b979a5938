"""A callback the 2-rank tests add to `train.py` (`+callbacks.probe._target_=rank_probe.RankProbe`).

It makes rank 0's model end every generation with EOS at the first step during epoch 0's validation and
rank 1's never (it generates to max_new_tokens), counts each rank's forward passes during that validation,
and at the end of fit writes what each rank saw (`probe_rank<r>.json` in the run dir): the counts, its epoch
metrics, the step it started (or resumed) at.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl


class RankProbe(pl.Callback):
    def __init__(self, output_dir: str, early_eos_epoch: int = 0):
        self.output_dir, self.early_eos_epoch = Path(output_dir), early_eos_epoch
        self.forwards, self.start_step, self._hook = 0, None, None

    def on_train_start(self, trainer, pl_module):
        self.start_step = trainer.global_step

    def on_validation_epoch_start(self, trainer, pl_module):
        if trainer.sanity_checking or trainer.current_epoch != self.early_eos_epoch:
            return
        eos = trainer.datamodule.tokenizer.eos_token_id
        rank = trainer.global_rank

        def hook(module, args, output):
            self.forwards += 1  # validation batches (the same count on every rank) + generation steps
            output = output.clone()  # rank 0's model stops at once, rank 1's runs to max_new_tokens
            output[..., eos] = output.abs().max() * 10 + 1e4 if rank == 0 else float("-inf")
            return output

        head = pl_module.model.get_output_embeddings()
        self._hook = head.register_forward_hook(hook)

    def on_train_epoch_start(self, trainer, pl_module):
        if self._hook is not None:  # the EX callback ran at the end of the previous validation epoch
            self._hook.remove()
            self._hook = None

    def on_train_end(self, trainer, pl_module):
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        record = {"rank": trainer.global_rank, "world": trainer.world_size, "forwards": self.forwards,
                  "start_step": self.start_step, "global_step": trainer.global_step, "metrics": metrics}
        (self.output_dir / f"probe_rank{trainer.global_rank}.json").write_text(json.dumps(record))
