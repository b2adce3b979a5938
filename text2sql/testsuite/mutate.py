"""Near-miss mutants of a gold query, made on sqlglot's AST: the wrong queries a test suite must tell apart.

Every single-edit mutant is enumerated (deterministically, in the AST's walk order), each labelled with its kind:
comparison operators, AND/OR, a negation added or dropped, literals (a number +- 1, a string swapped for another
value of the column, a LIKE pattern without its wildcards), DISTINCT, aggregates swapped or dropped, GROUP BY /
HAVING / WHERE / a conjunct dropped, ORDER BY direction or dropped, LIMIT dropped, a column or table swapped for
another of the schema, a join made LEFT or its condition dropped, and set operations swapped. `sample_mutants`
draws `k` of them round-robin over the kinds (so column swaps do not crowd out the rest), with a seed: another seed
draws another sample, which is how held-out mutants are made.

Also here: the literals the gold queries compare each column with (`query_literals`), which the neighbours' fill
uses so that filters select something.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Callable, Iterable

import sqlglot
from sqlglot import exp

from text2sql.testsuite.schema import DbSchema

__all__ = ["parse", "all_mutants", "sample_mutants", "query_literals", "render"]

_CMP = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)
_AGG = (exp.Count, exp.Sum, exp.Avg, exp.Min, exp.Max)
_SETOPS = (exp.Union, exp.Intersect, exp.Except)
_PREDICATES = (exp.Like, exp.In, exp.Between, exp.Is)
_BOUNDARY = ({exp.GT, exp.GTE}, {exp.LT, exp.LTE})  # the near-misses an off-by-one makes


def parse(sql: str) -> exp.Expression | None:
    """sqlglot's AST of one query (SQLite dialect), None when it cannot parse it."""
    try:
        tree = sqlglot.parse_one(sql, read="sqlite")
    except (sqlglot.errors.ParseError, sqlglot.errors.TokenError, ValueError, RecursionError):
        return None
    return tree if isinstance(tree, exp.Query) else None


def render(tree: exp.Expression) -> str:
    return tree.sql(dialect="sqlite")


class _Ctx:
    """What the operators need to know about the database: columns per table, tables, column pools."""

    def __init__(self, schema: DbSchema, tree: exp.Expression) -> None:
        self.tables = {t.name.lower(): [c.name for c in t.columns] for t in schema.tables}
        self.table_names = [t.name for t in schema.tables]
        self.known = {c.lower() for cols in self.tables.values() for c in cols}
        self.pools = defaultdict(list)
        self.kinds: dict[str, str] = {}
        for t in schema.tables:
            for c in t.columns:
                self.kinds.setdefault(c.name.lower(), "text" if c.affinity in ("text", "blob") else "number")
                self.pools[c.name.lower()] += [v for v in c.pool[:20] if isinstance(v, (str, int, float))]
        self.aliases: dict[str, str] = {}
        for tab in tree.find_all(exp.Table):
            name = tab.name.lower()
            if name in self.tables:
                self.aliases[(tab.alias or tab.name).lower()] = name
        self.in_query = sorted(set(self.aliases.values()))

    def is_value(self, node: exp.Expression) -> bool:
        """A literal, or a double-quoted "string" that names no column (SQLite reads it as a string)."""
        if isinstance(node, exp.Literal):
            return True
        return isinstance(node, exp.Column) and not node.table and node.this.args.get("quoted") \
            and node.name.lower() not in self.known

    def columns_for(self, col: exp.Column) -> list[str]:
        """Columns a swap may put in `col`'s place: those of its table (or of the query's tables when it is not
        qualified) with the same coarse type (number / text): the confusions a model makes."""
        qual = col.table.lower() if col.table else ""
        if qual:
            names = self.tables.get(self.aliases.get(qual, qual), [])
        else:
            names = [c for t in self.in_query for c in self.tables[t]]
        kind = self.kinds.get(col.name.lower())
        return [c for c in names if kind is None or self.kinds.get(c.lower()) in (None, kind)]


# An operator: (kind, node) -> list of edits; an edit changes the node (in a copy of the tree) and may return a
# replacement root.
Edit = Callable[[exp.Expression], "exp.Expression | None"]


def _replace_with(cls, **keep) -> Edit:
    def edit(node):
        args = {k: node.args.get(k) for k in ("this", "expression") if node.args.get(k) is not None}
        new = cls(**args, **keep)
        return _swap(node, new)
    return edit


def _swap(node: exp.Expression, new: exp.Expression) -> exp.Expression | None:
    if node.parent is None:
        return new
    node.replace(new)
    return None


def _pop(node):
    node.pop()


def _set(key, value) -> Edit:
    def edit(node):
        node.set(key, value)
    return edit


def _to(value_node_factory) -> Edit:
    return lambda node: _swap(node, value_node_factory())


