"""A reward a user might swap in through `objective.reward._target_` (the GRPO tests put tests/ on PYTHONPATH): it
varies between samples even where a smoke-sized model's SQL never runs, so GRPO runs in tests get real gradients."""

from __future__ import annotations

from text2sql.objective.reward import ExecutionReward


class DistinctWords(ExecutionReward):
    """The execution reward plus the number of distinct words of the sampled SQL divided by `scale`."""

    def __init__(self, correct: float = 1.0, executes: float = 0.1, fails: float = 0.0, scale: float = 10.0):
        super().__init__(correct, executes, fails)
        self.scale = scale

    def __call__(self, samples, verdicts) -> list[float]:
        base = super().__call__(samples, verdicts)
        return [b + len(set(s.sql.split())) / self.scale for b, s in zip(base, samples)]
