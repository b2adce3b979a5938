"""Execution accuracy after every (n-th) validation epoch, logged to every logger and saved to the run dir.

The callback generates SQL for the dev split (or a fixed-seed subset) with the model being trained, runs
prediction and gold on the example's SQLite database through the safe evaluator (read-only, timeouts,
gold results cached for the whole run) and logs `val/execution_accuracy`, EX per level (Spider hardness, or BIRD
difficulty with BIRD's rule for a BIRD dataset) and the share of each verdict status. Under several ranks each
rank generates its shard (padded so all ranks make the same generate calls, in lock-step under ZeRO-3), rank 0
gathers the predictions in dev order, scores (`text2sql.eval.score.score`) and broadcasts the metrics, so EX is
the one-rank EX of the same weights. Every rank hands the metrics to the run's record (`record`, train.py's
`EpochLog`: duck-typed, eval/ imports nothing from job/ or tracking/), rank 0 with the `EpochScore` and its
prediction rows, which the record writes and shows to its readers (W&B).
"""

from __future__ import annotations

import logging

import lightning.pytorch as pl
from text2sql.config.decoding import Decoding
from text2sql.eval.decoding import Prediction, decode, executor
from text2sql.eval.progress import progress_bar
from text2sql.eval.metric_names import EX as MONITOR
from text2sql.eval.metric_names import TEST_SUITE
from text2sql.eval.score import EpochScore, score

log = logging.getLogger(__name__)


