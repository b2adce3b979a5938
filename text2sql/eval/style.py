"""The execution-accuracy rule of each dataset, in one place: Spider's (test-suite semantics) or BIRD's.

Spider (taoyds/test-suite-sql-eval): queries are normalised (``> =``, DISTINCT dropped, first statement only,
``YEAR(CURDATE())``), results are bags of rows, order counts when the gold has ORDER BY, the prediction's
columns may be permuted; levels are Spider's hardness, computed from the gold SQL.
BIRD (bird-bench ``evaluation_ex.py``, ``calculate_ex``): both queries run as written and the prediction is
right when ``set(predicted_rows) == set(gold_rows)``: row order and duplicate rows are ignored, columns are
not permuted, nothing is removed or plugged; levels are the difficulty dev.json states.
"""

from __future__ import annotations

from dataclasses import dataclass

from text2sql.data.bird import DIFFICULTY_LEVELS
from text2sql.errors import UserError
from text2sql.sql.hardness import HARDNESS_LEVELS


@dataclass(frozen=True)
class Style:
    name: str
    levels: tuple[str, ...]  # the per-level breakdown of EX (metrics, tables), in display order
    normalise: bool  # Spider's query-text normalisation before execution
    rule: str  # "denotation" (text2sql.eval.compare.result_eq) or "set" (compare.row_sets_equal)
    derive_levels: bool  # levels come from the gold SQL (Spider hardness), not from the dataset


STYLES = {
    "spider": Style("spider", HARDNESS_LEVELS, normalise=True, rule="denotation", derive_levels=True),
    "bird": Style("bird", DIFFICULTY_LEVELS, normalise=False, rule="set", derive_levels=False),
}
ALL_LEVELS = tuple(level for style in STYLES.values() for level in style.levels)


def get_style(name: str) -> Style:
    if name not in STYLES:
        raise UserError(f"unknown evaluation style {name!r}; choose one of {', '.join(STYLES)}")
    return STYLES[name]
