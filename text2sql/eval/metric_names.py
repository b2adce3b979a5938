"""The name of every metric a training run logs, in one place.

The EX callback logs under these names and the W&B workspace (`text2sql dashboard`) plots them, so a renamed
metric cannot leave an empty panel: tests/test_dashboard.py checks every required name against the history
of a real offline run. Never imports torch.
"""

from __future__ import annotations

from text2sql.data.bird import DIFFICULTY_LEVELS
from text2sql.eval.execute import STATUSES
from text2sql.sql.hardness import HARDNESS_LEVELS

VAL = "val/"                                   # prefix of everything the EX callback logs (summarize() keys)
EX = f"{VAL}execution_accuracy"                # the optimised metric (conf/train.yaml optimized_metric)
EX_BY_HARDNESS = {level: f"{VAL}ex_{level}" for level in HARDNESS_LEVELS}     # logged for levels present
STATUS_SHARES = {status: f"{VAL}status/{status}" for status in STATUSES}     # always all of them
EXAMPLES_TABLE = f"{VAL}examples"              # wandb.Table of example predictions, one per evaluated epoch

# Optional: exact-match metrics are logged only by runs whose callback computes them (shown when present).
EXACT_MATCH = f"{VAL}exact_match"
EM_BY_HARDNESS = {level: f"{VAL}em_{level}" for level in HARDNESS_LEVELS}
EX_BY_DIFFICULTY = {level: f"{VAL}ex_{level}" for level in DIFFICULTY_LEVELS}  # BIRD runs, in place of hardness
TEST_SUITE = f"{VAL}test_suite_accuracy"      # with eval.test_suite: right on every database of that suite

# Logged by Text2SQLModule and Lightning (named here so the workspace and its test agree with them).
TRAIN_LOSS = "train/loss"                      # every logged step
TRAIN_LOSS_EPOCH = "train/loss_epoch"
VAL_LOSS = "val/loss"
LEARNING_RATE = "lr-AdamW"                     # LearningRateMonitor: "lr-<optimizer class>"
EPOCH = "epoch"
STEP = "trainer/global_step"

OPTIONAL = frozenset({EXACT_MATCH, *EM_BY_HARDNESS.values(), *EX_BY_DIFFICULTY.values()})


def val_name(summary_key: str) -> str:
    """The logged name of a key of `text2sql.eval.metrics.summarize` ("ex_easy" -> "val/ex_easy")."""
    return f"{VAL}{summary_key}"
