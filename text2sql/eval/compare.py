"""Denotation comparison with the semantics of the official Spider test-suite evaluator.

The rules follow taoyds/test-suite-sql-eval (``exec_eval.py`` / ``parse.py``); the code is our own:

* results are *bags* of rows; row order matters only when the gold query contains ``order by``;
* the prediction's columns may be permuted: two results are equal when *some* bijection of columns makes
  them equal (the official search, restricted to candidate columns whose values fit — here the restriction
  uses the complete column multisets, which only removes permutations that cannot match, so the verdict is
  the same as the official one while the search is deterministic and much smaller);
* two empty results are equal (whatever their columns);
* ``> =``, ``< =``, ``! =`` are normalised, ``DISTINCT`` is dropped from both queries unless ``keep_distinct``;
  the official DISTINCT removal goes through sqlparse and keeps only the *first statement*, so in the default
  mode ``SELECT ...; ;`` or ``SELECT ...; DROP ...`` is judged by its first statement alone, while with
  ``keep_distinct`` the whole string is executed (and SQLite refuses more than one statement);
* optional *plug-value*: the gold query's literal values are plugged into the prediction's value slots, and the
  prediction is accepted if any variant matches (the official enumeration is unbounded; ours is capped).

Nothing here touches a database: see :mod:`text2sql.eval.execute`.
"""

from __future__ import annotations

import itertools
import re
import time
from collections import Counter
from typing import Iterator, Sequence

__all__ = [
    "ComparisonTimeout",
    "postprocess",
    "remove_distinct",
    "first_statement",
    "EMPTY_RESULT_SQL",
    "replace_cur_year",
    "order_matters",
    "result_eq",
    "row_sets_equal",
    "plug_value_variants",
    "MAX_PLUG_VARIANTS",
]

# Plug-value: the official code enumerates len(gold_values) ** n_slots variants; we stop after this many.
MAX_PLUG_VARIANTS = 64


class ComparisonTimeout(Exception):
    """The column-permutation search ran past its deadline (pathological, e.g. many identical columns)."""


# --------------------------------------------------------------------------------------------- query text


def postprocess(query: str) -> str:
    """Official normalisation: ``> =`` -> ``>=``, ``< =`` -> ``<=``, ``! =`` -> ``!=``."""
    return query.replace("> =", ">=").replace("< =", "<=").replace("! =", "!=")


_CUR_YEAR = re.compile(r"YEAR\s*\(\s*CURDATE\s*\(\s*\)\s*\)\s*", re.IGNORECASE)


def replace_cur_year(query: str) -> str:
    """Official: ``YEAR(CURDATE())`` (MySQL) is replaced by the constant 2020 before execution."""
    return _CUR_YEAR.sub("2020", query)


_QUOTED = re.compile(r"""('(?:[^']|'')*'|"(?:[^"]|"")*"|`[^`]*`|\[[^\]]*\])""")


def _split_quoted(sql: str) -> list[tuple[bool, str]]:
    """Split SQL into (is_quoted, text) chunks; quoted = '...', "...", `...` or [...] (doubled quotes kept)."""
    parts = _QUOTED.split(sql)
    return [(k % 2 == 1, part) for k, part in enumerate(parts) if part]


_DISTINCT = re.compile(r"(?<![\w$])distinct(?![\w$])", re.IGNORECASE)


def remove_distinct(sql: str) -> str:
    """Drop every ``DISTINCT`` keyword outside quotes (official ``parse.remove_distinct``)."""
    return "".join(text if quoted else _DISTINCT.sub("", text) for quoted, text in _split_quoted(sql))


# Executing a statement with no SQL in it (";", a comment) gives the official tool an empty result.
EMPTY_RESULT_SQL = "SELECT NULL WHERE 0"


def first_statement(sql: str) -> str:
    """The first statement as sqlparse splits it (official ``remove_distinct`` keeps ``sqlparse.parse(s)[0]``),
    with its ``;`` and any comment sqlparse attaches; :data:`EMPTY_RESULT_SQL` when it holds no SQL."""
    if ";" not in sql:  # one statement: skip sqlparse (about 2 ms a query)
        return sql
    import sqlparse
    from sqlparse import tokens as T

    statements = sqlparse.parse(sql)
    if not statements:
        return EMPTY_RESULT_SQL
    toks = list(statements[0].flatten())
    if all(t.is_whitespace or t.ttype in T.Comment or (t.ttype in T.Punctuation and t.value == ";") for t in toks):
        return EMPTY_RESULT_SQL
    return "".join(t.value for t in toks)


def order_matters(gold_sql: str) -> bool:
    """Official rule: row order matters iff the (processed) gold query text contains ``order by``."""
    return "order by" in gold_sql.lower()


# --------------------------------------------------------------------------------------------- results


def _unorder_key(x) -> str:
    return str(x) + str(type(x))


def _unorder_row(row: tuple) -> tuple:
    return tuple(sorted(row, key=_unorder_key))


def _quick_reject_passes(result1: Sequence[tuple], result2: Sequence[tuple], ordered: bool) -> bool:
    """Necessary condition (official ``quick_rej``): same (bag/list of) rows once each row is sorted."""
    if result1 and len(result1[0]) == 1:  # sorting a 1-tuple is the identity
        return list(result1) == list(result2) if ordered else set(result1) == set(result2)
    s1 = [_unorder_row(r) for r in result1]
    s2 = [_unorder_row(r) for r in result2]
    if ordered:
        return s1 == s2
    return set(s1) == set(s2)