def _ops(node: exp.Expression, ctx: _Ctx) -> Iterable[tuple[str, Edit]]:
    if isinstance(node, _CMP):
        for cls in _CMP:
            if cls is not type(node):
                pair = {type(node), cls}
                yield "boundary" if pair in _BOUNDARY else "comparison", _replace_with(cls)
    elif isinstance(node, (exp.And, exp.Or)):
        yield "and_or", _replace_with(exp.Or if isinstance(node, exp.And) else exp.And)
        yield "drop_condition", lambda n: _swap(n, n.this)
        yield "drop_condition", lambda n: _swap(n, n.expression)
    elif isinstance(node, exp.Not):
        yield "negation", lambda n: _swap(n, n.this)
    if isinstance(node, exp.Like):
        yield "negation", _set("negate", not node.args.get("negate"))
    elif isinstance(node, _PREDICATES) and not isinstance(node.parent, exp.Not):
        yield "negation", lambda n: _swap(n, exp.Not(this=n.copy()))
    if ctx.is_value(node):
        yield from _value_ops(node, ctx)
    elif isinstance(node, exp.Column) and node.name.lower() in ctx.known:
        for other in ctx.columns_for(node):
            if other.lower() != node.name.lower():
                yield "column", _set("this", exp.to_identifier(other))
    if isinstance(node, _AGG):
        yield from _agg_ops(node, ctx)
    elif isinstance(node, exp.Select):
        yield "distinct", _set("distinct", None if node.args.get("distinct") else exp.Distinct())
    elif isinstance(node, (exp.Group, exp.Having, exp.Where, exp.Order, exp.Limit)):
        yield f"drop_{node.key}", _pop
    elif isinstance(node, exp.Ordered):
        yield "order_direction", _set("desc", not node.args.get("desc"))
    elif isinstance(node, exp.Table) and node.name.lower() in ctx.tables:
        for other in ctx.table_names:
            if other.lower() != node.name.lower():
                yield "table", _set("this", exp.to_identifier(other))
    elif isinstance(node, exp.Join):
        if not node.args.get("side"):
            yield "join", _set("side", "LEFT")
        if node.args.get("on") is not None:
            yield "join", _set("on", None)
    elif isinstance(node, _SETOPS):
        yield from _setop_ops(node)


def _value_ops(node: exp.Expression, ctx: _Ctx) -> Iterable[tuple[str, Edit]]:
    if isinstance(node, exp.Literal) and not node.is_string:
        try:
            v = int(node.this)
            alts = [v + 1, v - 1]
        except ValueError:
            v = float(node.this)
            alts = [v + 1, v * 1.1]
        for a in alts:
            yield "boundary", _to(lambda a=a: exp.Literal.number(a))
        return
    text = node.name
    if "%" in text:
        yield "literal", _to(lambda: exp.Literal.string(text.replace("%", "")))
    other = _compared_column(node, ctx)
    seen = {text}
    for v in ctx.pools.get(other, []):
        if isinstance(v, str) and v not in seen and len(seen) < 4:
            seen.add(v)
            yield "literal", _to(lambda v=v: exp.Literal.string(v))


def _compared_column(node: exp.Expression, ctx: _Ctx) -> str:
    parent = node.parent
    while parent is not None and not isinstance(parent, _CMP + _PREDICATES):
        parent = parent.parent
    if parent is not None and isinstance(parent.this, exp.Column):
        return parent.this.name.lower()
    return ""


def _agg_ops(node: exp.Expression, ctx: _Ctx) -> Iterable[tuple[str, Edit]]:
    arg = node.this
    for cls in _AGG:
        if cls is not type(node) and not isinstance(arg, exp.Star):
            yield "aggregate", lambda n, cls=cls: _swap(n, cls(this=n.this))
    if isinstance(node, exp.Count) and isinstance(arg, exp.Distinct):
        yield "count_distinct", lambda n: _swap(n, exp.Count(this=n.this.expressions[0]))
    elif isinstance(node, exp.Count) and isinstance(arg, exp.Column):
        yield "count_distinct", lambda n: _swap(n, exp.Count(this=exp.Distinct(expressions=[n.this])))
        yield "count_null", lambda n: _swap(n, exp.Count(this=exp.Star()))
    elif isinstance(node, exp.Count) and isinstance(arg, exp.Star):  # COUNT(*) -> COUNT(col): NULLs are not counted
        qualify = len(ctx.aliases) > 1
        for alias, table in sorted(ctx.aliases.items()):
            for col in ctx.tables[table]:
                yield "count_null", _to(lambda a=alias, c=col: exp.Count(this=exp.column(c, a if qualify else None)))
    if arg is not None and not isinstance(arg, (exp.Star, exp.Distinct)):
        yield "aggregate", lambda n: _swap(n, n.this)


