"""Scoring predictions against gold: the one public function behind every score the project reports.

`score(examples, predictions, evaluator, matcher)` runs each (gold, prediction) pair through the safe evaluator
(read-only, timeouts) and, when a matcher is given, the official exact set match, and returns an `EpochScore`:
the logged metrics (EX, EX per level, the share of each verdict status, EM and EM per level, interaction and
per-turn scores for multi-turn data), the verdicts and matches themselves and one prediction row per example.
The EX callback scores each epoch with it, `text2sql evaluate` (and so `predict --evaluate`) scores a file with
it, and `EpochScore.rewards` is the execution verdict as a per-example reward. Never imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from text2sql.eval.metric_names import val_name

__all__ = ["Example", "EpochScore", "score"]


@dataclass(frozen=True)
class Example:
    """What scoring needs of one example (the EX callback's `EvalItem` has the same fields)."""

    db_id: str
    gold: str
    question: str | None = None
    index: int | None = None
    level: str | None = None  # the level the dataset states (BIRD's difficulty); None: derived from the gold SQL
    interaction: int | None = None  # multi-turn data: the interaction the turn belongs to


@dataclass
class EpochScore:
    """The scores of one set of predictions (an epoch's, a prediction file's)."""

    metrics: dict[str, float]  # by logged name (text2sql.eval.metric_names): val/execution_accuracy, ...
    rows: list[dict]  # one per example: gold, prediction, verdict, exact_match, turn (predictions/epoch_N.jsonl)
    levels: list[str | None]  # each example's level (hardness or BIRD difficulty)
    verdicts: list | None = None  # text2sql.eval.execute.Verdict per example (None: not executed)
    matches: list | None = None  # text2sql.eval.match.MatchResult per example (None: no exact match asked)
    interactions: list[int] | None = field(default=None, repr=False)

    @property
    def execution_accuracy(self) -> float:
        return self.metrics.get(val_name("execution_accuracy"), 0.0)

    @property
    def rewards(self) -> list[float]:
        """1.0 where the prediction's result equals the gold's, else 0.0 (the execution verdict as a reward)."""
        return [float(v.correct) for v in self.verdicts or []]


def _sql(prediction) -> str:
    return prediction if isinstance(prediction, str) else prediction.sql


def score(examples: Sequence, predictions: Sequence, evaluator=None, matcher=None,
          progress: bool = False) -> EpochScore:
    """Score `predictions` (SQL strings, or `Prediction`s from decoding) against `examples` (objects with the
    fields of `Example`), aligned by position.

    `evaluator`: an open `ExecutionEvaluator` (its database dir, timeout and EX rule), or None for no execution;
    `matcher`: an `ExactMatcher` for the official exact set match, or None for none.
    """
    examples, predictions = list(examples), list(predictions)
    if len(examples) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(examples)} examples")
    triples = [(ex.db_id, ex.gold, _sql(p)) for ex, p in zip(examples, predictions)]
    metrics: dict[str, float] = {}
    verdicts = matches = None
    if evaluator is not None:
        from text2sql.eval.metrics import summarize

        verdicts = evaluator.evaluate(triples, progress=progress, levels=[getattr(ex, "level", None) for ex in examples])
        levels = [v.hardness for v in verdicts]
        summary = {val_name(k): float(v) for k, v in summarize(verdicts).items()
                   if isinstance(v, (int, float)) and k != "count"}
        metrics.update({k: v for k, v in summary.items() if not math.isnan(v)})
    else:
        from text2sql.sql.hardness import hardness

        levels = [getattr(ex, "level", None) or hardness(ex.gold) for ex in examples]
    if matcher is not None:
        from text2sql.eval.metrics import summarize_exact

        matches = matcher.match_all(triples)
        metrics.update({val_name(k): v for k, v in summarize_exact(matches, levels).items()})
    ids = [getattr(ex, "interaction", None) for ex in examples]
    interactions = ids if examples and ids[0] is not None else None
    rows = _rows(examples, predictions, verdicts, matches, interactions)
    if interactions is not None:  # multi-turn: interaction match and per-turn-position accuracy
        from text2sql.eval.interaction import interaction_scores

        if verdicts is not None:
            metrics.update(interaction_scores([v.correct for v in verdicts], interactions, "ex"))
        if matches is not None:
            metrics.update(interaction_scores([m.exact for m in matches], interactions, "em"))
    return EpochScore(metrics, rows, levels, verdicts, matches, interactions)


def _rows(examples, predictions, verdicts, matches, interactions) -> list[dict]:
    """One row per example, in the layout of predictions/epoch_N.jsonl."""
    rows = []
    for k, (ex, p) in enumerate(zip(examples, predictions)):
        row = {"index": getattr(ex, "index", k), "db_id": ex.db_id, "question": getattr(ex, "question", None),
               "gold": ex.gold, "prediction": _sql(p)}
        if verdicts is not None:
            v = verdicts[k]
            row.update(status=v.status, hardness=v.hardness, correct=v.correct, error=v.error)
        if not isinstance(p, str):
            row.update(decoding=p.strategy, candidates=p.candidates)
        if matches is not None:
            row["exact_match"] = matches[k].exact
        rows.append(row)
    if interactions is not None:
        from text2sql.eval.interaction import turn_positions

        for row, n, turn in zip(rows, interactions, turn_positions(interactions)):
            row.update(interaction=n, turn=turn)
    return rows
