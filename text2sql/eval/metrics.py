"""Aggregate verdicts into the numbers we log and print (never imports torch)."""

from __future__ import annotations

from typing import Iterable, Mapping

from text2sql.eval.execute import STATUSES
from text2sql.sql.hardness import HARDNESS_LEVELS
from text2sql.eval.style import ALL_LEVELS

__all__ = ["summarize", "summarize_exact", "table_rows"]


def _get(v, name):
    return v[name] if isinstance(v, Mapping) else getattr(v, name)


def summarize(verdicts: Iterable) -> dict[str, float]:
    """Keys: ``execution_accuracy``, ``ex_<level>`` for each level (Spider hardness or BIRD difficulty) with at
    least one example,
    ``status/<status>`` (share of each status, all of them), ``count``.

    Accepts :class:`~text2sql.eval.execute.Verdict` objects or dicts with the same fields. With no verdicts,
    accuracy and shares are 0.0 (never NaN).
    """
    verdicts = list(verdicts)
    n = len(verdicts)
    out: dict[str, float] = {}
    correct = sum(bool(_get(v, "correct")) for v in verdicts)
    out["execution_accuracy"] = correct / n if n else 0.0
    for level in ALL_LEVELS:
        sub = [v for v in verdicts if _get(v, "hardness") == level]
        if sub:
            out[f"ex_{level}"] = sum(bool(_get(v, "correct")) for v in sub) / len(sub)
    for status in STATUSES:
        k = sum(_get(v, "status") == status for v in verdicts)
        out[f"status/{status}"] = k / n if n else 0.0
    out["count"] = float(n)
    return out


def table_rows(verdicts: Iterable, levels: tuple[str, ...] = HARDNESS_LEVELS) -> list[tuple[str, int, float | None]]:
    """(level, count, EX) for each level (default easy/medium/hard/extra) and all, as the official table prints
    them; EX is None for an empty level (printed as "—": an empty level has no accuracy, 0.000 would read as a
    failure)."""
    verdicts = list(verdicts)
    rows = []
    for level in (*levels, "all"):
        sub = verdicts if level == "all" else [v for v in verdicts if _get(v, "hardness") == level]
        ex = sum(bool(_get(v, "correct")) for v in sub) / len(sub) if sub else None
        rows.append((level, len(sub), ex))
    return rows


def summarize_exact(matches: Iterable, levels: Iterable[str]) -> dict[str, float]:
    """Keys: ``exact_match`` (official exact set match) and ``em_<level>`` for each hardness level with at least
    one example; ``matches`` are :class:`~text2sql.eval.match.MatchResult` objects aligned with ``levels``."""
    pairs = list(zip((bool(m.exact) for m in matches), levels))
    out = {"exact_match": sum(e for e, _ in pairs) / len(pairs) if pairs else 0.0}
    for level in ALL_LEVELS:
        sub = [e for e, lv in pairs if lv == level]
        if sub:
            out[f"em_{level}"] = sum(sub) / len(sub)
    return out
