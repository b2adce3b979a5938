"""The rows of one neighbour database: sampled and perturbed from the original's own values, small, and within
the schema's constraints.

Per neighbour a profile is drawn (table sizes, how many distinct values each column may use, how often a nullable
column is NULL: one low rate for all, or, in a sparse profile, each column its own rate up to 80 %), so the
candidates differ in kind, not only in values: empty and one-row tables, many duplicates, columns mostly NULL beside
columns never NULL, boundary numbers. Each column's value comes from, in turn: the literals the gold queries compare it with
(and their neighbours: `n - 1`, `n + 1`, a LIKE pattern's text with something around it), the column's original
values, or a perturbation of one (a number near it or at the pool's boundaries, a date some days away, a string
in another case or cut short). Primary keys and UNIQUE columns stay unique, NOT NULL columns never get NULL, and a
foreign key copies the referenced columns of an existing parent row (parents are filled first). Everything is a
function of the `random.Random` given.
"""

from __future__ import annotations

import random
import re
from datetime import date, timedelta

from text2sql.testsuite.schema import Column, DbSchema, Table

__all__ = ["neighbour_rows"]

SIZES = ((0, 2), (1, 4), (2, 8), (4, 12), (8, 20))  # row-count ranges a table's size is drawn from
SIZE_WEIGHTS = (1, 3, 4, 3, 2)
NULL_RATES = (0.0, 0.05, 0.15, 0.35)  # a dense profile: one NULL rate for every nullable column
SPARSE_RATES = (0.0, 0.25, 0.5, 0.8)  # a sparse profile: each nullable column draws its own rate from these
P_SPARSE = 0.4  # share of the profiles that are sparse
_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})")


def neighbour_rows(schema: DbSchema, literals: dict[str, list], rng: random.Random) -> dict[str, list[tuple]]:
    """table name -> rows (tuples in the table's column order). `literals`: lower-case column name -> values the
    gold queries compare that column with."""
    profile = _Profile(rng)
    out: dict[str, list[tuple]] = {}
    for table in _parents_first(schema):
        out[table.name] = _table_rows(schema, table, literals, out, profile, rng)
    return out


class _Profile:
    """One neighbour's character: how big, how repetitive, how sparse. A dense profile gives every nullable column
    the same (low) NULL rate; a sparse one gives each its own, often high, so that some columns are mostly NULL and
    others never: what tells COUNT(*) from COUNT(col), `col = v` from `col IS NULL`, and a NULL group from none."""

    def __init__(self, rng: random.Random) -> None:
        self.size_range = rng.choices(SIZES, SIZE_WEIGHTS)[0]
        self.sparse = rng.random() < P_SPARSE
        self.p_null = rng.choice(NULL_RATES)
        self.p_literal = rng.choice((0.2, 0.35, 0.5))
        self.p_perturb = rng.choice((0.05, 0.15, 0.3))
        self.distinct = rng.choice((1, 2, 3, 5, 10, 1000))  # distinct original values a column draws from
        self._rates: dict[tuple[str, str], float] = {}

    def null_rate(self, table: str, column: str, rng: random.Random) -> float:
        """How often `table.column` is NULL (where it may be) in this neighbour."""
        if not self.sparse:
            return self.p_null
        key = (table.lower(), column.lower())
        if key not in self._rates:
            self._rates[key] = rng.choice(SPARSE_RATES)
        return self._rates[key]


def _parents_first(schema: DbSchema) -> list[Table]:
    """Tables ordered so that a referenced table comes before its children (cycles: sqlite_master order)."""
    order: list[Table] = []
    placed: set[str] = set()
    pending = list(schema.tables)
    while pending:
        for t in pending:
            parents = {p.lower() for _, p, _ in t.fks if p.lower() != t.name.lower() and schema.table(p)}
            if parents <= placed:
                break
        else:
            t = pending[0]  # a cycle: its parents' values come from their pools
        pending.remove(t)
        order.append(t)
        placed.add(t.name.lower())
    return order


def _table_rows(schema: DbSchema, table: Table, literals: dict, done: dict, profile: _Profile,
                rng: random.Random) -> list[tuple]:
    lo, hi = profile.size_range
    n = rng.randint(lo, hi)
    names = [c.name for c in table.columns]
    sources = {c.name: _Source(c, literals.get(c.name.lower(), []), profile.null_rate(table.name, c.name, rng),
                               profile, rng) for c in table.columns}
    rows = [{name: sources[name].draw(rng) for name in names} for _ in range(n)]
    for cols, parent_name, parent_cols in table.fks:
        _link(schema, table, rows, cols, parent_name, parent_cols, done, profile, rng)
    for cols in table.uniques:  # single-column keys first get fresh distinct values, then duplicates go
        if len(cols) == 1 and not _is_fk(table, cols[0]):
            _make_distinct(rows, cols[0], sources[cols[0]], rng)
    seen: list[set] = [set() for _ in table.uniques]
    kept = []
    for row in rows:
        keys = [tuple(row[c] for c in cols) for cols in table.uniques]
        if any(k in s and not any(v is None for v in k) for k, s in zip(keys, seen)):
            continue
        for k, s in zip(keys, seen):
            s.add(k)
        kept.append(tuple(row[name] for name in names))
    return kept


def _is_fk(table: Table, name: str) -> bool:
    return any(name in cols for cols, _, _ in table.fks)


