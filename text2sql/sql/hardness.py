"""Spider hardness (easy / medium / hard / extra) with the official rules.

A gold query is parsed with the official grammar (:mod:`text2sql.sql.spider_sql`, schema-free) and its
components are counted exactly as ``evaluation.py`` counts them; a query that grammar rejects falls back to
the counts below, computed on a sqlglot AST.

Official rules (Spider ``evaluation.py``: ``Evaluator.eval_hardness``, ``count_component1``,
``count_component2``, ``count_others``) are applied to the *top-level* query as Spider's ``process_sql``
parses it:

* component1 = [where] + [group by] + [order by] + [limit] + (#tables in FROM - 1)
  + #OR connectives (WHERE and HAVING; process_sql drops what follows an OR in a join's ON)
  + #LIKE conditions (in join conditions, WHERE and HAVING);
* component2 = #sub-queries used as values in join-ON / WHERE / HAVING conditions + [INTERSECT/UNION/EXCEPT];
* others = [#aggregates > 1] + [#select items > 1] + [#where conditions > 1] + [#group-by columns > 1].

``process_sql`` parses ``A UNION B UNION C`` as A with a nested ``B UNION C``, and attaches an ORDER BY /
LIMIT written after a set operation to the *last* operand, so only the left-most SELECT's clauses count.
The official aggregate count has quirks that decide the split, reproduced here: for WHERE and HAVING it
counts conditions negated with NOT (``not_op``) rather than aggregates, and for HAVING also every AND/OR
connective.

Spider writes string values in double quotes, which sqlglot reads as identifiers: they are turned into
single-quoted strings before parsing.
"""

from __future__ import annotations

import re
from functools import lru_cache

import sqlglot
from sqlglot import exp

__all__ = ["HARDNESS_LEVELS", "hardness", "hardness_counts", "spider_sql_to_sqlglot"]

HARDNESS_LEVELS = ("easy", "medium", "hard", "extra")

_AGGS = (exp.Count, exp.Sum, exp.Avg, exp.Min, exp.Max)
_DQ_STRING = re.compile(r'"((?:[^"]|"")*)"')


def _quote_fix(sql: str) -> str:
    """Double-quoted "values" -> 'values' (outside single-quoted strings)."""
    out, i = [], 0
    parts = re.split(r"('(?:[^']|'')*')", sql)
    for k, part in enumerate(parts):
        if k % 2 == 1:  # a single-quoted string: keep
            out.append(part)
            continue
        out.append(_DQ_STRING.sub(lambda m: "'" + m.group(1).replace('""', '"').replace("'", "''") + "'", part))
    del i
    return "".join(out)


def spider_sql_to_sqlglot(sql: str) -> exp.Expression:
    """Parse a Spider query with sqlglot (SQLite dialect), double-quoted strings read as strings."""
    fixed = _quote_fix(sql.strip().rstrip(";"))
    return sqlglot.parse_one(fixed, read="sqlite")


def _strip_parens(node):
    while isinstance(node, exp.Paren):
        node = node.this
    return node


def _flatten_condition(node) -> tuple[list[exp.Expression], int, int]:
    """Condition tree -> (condition units, #AND, #OR), like process_sql's flat [cond, 'and', cond, ...]."""
    node = _strip_parens(node)
    if isinstance(node, (exp.And, exp.Or)):
        lu, la, lo = _flatten_condition(node.this)
        ru, ra, ro = _flatten_condition(node.expression)
        is_and = isinstance(node, exp.And)
        return lu + ru, la + ra + int(is_and), lo + ro + int(not is_and)
    return [node], 0, 0


def _unit_is_negated(unit) -> bool:
    # process_sql: ``val_unit NOT op ...`` sets not_op (NOT IN / NOT LIKE / NOT BETWEEN);
    # ``IS NOT NULL`` puts the NOT after the operator, so it is not a not_op.
    unit = _strip_parens(unit)
    return isinstance(unit, exp.Not) and not isinstance(_strip_parens(unit.this), exp.Is)


def _unit_is_like(unit) -> bool:
    unit = _strip_parens(unit)
    if isinstance(unit, exp.Not):
        unit = _strip_parens(unit.this)
    return isinstance(unit, (exp.Like, exp.ILike))


def _unit_subqueries(unit) -> int:
    """Sub-queries used directly as values of one condition (not those nested inside them)."""
    count = 0
    stack = [unit]
    while stack:
        node = stack.pop()
        if isinstance(node, (exp.Select, exp.Union, exp.Subquery)) and node is not unit:
            count += 1
            continue
        for child in node.iter_expressions():
            stack.append(child)
    return min(count, 2)


def _is_agg(node) -> bool:
    node = _strip_parens(node)
    if isinstance(node, exp.Alias):
        node = node.this
    return isinstance(node, _AGGS)