def _setop_ops(node: exp.Expression) -> Iterable[tuple[str, Edit]]:
    for cls in _SETOPS:
        if cls is not type(node):
            yield "set_operation", lambda n, cls=cls: _swap(n, cls(this=n.this, expression=n.expression, distinct=True))
    if isinstance(node, exp.Union):
        yield "set_operation", _set("distinct", not node.args.get("distinct"))
    if isinstance(node, exp.Except):
        yield "set_operation", lambda n: _swap(n, exp.Except(this=n.expression, expression=n.this, distinct=True))


def _edits(sql: str, schema: DbSchema) -> tuple[exp.Expression | None, list[tuple[str, int, Edit]]]:
    """The parsed gold and every single edit of it: (kind, node index in walk order, edit); nothing is rendered."""
    tree = parse(sql)
    if tree is None:
        return None, []
    ctx = _Ctx(schema, tree)
    return tree, [(kind, i, edit) for i, node in enumerate(tree.walk()) for kind, edit in _ops(node, ctx)]


def _apply(tree: exp.Expression, i: int, edit: Edit) -> str | None:
    """The SQL of `tree` with `edit` made to its i-th node (in a copy); None when the edit makes no valid tree."""
    copy = tree.copy()
    target = list(copy.walk())[i]
    try:
        return render(edit(target) or copy)
    except (sqlglot.errors.SqlglotError, ValueError, AttributeError, TypeError, IndexError):
        return None


def all_mutants(sql: str, schema: DbSchema) -> list[tuple[str, str]]:
    """Every single-edit mutant of `sql` as (kind, SQL), deduplicated, never the gold's own rendering; [] when
    sqlglot cannot parse it."""
    tree, edits = _edits(sql, schema)
    if tree is None:
        return []
    seen = {render(tree), sql.strip()}
    out = []
    for kind, i, edit in edits:
        text = _apply(tree, i, edit)
        if text is not None and text not in seen:
            seen.add(text)
            out.append((kind, text))
    return out


def sample_mutants(sql: str, schema: DbSchema, k: int, rng: random.Random, exclude: Iterable[str] = (),
                   per_kind: int | None = None) -> list[tuple[str, str]]:
    """`k` mutants (kind, SQL) of `sql` (fewer when there are fewer), round-robin over their kinds in a random order,
    random within a kind, at most `per_kind` of a kind; none whose SQL is in `exclude`. Only the drawn edits are
    rendered (a query has hundreds of column swaps)."""
    tree, edits = _edits(sql, schema)
    if tree is None:
        return []
    by_kind: dict[str, list[tuple[int, Edit]]] = defaultdict(list)
    for kind, i, edit in edits:
        by_kind[kind].append((i, edit))
    kinds = sorted(by_kind)
    rng.shuffle(kinds)
    for kind in kinds:
        rng.shuffle(by_kind[kind])
    seen = {render(tree), sql.strip(), *exclude}
    taken: dict[str, int] = defaultdict(int)
    out: list[tuple[str, str]] = []
    while len(out) < k and any(by_kind.values()):
        for kind in kinds:
            while by_kind[kind] and len(out) < k:
                text = _apply(tree, *by_kind[kind].pop())
                if text is not None and text not in seen:
                    seen.add(text)
                    out.append((kind, text))
                    taken[kind] += 1
                    break
            if per_kind is not None and taken[kind] >= per_kind:
                by_kind[kind] = []
    return out


def query_literals(sqls: Iterable[str], schema: DbSchema) -> dict[str, list]:
    """Lower-case column name -> the values gold queries compare it with, and their neighbours (n - 1, n + 1; a string
    cut by one character and extended by one; a LIKE pattern's text bare and with something around it), each once,
    in first-seen order."""
    out: dict[str, dict] = defaultdict(dict)
    for sql in sqls:
        tree = parse(sql)
        if tree is None:
            continue
        ctx = _Ctx(schema, tree)
        for node in tree.walk():
            if not ctx.is_value(node):
                continue
            col = _compared_column(node, ctx)
            if not col:
                continue
            for v in _value_family(node):
                out[col].setdefault((v, type(v)), v)
    return {col: list(vals.values()) for col, vals in out.items()}


def _value_family(node: exp.Expression) -> list:
    if isinstance(node, exp.Literal) and not node.is_string:
        try:
            v = int(node.this)
            return [v, v - 1, v + 1]
        except ValueError:
            v = float(node.this)
            return [v, v - 0.5, v + 0.5]
    text = node.name
    if "%" in text or "_" in text:
        bare = text.replace("%", "")
        return [bare, "x" + bare + "x", bare + "x", "x" + bare]
    return [text, text[:-1], text + "x"] if len(text) > 1 else [text]  # just below and just above, in text order