def lockstep_shard(items: list, rank: int, world: int) -> tuple[list, int]:
    """Rank `rank`'s share of `items` (every world-th, from rank) padded with copies to ceil(n / world) items.

    Returns (shard, real): the first `real` entries are this rank's examples, the rest padding. Every rank thus
    runs the same number of generate calls, which ZeRO-3 needs (each forward gathers weights from all ranks).
    """
    shard = items[rank::world]
    real = len(shard)
    size = -(-len(items) // world)
    padding = [items[(rank + i) % len(items)] for i in range(size - real)]
    return shard + padding, real


def needs_synced_generation(trainer) -> bool:
    """Whether every forward is a collective (weights sharded: DeepSpeed ZeRO-3, FSDP), so ranks must generate
    in lock-step until all of them are done (`synced_gpus`), even those that hit EOS early."""
    strategy = trainer.strategy
    return bool(getattr(strategy, "zero_stage_3", False)) or "FSDP" in type(strategy).__name__


def is_eval_epoch(epoch: int, every_n_epochs: int) -> bool:
    """Whether the EX callback scores `epoch` (0-based): every `eval.every_n_epochs`-th epoch."""
    return (epoch + 1) % max(every_n_epochs, 1) == 0

class ExecutionAccuracyCallback(pl.Callback):
    def __init__(
        self,
        db_dir: str | None = None,
        every_n_epochs: int = 1,
        limit: int | None = None,
        seed: int = 0,
        batch_size: int = 16,
        max_new_tokens: int = 128,
        timeout: float = 30.0,
        workers: int | None = None,
        exact_match: bool = True,
        before_training: bool = False,
        decoding=None,
        record=None,
        test_suite: str | None = None,
    ):
        self.db_dir, self.every_n_epochs, self.limit, self.seed = db_dir, every_n_epochs, limit, seed
        self.batch_size, self.max_new_tokens, self.timeout, self.workers = batch_size, max_new_tokens, timeout, workers
        self.exact_match = exact_match  # also log val/exact_match (official EM) and val/em_<level>
        self.before_training = before_training  # score the untrained model first (epoch -1, the baseline)
        self.decoding = Decoding.from_config(decoding)  # eval.decoding: greedy unless asked otherwise
        self.record = record  # the run's EpochLog (add_score, last_scored); None: scores are only logged
        self.test_suite = test_suite  # eval.test_suite: also val/test_suite_accuracy on that suite (eval/suite.py)
        self._matcher = None
        self._evaluator = None
        self._suite = None
        self._items = None

    # -- lifecycle -------------------------------------------------------------------------------------------
    def on_fit_start(self, trainer, pl_module):
        """Warn at the start when some scored dev examples have no database: each caps execution accuracy."""
        if not trainer.is_global_zero or getattr(trainer.datamodule, "dev_records", None) is None:
            return
        from text2sql.data.datamodule import eval_subset
        from text2sql.eval.execute import missing_databases_warning

        dev = trainer.datamodule.dev_records  # the examples this run scores: a missing database caps its EX
        scored = [dev[i]["db_id"] for i in eval_subset(len(dev), self.limit, self.seed)]
        # the dataset's own dev databases (BIRD keeps them in dev/dev_databases/, Spider in database/)
        warning = missing_databases_warning(self.db_dir or trainer.datamodule.dataset.db_dir("dev"), scored)
        if warning:
            log.warning("%s", warning)

    def teardown(self, trainer, pl_module, stage):
        if self._evaluator is not None:
            self._evaluator.close()
            self._evaluator = None
        if self._suite is not None:
            self._suite.close()
            self._suite = None
        self._matcher = None

    def evaluator(self, dataset):
        """The run's evaluator (one per run: the gold results it caches never change between epochs); default:
        the dataset's dev databases and its EX rule."""
        if self._evaluator is None:
            from text2sql.eval.execute import ExecutionEvaluator

            self._evaluator = ExecutionEvaluator(self.db_dir or dataset.db_dir("dev"), timeout=self.timeout,
                                                 workers=self.workers, style=dataset.eval_style)
        return self._evaluator

    def suite(self, dataset):
        """The run's scorer on `eval.test_suite` (gold results cached for the run), or None without one."""
        if self.test_suite and self._suite is None:
            from text2sql.eval.suite import SuiteScorer

            self._suite = SuiteScorer(self.test_suite, style=dataset.eval_style, timeout=self.timeout,
                                      workers=self.workers)
        return self._suite

    def matcher(self, dataset):
        """The run's exact-set matcher (gold parses cached for the run); None where EM is off or not the dataset's
        metric (exact set match is Spider's: its parser and tables.json; BIRD reports execution accuracy only)."""
        if not self.exact_match or dataset.eval_style != "spider":
            return None
        if self._matcher is None:
            from text2sql.eval.match import ExactMatcher

            self._matcher = ExactMatcher(dataset.tables_path("dev"), self.db_dir or dataset.db_dir("dev"))
        return self._matcher

    # -- the per-epoch work ----------------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.before_training or trainer.global_step > 0:  # a resumed run has its baseline already
            return
        metrics = self._evaluate(trainer, pl_module, epoch=-1)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({**metrics, "epoch": -1}, step=0)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not is_eval_epoch(trainer.current_epoch, self.every_n_epochs):
            return
        metrics = self._evaluate(trainer, pl_module, trainer.current_epoch)
        for name, value in metrics.items():
            # the same value on every rank: the mean over ranks is exact (and Lightning does not warn)
            pl_module.log(name, value, prog_bar=name == MONITOR, sync_dist=True)

    def _evaluate(self, trainer, pl_module, epoch: int) -> dict[str, float]:
        """Generate on every rank, score on rank 0, return the metrics on every rank (epoch -1: before training)."""
        if self._items is None:
            self._items = trainer.datamodule.eval_items(self.limit, self.seed)
        preds = self._decode(trainer, pl_module, epoch)
        scored, questions = None, None
        if trainer.is_global_zero:
            dataset = trainer.datamodule.dataset
            scored = score(self._items, preds, self.evaluator(dataset), self.matcher(dataset))
            if self.suite(dataset) is not None:  # right on every database of the suite, not only on the original
                suite = self._suite.verdicts([(r["db_id"], r["gold"], r["prediction"]) for r in scored.rows],
                                             levels=[r["hardness"] for r in scored.rows])
                for row, verdict in zip(scored.rows, suite):
                    row["test_suite"] = verdict.correct
                scored.metrics[TEST_SUITE] = sum(v.correct for v in suite) / len(suite) if suite else 0.0
            self._log_line(epoch, scored)
            # BIRD's per-difficulty EX of a subset is re-scored with the subset's questions (evaluate --questions)
            questions = dataset.split_files("dev") if dataset.eval_style == "bird" else None
        metrics = trainer.strategy.broadcast(scored.metrics if scored is not None else None, src=0)
        if self.record is not None:
            self.record.add_score(epoch, metrics, scored, questions=questions)
        return metrics

    def _log_line(self, epoch: int, scored: EpochScore) -> None:
        """EX, its change since the last evaluation (the baseline, the epoch before, or the one before a resume),
        and EX per level."""
        ex = scored.execution_accuracy
        last = self.record.last_scored(epoch) if self.record is not None else None
        levels = " ".join(f"{k[7:]} {v:.2f}" for k, v in scored.metrics.items() if k.startswith("val/ex_"))
        change = "first"
        if last is not None:
            change = f"{ex - last[MONITOR]:+.3f}" + (" over the baseline" if last["epoch"] == -1 else
                                                    "" if last["epoch"] == epoch - 1 else f" since epoch {last['epoch']}")
        log.info("%s: execution accuracy %.3f (%s) on %d dev examples%s",
                 "before training" if epoch < 0 else f"epoch {epoch}", ex, "baseline" if epoch < 0 else change,
                 len(scored.rows), f"; {levels}" if levels else "")

    def _decode(self, trainer, pl_module, epoch: int) -> list[Prediction]:
        """Every rank runs the same `decode`: generation is sharded over ranks and gathered in dev order, candidates
        run on rank 0 (its evaluator) and the results are broadcast, so every rank takes the same branches."""
        rank, world = trainer.global_rank, trainer.world_size
        synced = world > 1 and needs_synced_generation(trainer)

        def generate(indices: list[int], mode: str):
            shard, real = lockstep_shard(indices, rank, world)
            cands = self._generate(trainer, pl_module, shard, mode, synced, epoch,
                                   show=mode == self.decoding.first_mode)
            mine = list(zip(shard[:real], cands[:real]))  # the padding copies are dropped
            gathered = [mine]
            if world > 1:
                import torch.distributed as dist

                gathered = [None] * world
                dist.all_gather_object(gathered, mine)
            by_index = {i: c for part in gathered for i, c in part}
            return [by_index[i] for i in indices]

        def execute(pairs):
            results = executor(self.evaluator(trainer.datamodule.dataset))(pairs) if trainer.is_global_zero else None
            return trainer.strategy.broadcast(results, src=0) if world > 1 else results

        db_files = None
        if self.decoding.executes:
            db_files = [self.evaluator(trainer.datamodule.dataset).db_file(it.db_id) for it in self._items] \
                if trainer.is_global_zero else None
            db_files = trainer.strategy.broadcast(db_files, src=0) if world > 1 else db_files
        return decode(len(self._items), db_files or [], self.decoding, generate, execute)

    def _generate(self, trainer, pl_module, indices, mode, synced, epoch: int, show: bool):
        from text2sql.eval.candidates import generate_candidates

        tokenizer = trainer.datamodule.tokenizer
        show = show and trainer.is_global_zero and trainer.progress_bar_callback is not None
        with progress_bar(f"generating SQL (epoch {epoch})", len(indices), show,
                                 transient=True) as progress:
            return generate_candidates(pl_module.model, tokenizer, [self._items[i].source_ids for i in indices], mode,
                                       self.decoding, batch_size=self.batch_size, max_new_tokens=self.max_new_tokens,
                                       progress=progress, synced_gpus=synced)
