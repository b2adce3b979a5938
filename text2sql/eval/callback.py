"""Execution accuracy after every (n-th) validation epoch, logged to every logger and saved to the run dir.

The callback generates SQL for the dev split (or a fixed-seed subset) with the model being trained, runs
prediction and gold on the example's SQLite database through the safe evaluator (read-only, timeouts,
gold results cached for the whole run) and logs `val/execution_accuracy`, EX per level (Spider hardness, or BIRD
difficulty with BIRD's rule for a BIRD dataset) and the share of each verdict status. Under several ranks each
rank generates its shard (padded so all ranks make the same generate calls, in lock-step under ZeRO-3), rank 0
gathers the predictions in dev order, scores, writes and broadcasts the metrics, so EX is the one-rank EX of the
same weights.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import lightning.pytorch as pl
from text2sql.eval.decoding import Decoding, Prediction, decode, executor
from text2sql.eval.generate import generation_progress
from text2sql.eval.metric_names import EX as MONITOR
from text2sql.eval.metric_names import EXAMPLES_TABLE

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



def _one_line(sql: str) -> str:
    return " ".join(sql.split())


def is_eval_epoch(epoch: int, every_n_epochs: int) -> bool:
    """Whether the EX callback scores `epoch` (0-based): every `eval.every_n_epochs`-th epoch."""
    return (epoch + 1) % max(every_n_epochs, 1) == 0

class ExecutionAccuracyCallback(pl.Callback):
    def __init__(
        self,
        db_dir: str | None = None,
        output_dir: str | None = None,
        every_n_epochs: int = 1,
        limit: int | None = None,
        seed: int = 0,
        batch_size: int = 16,
        max_new_tokens: int = 128,
        timeout: float = 30.0,
        workers: int | None = None,
        table_rows: int = 100,
        exact_match: bool = True,
        before_training: bool = False,
        decoding=None,
    ):
        self.db_dir, self.every_n_epochs, self.limit, self.seed = db_dir, every_n_epochs, limit, seed
        self.batch_size, self.max_new_tokens, self.timeout, self.workers = batch_size, max_new_tokens, timeout, workers
        self.output_dir = Path(output_dir) if output_dir else None
        self.table_rows = table_rows
        self.exact_match = exact_match  # also log val/exact_match (official EM) and val/em_<level>
        self.before_training = before_training  # score the untrained model first (epoch -1, the baseline)
        self.decoding = Decoding.from_config(decoding)  # eval.decoding: greedy unless asked otherwise
        self._matcher = None
        self._evaluator = None
        self._items = None
        self.history: list[dict] = []

    # -- lifecycle -------------------------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage):
        for logger in trainer.loggers:  # W&B: the run summary keeps the best EX, not the last
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "define_metric") and trainer.is_global_zero:
                experiment.define_metric(MONITOR, summary="max")

    def on_fit_start(self, trainer, pl_module):
        if trainer.ckpt_path and self.output_dir is not None and not self.history:
            # resumed (the checkpoint path is known from this hook on): the first new EX line shows the change
            # from the last evaluated epoch before the stop, not "(first)"
            from text2sql.job.run_dir import RunDir

            self.history = [r for r in RunDir(self.output_dir).history() if MONITOR in r]
        self._warn_missing_databases(trainer)

    def _warn_missing_databases(self, trainer) -> None:
        if not trainer.is_global_zero or getattr(trainer.datamodule, "dev_records", None) is None:
            return
        from text2sql.data.datamodule import eval_subset
        from text2sql.eval.execute import missing_databases_warning

        dev = trainer.datamodule.dev_records  # the examples this run scores: a missing database caps its EX
        scored = [dev[i]["db_id"] for i in eval_subset(len(dev), self.limit, self.seed)]
        warning = missing_databases_warning(self.db_dir or trainer.datamodule.dataset.root / "database", scored)
        if warning:
            log.warning("%s", warning)

    def teardown(self, trainer, pl_module, stage):
        if self._evaluator is not None:
            self._evaluator.close()
            self._evaluator = None

    def _evaluator_for_run(self, trainer):
        if self._evaluator is None:  # one per run: the gold results it caches never change between epochs
            from text2sql.eval.execute import ExecutionEvaluator

            dataset = trainer.datamodule.dataset  # default: the trained dataset's dev databases and its EX rule
            self._evaluator = ExecutionEvaluator(self.db_dir or dataset.db_dir("dev"), timeout=self.timeout,
                                                 workers=self.workers, style=dataset.eval_style)
        return self._evaluator

    # -- the per-epoch work ----------------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.before_training or trainer.global_step > 0:  # a resumed run has its baseline already
            return
        metrics = self._evaluate(trainer, pl_module, epoch=-1)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({**metrics, "epoch": -1}, step=0)
            if self.output_dir is not None:
                from text2sql.job.run_dir import RunDir

                RunDir(self.output_dir).record_baseline({"epoch": -1, **metrics})

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
        metrics = self._score(trainer, preds, epoch) if trainer.is_global_zero else None
        return trainer.strategy.broadcast(metrics, src=0)

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
            results = executor(self._evaluator_for_run(trainer))(pairs) if trainer.is_global_zero else None
            return trainer.strategy.broadcast(results, src=0) if world > 1 else results

        db_files = None
        if self.decoding.executes:
            db_files = [self._evaluator_for_run(trainer).db_file(it.db_id) for it in self._items] \
                if trainer.is_global_zero else None
            db_files = trainer.strategy.broadcast(db_files, src=0) if world > 1 else db_files
        return decode(len(self._items), db_files or [], self.decoding, generate, execute)

    def _generate(self, trainer, pl_module, indices, mode, synced, epoch: int, show: bool):
        from text2sql.eval.candidates import generate_candidates

        tokenizer = trainer.datamodule.tokenizer
        show = show and trainer.is_global_zero and trainer.progress_bar_callback is not None
        with generation_progress(f"generating SQL (epoch {epoch})", len(indices), show,
                                 transient=True) as progress:
            return generate_candidates(pl_module.model, tokenizer, [self._items[i].source_ids for i in indices], mode,
                                       self.decoding, batch_size=self.batch_size, max_new_tokens=self.max_new_tokens,
                                       progress=progress, synced_gpus=synced)

    def _score(self, trainer, decoded: list[Prediction], epoch: int) -> dict[str, float]:
        from text2sql.eval.metrics import summarize, summarize_exact

        preds = [d.sql for d in decoded]
        verdicts = self._evaluator_for_run(trainer).evaluate(
            [(it.db_id, it.gold, p) for it, p in zip(self._items, preds)], levels=[it.level for it in self._items])
        summary = summarize(verdicts)
        # exact set match is Spider's metric (its parser and tables.json); BIRD reports execution accuracy only
        spider = trainer.datamodule.dataset.eval_style == "spider"
        matches = self._match(trainer, preds, verdicts) if self.exact_match and spider else None
        metrics = {f"val/{k}": float(v) for k, v in summary.items() if isinstance(v, (int, float)) and k != "count"}
        metrics = {k: v for k, v in metrics.items() if not math.isnan(v)}
        rows = [
            {"index": it.index, "db_id": it.db_id, "question": it.question, "gold": it.gold, "prediction": p,
             "status": v.status, "hardness": v.hardness, "correct": v.correct, "error": v.error,
             "decoding": d.strategy, "candidates": d.candidates}
            for it, p, v, d in zip(self._items, preds, verdicts, decoded)
        ]
        if matches is not None:
            for row, m in zip(rows, matches):
                row["exact_match"] = m.exact
            metrics.update({f"val/{k}": v for k, v in summarize_exact(matches, [v.hardness for v in verdicts]).items()})
        if self._items and self._items[0].interaction is not None:  # multi-turn: interaction match, per turn
            metrics.update(self._interaction_metrics(rows, verdicts, matches))
        self._save(epoch, rows)
        self._log_table(trainer, epoch, rows)
        ex, prev = metrics.get(MONITOR, 0.0), (self.history[-1].get(MONITOR) if self.history else None)
        levels = " ".join(f"{k[7:]} {v:.2f}" for k, v in metrics.items() if k.startswith("val/ex_"))
        change = "first"
        if prev is not None:  # the previous evaluation: the baseline, the epoch before, or the one before a resume
            last = self.history[-1]["epoch"]
            change = f"{ex - prev:+.3f}" + (" over the baseline" if last == -1 else "" if last == epoch - 1
                                            else f" since epoch {last}")
        log.info("%s: execution accuracy %.3f (%s) on %d dev examples%s",
                 "before training" if epoch < 0 else f"epoch {epoch}", ex, "baseline" if epoch < 0 else change,
                 len(rows), f"; {levels}" if levels else "")
        self.history.append({"epoch": epoch, **metrics})
        return metrics

    def _interaction_metrics(self, rows: list[dict], verdicts, matches) -> dict[str, float]:
        from text2sql.eval.interaction import interaction_scores, turn_positions

        ids = [it.interaction for it in self._items]
        for row, n, turn in zip(rows, ids, turn_positions(ids)):
            row.update(interaction=n, turn=turn)
        out = interaction_scores([v.correct for v in verdicts], ids, "ex")
        if matches is not None:
            out.update(interaction_scores([m.exact for m in matches], ids, "em"))
        return out

    def _match(self, trainer, preds: list[str], verdicts) -> list:
        if self._matcher is None:  # gold parses are cached for the run, like gold results
            from text2sql.eval.match import ExactMatcher

            dataset = trainer.datamodule.dataset
            self._matcher = ExactMatcher(dataset.tables_path("dev"), self.db_dir or dataset.db_dir("dev"))
        return self._matcher.match_all([(it.db_id, it.gold, p) for it, p in zip(self._items, preds)])

    def _save(self, epoch: int, rows: list[dict]) -> None:
        if self.output_dir is None:
            return
        out = self.output_dir / "predictions"
        out.mkdir(parents=True, exist_ok=True)
        with open(out / f"epoch_{epoch}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        # predictions and the gold of the same examples (Spider's `SQL<TAB>db_id`): `text2sql evaluate` re-scores the
        # epoch; multi-turn data in the official layout, a blank line after each interaction
        preds = [r["prediction"] for r in rows]
        golds = [f"{_one_line(r['gold'])}\t{r['db_id']}" for r in rows]
        if rows and "interaction" in rows[0]:
            from text2sql.eval.interaction import pred_lines, sessions_text

            ids = [r["interaction"] for r in rows]
            text, gold_text = pred_lines(preds, ids), sessions_text(golds, ids)
        else:
            text, gold_text = ("".join(line + "\n" for line in lines) for lines in (preds, golds))
        (out / f"epoch_{epoch}_pred.sql").write_text(text, encoding="utf-8")
        (out / f"epoch_{epoch}_gold.sql").write_text(gold_text, encoding="utf-8")

    def _log_table(self, trainer, epoch: int, rows: list[dict]) -> None:
        for logger in trainer.loggers:
            if type(logger).__name__ != "WandbLogger":
                continue
            import wandb

            columns = ["epoch", "db_id", "question", "gold", "prediction", "status", "hardness", "decoding",
                       "candidates"]
            columns += ["exact_match"] if rows and "exact_match" in rows[0] else []
            table = wandb.Table(columns=columns)
            for r in rows[: self.table_rows]:
                table.add_data(epoch, *(r[c] for c in columns[1:]))
            logger.experiment.log({EXAMPLES_TABLE: table, "trainer/global_step": trainer.global_step})
