"""A reward a user might swap in through `objective.reward._target_` (the GRPO tests put tests/ on PYTHONPATH): it
varies between samples even where a smoke-sized model's SQL never runs, so GRPO runs in tests get real gradients."""

from __future__ import annotations

import json
import os
from pathlib import Path

from text2sql.objective.reward import ExecutionReward


class DistinctWords(ExecutionReward):
    """The execution reward plus the number of distinct words of the sampled SQL divided by `scale`."""

    def __init__(self, correct: float = 1.0, executes: float = 0.1, fails: float = 0.0, scale: float = 10.0):
        super().__init__(correct, executes, fails)
        self.scale = scale

    def __call__(self, samples, verdicts) -> list[float]:
        base = super().__call__(samples, verdicts)
        return [b + len(set(s.sql.split())) / self.scale for b, s in zip(base, samples)]


class Recorded(DistinctWords):
    """DistinctWords that also writes every scored sample to `out`/<process id>.jsonl (the call number, the sample,
    its verdict and reward): what the tests check was scored against what, per rank."""

    def __init__(self, out: str, **kwargs):
        super().__init__(**kwargs)
        self.out, self.calls = Path(out), 0

    def __call__(self, samples, verdicts) -> list[float]:
        rewards = super().__call__(samples, verdicts)
        self.out.mkdir(parents=True, exist_ok=True)
        with (self.out / f"{os.getpid()}.jsonl").open("a") as f:
            for s, v, r in zip(samples, verdicts, rewards):
                f.write(json.dumps({"call": self.calls, "db_id": s.db_id, "gold": s.gold, "sql": s.sql,
                                    "completion": s.completion, "status": v.status, "correct": bool(v.correct),
                                    "reward": r}) + "\n")
        self.calls += 1
        return rewards
