"""Aggregate verdicts into the numbers we log and print (never imports torch)."""

from __future__ import annotations

from typing import Iterable, Mapping

from text2sql.eval.execute import STATUSES
from text2sql.eval.hardness import HARDNESS_LEVELS

__all__ = ["summarize", "table_rows"]


def _get(v, name):
    return v[name] if isinstance(v, Mapping) else getattr(v, name)


def summarize(verdicts: Iterable) -> dict[str, float]:
    """Keys: ``execution_accuracy``, ``ex_<level>`` for each hardness level with at least one example,
    ``status/<status>`` (share of each status, all of them), ``count``.

    Accepts :class:`~text2sql.eval.execute.Verdict` objects or dicts with the same fields. With no verdicts,
    accuracy and shares are 0.0 (never NaN).
    """
    verdicts = list(verdicts)
    n = len(verdicts)
    out: dict[str, float] = {}
    correct = sum(bool(_get(v, "correct")) for v in verdicts)
    out["execution_accuracy"] = correct / n if n else 0.0
    for level in HARDNESS_LEVELS:
        sub = [v for v in verdicts if _get(v, "hardness") == level]
        if sub:
            out[f"ex_{level}"] = sum(bool(_get(v, "correct")) for v in sub) / len(sub)
    for status in STATUSES:
        k = sum(_get(v, "status") == status for v in verdicts)
        out[f"status/{status}"] = k / n if n else 0.0
    out["count"] = float(n)
    return out


def table_rows(verdicts: Iterable) -> list[tuple[str, int, float | None]]:
    """(level, count, EX) for easy/medium/hard/extra/all, as the official table prints them; EX is None for an
    empty level (printed as "—": an empty level has no accuracy, 0.000 would read as a failure)."""
    verdicts = list(verdicts)
    rows = []
    for level in (*HARDNESS_LEVELS, "all"):
        sub = verdicts if level == "all" else [v for v in verdicts if _get(v, "hardness") == level]
        ex = sum(bool(_get(v, "correct")) for v in sub) / len(sub) if sub else None
        rows.append((level, len(sub), ex))
    return rows
