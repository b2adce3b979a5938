"""The reward: each sampled SQL run through the evaluator's guard (read-only, timeout, writes refused) and compared
with the gold result by the dataset's rule (Spider's or BIRD's, as `ExecutionEvaluator(style=...)` says).

`objective.reward` is a Hydra `_target_`: any callable `(samples, verdicts) -> list[float]` can replace
:class:`ExecutionReward`. `verdicts` are the evaluator's, computed once per batch (the evaluator caches each gold
result for the run), so a custom reward needs no database access of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

NO_LEVEL = "-"  # a stated level: the evaluator then derives no hardness (rewards need none)


@dataclass(frozen=True)
class Sample:
    """One sampled completion of one training prompt."""

    db_id: str
    gold: str
    sql: str          # the SQL extracted from the completion (what is executed)
    completion: str   # the decoded completion as generated


class ExecutionReward:
    """1 for a correct result (`correct`), `executes` for SQL that runs but returns another result, `fails` for
    everything else (syntax or execution error, timeout, refused write, empty). Arctic-Text2SQL-R1's reward
    (Yao et al. 2025, arXiv:2505.20315, Sec. 3): 1 / 0.1 / 0."""

    def __init__(self, correct: float = 1.0, executes: float = 0.1, fails: float = 0.0):
        self.correct, self.executes, self.fails = float(correct), float(executes), float(fails)

    def __call__(self, samples: Sequence[Sample], verdicts: Sequence) -> list[float]:
        return [self.correct if v.correct else self.executes if v.status == "wrong_result" else self.fails
                for v in verdicts]


def execute_samples(evaluator, samples: Sequence[Sample]) -> list:
    """The evaluator's verdict for every sample (its SQL against its example's database, compared with gold)."""
    return evaluator.evaluate([(s.db_id, s.gold, s.sql) for s in samples], levels=[NO_LEVEL] * len(samples))
