"""Scoring on a built test suite (`text2sql testsuite build` makes one), for callers other than `text2sql evaluate
--test-suite` (the per-epoch EX callback with `eval.test_suite`, `predict --evaluate`): a prediction is right only
when it matches gold on every database of its folder, by the dataset's own rule (Spider's or BIRD's). It is the evaluator in test-suite mode, with the suite's folder and rule
checked first.

    scorer = SuiteScorer(cfg.eval.test_suite, style=dataset.eval_style)       # once per run: gold results cached
    metrics["val/test_suite_accuracy"] = scorer.accuracy(items, levels)         # items: (db_id, gold, prediction)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from text2sql.errors import UserError

__all__ = ["SuiteScorer", "suite_db_dir", "suite_verdicts"]


def suite_db_dir(suite: str | Path) -> Path:
    """The folder of `<db_id>/` suites: `suite` itself or its `database/` (what `testsuite build --out` writes)."""
    root = Path(suite).expanduser()
    if (root / "database").is_dir():
        return root / "database"
    if root.is_dir() and any(p.is_dir() for p in root.iterdir()):
        return root
    raise UserError(f"test suite not found: {root} (expected the output of `text2sql testsuite build`: "
                    "database/<db_id>/<db_id>.sqlite and its neighbours)")


def _manifest_style(db_dir: Path) -> str | None:
    path = db_dir.parent / "manifest.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("style")
    except (OSError, ValueError, AttributeError):
        return None


class SuiteScorer:
    """An evaluator in test-suite mode over one suite, kept for a run (gold results are cached between epochs)."""

    def __init__(self, suite: str | Path, style: str = "spider", timeout: float = 30.0,
                 workers: int | None = None) -> None:
        from text2sql.eval.execute import ExecutionEvaluator

        self.db_dir = suite_db_dir(suite)
        built = _manifest_style(self.db_dir)
        if built is not None and built != style:
            raise UserError(f"test suite {self.db_dir.parent} was built with {built}'s rule, the dataset is scored by "
                            f"{style}'s: build the suite from this dataset")
        self.evaluator = ExecutionEvaluator(self.db_dir, timeout=timeout, workers=workers, test_suite=True,
                                            style=style)

    def verdicts(self, items: Sequence[tuple[str, str, str]], levels: Sequence[str | None] | None = None):
        """One `Verdict` per (db_id, gold, prediction); `correct` only when every database of the suite agrees."""
        return self.evaluator.evaluate(items, levels=levels)

    def accuracy(self, items: Sequence[tuple[str, str, str]], levels: Sequence[str | None] | None = None) -> float:
        verdicts = self.verdicts(items, levels)
        return sum(v.correct for v in verdicts) / len(verdicts) if verdicts else 0.0

    def close(self) -> None:
        self.evaluator.close()

    def __enter__(self) -> "SuiteScorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def suite_verdicts(suite: str | Path, items: Sequence[tuple[str, str, str]], style: str = "spider",
                   levels: Sequence[str | None] | None = None, timeout: float = 30.0, workers: int | None = None):
    """One-shot `SuiteScorer(...).verdicts(items, levels)`."""
    with SuiteScorer(suite, style, timeout, workers) as scorer:
        return scorer.verdicts(items, levels)