def _leftmost(node):
    node = _strip_parens(node)
    if isinstance(node, exp.Alias):
        node = _strip_parens(node.this)
    while isinstance(node, exp.Binary) and not isinstance(node, exp.Connector):
        node = _strip_parens(node.this)
    return node


def _col_units_agg(node) -> int:
    """Aggregates among the (at most two) column units of a process_sql val_unit."""
    node = _strip_parens(node)
    if isinstance(node, (exp.Add, exp.Sub, exp.Mul, exp.Div)):
        return int(_is_agg(node.this)) + int(_is_agg(node.expression))
    return int(_is_agg(node))


def _main_select(tree) -> tuple[exp.Select | None, bool]:
    """The left-most SELECT and whether the query has a set operation."""
    node = _strip_parens(tree)
    has_set_op = False
    while isinstance(node, (exp.Union, exp.Intersect, exp.Except)):
        has_set_op = True
        node = _strip_parens(node.this)
    if isinstance(node, exp.Subquery):
        node = node.this
    return (node if isinstance(node, exp.Select) else None), has_set_op


def hardness_counts(sql: str) -> tuple[int, int, int]:
    """(component1, component2, others) of a gold query, as the official evaluator counts them."""
    tree = spider_sql_to_sqlglot(sql)
    select, has_set_op = _main_select(tree)
    if select is None:
        raise ValueError(f"not a SELECT query: {sql!r}")
    args = select.args
    from_ = args.get("from_") or args.get("from")
    joins = args.get("joins") or []

    # table units and join conditions
    n_tables = 0
    if from_ is not None:
        this = from_.this
        n_tables += len(this.expressions) if isinstance(this, exp.Values) else 1
        n_tables += len(from_.expressions or [])
    n_tables += len(joins)
    from_units, from_or = [], 0
    for join in joins:
        on = join.args.get("on")
        if on is not None:
            # process_sql stops an ON condition at OR (what follows is dropped): ORs there never count
            units, _, _ = _flatten_condition(on)
            from_units += units

    where = args.get("where")
    where_units, where_or = ([], 0)
    if where is not None:
        where_units, _, where_or = _flatten_condition(where.this)
    having = args.get("having")
    having_units, having_and, having_or = ([], 0, 0)
    if having is not None:
        having_units, having_and, having_or = _flatten_condition(having.this)
    group = args.get("group")
    group_cols = list(group.expressions) if group is not None else []
    order = None if has_set_op else args.get("order")
    limit = None if has_set_op else args.get("limit")
    select_items = list(select.expressions)

    all_units = from_units + where_units + having_units

    comp1 = 0
    comp1 += int(bool(where_units))
    comp1 += int(bool(group_cols))
    comp1 += int(order is not None and bool(order.expressions))
    comp1 += int(limit is not None)
    comp1 += max(n_tables - 1, 0)
    comp1 += from_or + where_or + having_or
    comp1 += sum(_unit_is_like(u) for u in all_units)

    comp2 = sum(_unit_subqueries(u) for u in all_units) + int(has_set_op)

    agg = sum(_is_agg(_leftmost(item)) for item in select_items)
    agg += sum(_unit_is_negated(u) for u in where_units)  # official quirk: not_op, not aggregates
    agg += sum(_is_agg(g) for g in group_cols)
    if order is not None:
        agg += sum(_col_units_agg(o.this if isinstance(o, exp.Ordered) else o) for o in order.expressions)
    agg += sum(_unit_is_negated(u) for u in having_units) + having_and + having_or  # same quirk

    others = 0
    others += int(agg > 1)
    others += int(len(select_items) > 1)
    others += int(len(where_units) > 1)
    others += int(len(group_cols) > 1)
    return comp1, comp2, others


def _level(comp1: int, comp2: int, others: int) -> str:
    if comp1 <= 1 and others == 0 and comp2 == 0:
        return "easy"
    if (others <= 2 and comp1 <= 1 and comp2 == 0) or (comp1 <= 2 and others < 2 and comp2 == 0):
        return "medium"
    if ((others > 2 and comp1 <= 2 and comp2 == 0)
            or (2 < comp1 <= 3 and others <= 2 and comp2 == 0)
            or (comp1 <= 1 and others == 0 and comp2 <= 1)):
        return "hard"
    return "extra"


@lru_cache(maxsize=65536)
def hardness(sql: str) -> str:
    """Official Spider hardness of a (gold) query; ``"extra"`` when it cannot be parsed."""
    from text2sql.sql import spider_sql

    try:
        return _level(*spider_sql.hardness_counts(spider_sql.parse_sql(sql, spider_sql.OPEN_SCHEMA)))
    except spider_sql.MatchParseError:
        pass
    try:
        return _level(*hardness_counts(sql))
    except Exception:  # noqa: BLE001 - an unparsable gold query is the hardest bucket, never a crash
        return "extra"