def _candidate_permutations(result1, result2, num_cols: int, deadline: float | None) -> Iterator[tuple]:
    """Bijections perm (gold column i <- pred column perm[i]) compatible with the column multisets."""
    cols1 = [Counter(row[i] for row in result1) for i in range(num_cols)]
    cols2 = [Counter(row[j] for row in result2) for j in range(num_cols)]
    candidates = [[j for j in range(num_cols) if cols1[i] == cols2[j]] for i in range(num_cols)]
    if any(not c for c in candidates):
        return
    # most constrained gold column first keeps the search small
    order = sorted(range(num_cols), key=lambda i: len(candidates[i]))
    perm = [0] * num_cols
    used = [False] * num_cols
    steps = 0

    def search(k: int):
        nonlocal steps
        if k == num_cols:
            yield tuple(perm)
            return
        i = order[k]
        for j in candidates[i]:
            if used[j]:
                continue
            steps += 1
            if deadline is not None and steps % 1024 == 0 and time.monotonic() > deadline:
                raise ComparisonTimeout("column permutation search exceeded the time limit")
            used[j] = True
            perm[i] = j
            yield from search(k + 1)
            used[j] = False

    yield from search(0)


def result_eq(result1: Sequence[tuple], result2: Sequence[tuple], order_matters: bool,
              deadline: float | None = None) -> bool:
    """Whether gold ``result1`` and predicted ``result2`` are the same denotation (official semantics).

    ``deadline`` (a ``time.monotonic()`` value) bounds the permutation search: past it
    :class:`ComparisonTimeout` is raised.
    """
    if len(result1) == 0 and len(result2) == 0:
        return True
    if len(result1) != len(result2):
        return False
    num_cols = len(result1[0])
    if len(result2[0]) != num_cols:
        return False
    if result1 == result2 and repr(result1) == repr(result2):
        return True  # identical rows, values and types: the identity permutation matches (fast path)
    if not _quick_reject_passes(result1, result2, order_matters):
        return False
    result1 = list(result1)
    result2 = list(result2)
    set1 = set(result1) if not order_matters else None
    bag1 = Counter(result1) if not order_matters else None
    for perm in _candidate_permutations(result1, result2, num_cols, deadline):
        if num_cols == 1:
            permuted = result2
        else:
            permuted = [tuple(row[j] for j in perm) for row in result2]
        if order_matters:
            if permuted == result1:
                return True
        elif set(permuted) == set1 and Counter(permuted) == bag1:
            return True
    return False


def row_sets_equal(result1: Sequence[tuple], result2: Sequence[tuple]) -> bool:
    """BIRD's rule (``calculate_ex``): the same *set* of rows; order, duplicates and column names ignored."""
    return set(result1) == set(result2)


# --------------------------------------------------------------------------------------------- plug value

_VALUE_NUM = re.compile(r"[-+]?\d*\.\d+|\d+")


def _value_spans(sql: str) -> list[tuple[int, int]]:
    """Character spans of literal values: quoted strings ('..', "..") and numbers not part of a name."""
    spans: list[tuple[int, int]] = []
    pos = 0
    for quoted, text in _split_quoted(sql):
        if quoted:
            if text[0] in "'\"":
                spans.append((pos, pos + len(text)))
        else:
            for m in _VALUE_NUM.finditer(text):
                s, e = m.start(), m.end()
                before = text[s - 1] if s > 0 else " "
                after = text[e] if e < len(text) else " "
                # skip digits inside identifiers (T1, col2, t1.x) and qualified names
                if before.isalnum() or before in "_$." or after.isalpha() or after in "_$":
                    continue
                spans.append((pos + s, pos + e))
        pos += len(text)
    return spans


def _gold_values(gold_sql: str) -> list[str]:
    seen: dict[str, None] = {}
    for s, e in _value_spans(gold_sql):
        seen.setdefault(gold_sql[s:e], None)
    return list(seen)


def plug_value_variants(gold_sql: str, pred_sql: str, limit: int = MAX_PLUG_VARIANTS) -> list[str]:
    """Predictions with the gold query's values plugged into the prediction's value slots (official
    ``get_all_preds_for_execution``), at most ``limit`` of them. The prediction itself is not included.

    The slot-aligned variant (i-th slot <- i-th gold value) comes first, then the product order.
    """
    values = _gold_values(gold_sql)
    slots = _value_spans(pred_sql)
    if not values or not slots or limit <= 0:
        return []

    def render(choice: Sequence[str]) -> str:
        parts, last = [], 0
        for (s, e), v in zip(slots, choice):
            parts.append(pred_sql[last:s])
            parts.append(v)
            last = e
        parts.append(pred_sql[last:])
        return "".join(parts)

    out: dict[str, None] = {}
    if len(values) >= len(slots):
        out[render(values[: len(slots)])] = None
    for choice in itertools.product(values, repeat=len(slots)):
        if len(out) >= limit:
            break
        out.setdefault(render(choice), None)
    out.pop(pred_sql, None)
    return list(out)[:limit]