def _link(schema, table, rows, cols, parent_name, parent_cols, done, profile, rng) -> None:
    """Each row's foreign-key columns copied from one parent row (NULL sometimes, where every column allows it)."""
    parent = schema.table(parent_name)
    if parent is None:
        return
    targets = list(parent_cols)
    if any(t is None for t in targets):  # REFERENCES parent without columns: the parent's primary key
        pk = [c.name for c in sorted((c for c in parent.columns if c.pk), key=lambda c: c.pk)]
        if len(pk) != len(cols):
            return
        targets = pk
    idx = [next((i for i, c in enumerate(parent.columns) if c.name.lower() == t.lower()), None) for t in targets]
    own = [table.column(c) for c in cols]
    if any(i is None for i in idx) or any(c is None for c in own):
        return
    parent_rows = done.get(parent.name)
    nullable = all(not c.notnull and not c.pk for c in own)
    p_null = profile.null_rate(table.name, own[0].name, rng)  # the first column's rate: its _Source's
    for row in rows:
        if nullable and rng.random() < p_null:
            values = [None] * len(own)
        elif parent_rows:
            prow = rng.choice(parent_rows)
            values = [prow[i] for i in idx]
        elif parent_rows is None and all(parent.columns[i].pool for i in idx):  # a cycle: parent not filled yet
            values = [rng.choice(parent.columns[i].pool) for i in idx]
        elif nullable:
            values = [None] * len(own)
        else:
            continue  # an empty parent: every row goes below; a cycle's parent without values: drawn values stay
        for col, v in zip(own, values):
            row[col.name] = v
    if not parent_rows and not nullable and parent_rows is not None:
        rows.clear()  # a required reference to an empty table: no row can exist


def _make_distinct(rows: list[dict], name: str, source: "_Source", rng: random.Random) -> None:
    used: set = set()
    for row in rows:
        v = row[name]
        tries = 0
        while (v is None or v in used) and tries < 20:
            v = source.fresh(rng)
            tries += 1
        row[name] = v
        used.add(v)


class _Source:
    """Values for one column of one neighbour."""

    def __init__(self, col: Column, literals: list, p_null: float, profile: _Profile, rng: random.Random) -> None:
        self.col, self.profile, self.p_null = col, profile, p_null
        pool = list(col.pool)
        k = min(len(pool), profile.distinct)
        self.pool = rng.sample(pool, k) if k < len(pool) else pool
        self.full = pool
        self.literals = [v for v in literals if v is not None]
        self.nullable = not col.notnull and not col.pk
        nums = [v for v in pool if isinstance(v, (int, float)) and not isinstance(v, bool)]
        self.low, self.high = (min(nums), max(nums)) if nums else (None, None)

    def draw(self, rng: random.Random):
        p = self.profile
        r = rng.random()
        if self.nullable and r < self.p_null:
            return None
        r = rng.random()
        if self.literals and r < p.p_literal:
            return rng.choice(self.literals)
        base = self._base(rng)
        return perturb(base, rng, self.low, self.high) if rng.random() < p.p_perturb else base

    def fresh(self, rng: random.Random):
        """A value for a unique column: anything from the full pool, a literal, or a perturbation."""
        r = rng.random()
        if self.literals and r < 0.3:
            return rng.choice(self.literals)
        if self.full and r < 0.8:
            return rng.choice(self.full)
        return perturb(self._base(rng), rng, self.low, self.high)

    def _base(self, rng: random.Random):
        if self.pool:
            return rng.choice(self.pool)
        if self.literals:
            return rng.choice(self.literals)
        return _default(self.col, rng)


def _default(col: Column, rng: random.Random):
    """A value for a column with no original values (an empty table), by the declared type's affinity."""
    aff = col.affinity
    if aff == "integer" or (aff == "numeric" and "DATE" not in col.declared.upper()):
        return rng.randint(0, 30)
    if aff == "real":
        return round(rng.uniform(0, 100), 2)
    if "DATE" in col.declared.upper() or "TIME" in col.declared.upper():
        return (date(2000, 1, 1) + timedelta(days=rng.randint(0, 9000))).isoformat()
    return f"{col.name[:12]} {rng.randint(0, 30)}"


def perturb(v, rng: random.Random, low=None, high=None):
    """A value near `v`: numbers nearby or at the pool's boundaries, dates some days away, strings changed a little."""
    if isinstance(v, bool) or v is None or isinstance(v, bytes):
        return v
    if isinstance(v, int):
        choices = [v + 1, v - 1, v + rng.randint(-10, 10), 0]
        if low is not None:
            choices += [int(low) - 1, int(high) + 1, int(low), int(high)]
        return rng.choice(choices)
    if isinstance(v, float):
        choices = [v + 0.5, v - 0.5, round(v * rng.uniform(0.5, 1.5), 2), 0.0]
        if low is not None:
            choices += [float(low) - 1, float(high) + 1]
        return rng.choice(choices)
    text = str(v)
    m = _DATE.match(text)
    if m:
        try:
            day = date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
            shifted = day + timedelta(days=rng.choice((1, -1, 30, -30, 365, -365, rng.randint(-2000, 2000))))
            return shifted.isoformat() + text[10:]
        except (ValueError, OverflowError):
            pass
    ops = [text.upper(), text.lower(), text[: max(1, len(text) // 2)], text + "x", "x" + text, text + " " + text]
    return rng.choice(ops)
