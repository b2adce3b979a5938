"""The question templates of the generated sample: each draws a (question, gold SQL) pair from one database.

Split from `text2sql.data.sample` (databases, rows, the Spider-layout writer), which picks templates by level in
Spider dev's proportions and checks every query's level with the official hardness rules. `Column` and `Table`, what
a template sees of a database, are defined here and used there to declare the four domains (so neither module
needs the other's import back).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from text2sql.sql.hardness import HARDNESS_LEVELS

# -- the databases as the templates see them (text2sql.data.sample defines the four domains with these) -------------


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # "number" or "text" (Spider's column_types vocabulary)
    phrase: str  # how a question names it
    values: tuple = ()  # a pool for text columns; numeric columns use `low`/`high`
    low: int = 0
    high: int = 0


@dataclass(frozen=True)
class Table:
    name: str
    singular: str
    plural: str
    key: str  # integer primary key
    columns: tuple[Column, ...]  # non-key, non-foreign-key columns
    rows: int
    parent: tuple[str, str] | None = None  # (foreign-key column, parent table)


# -- question templates ------------------------------------------------------------------------------------------
# Each template draws a (question, gold SQL) pair from one database. The question names everything the query
# needs (table, columns, values, direction, k), so one question has one reading. Templates are grouped by the
# hardness level their queries get under the official rules; `_examples` checks every query against it.

Template = Callable[["Ctx"], tuple[str, str]]
TEMPLATES: dict[str, list[Template]] = {level: [] for level in HARDNESS_LEVELS}


def template(level: str):
    def register(fn: Template) -> Template:
        TEMPLATES[level].append(fn)
        return fn
    return register


@dataclass
class Ctx:
    """One database seen by the templates: its tables, rows, and the rng that picks."""
    rng: random.Random
    tables: tuple[Table, ...]
    rows: dict[str, list[dict]]

    def pick(self, seq):
        return self.rng.choice(list(seq))

    def table(self) -> Table:
        return self.pick(self.tables)

    @property
    def child(self) -> Table:
        return next(t for t in self.tables if t.parent)

    @property
    def parent(self) -> Table:
        return next(t for t in self.tables if t.name == self.child.parent[1])

    def value(self, table: Table, col: Column):
        return self.pick(self.rows[table.name])[col.name]

    def two_values(self, table: Table, col: Column):
        values = sorted({r[col.name] for r in self.rows[table.name]})
        a, b = self.rng.sample(values, 2)
        return a, b


def _texts(t: Table) -> list[Column]:
    return [c for c in t.columns if c.type == "text"]


def _cats(t: Table) -> list[Column]:
    """Text columns whose values repeat (all but the name column): what GROUP BY and INTERSECT are about."""
    return _texts(t)[1:]


def _nums(t: Table) -> list[Column]:
    return [c for c in t.columns if c.type == "number"]


def _lit(value) -> str:
    return "'" + str(value).replace("'", "''") + "'" if isinstance(value, str) else str(value)


def _join(child: Table, parent: Table) -> str:
    return f"{child.name} AS T1 JOIN {parent.name} AS T2 ON T1.{child.parent[0]} = T2.{parent.key}"


AGGS = [("avg", "average"), ("max", "maximum"), ("min", "minimum"), ("sum", "total")]
ABOVE_BELOW = [(">", "above"), ("<", "below"), (">", "greater than"), ("<", "less than")]
ORDERS = [("DESC", "highest"), ("ASC", "lowest")]


# easy: one table, at most one clause ------------------------------------------------------------------------
@template("easy")
def _list_column(c: Ctx):
    t = c.table()
    col = c.pick(_texts(t))
    lead = c.pick(["List the", "Show the", "What are the", "Give me the"])
    return f"{lead} {col.phrase} of all {t.plural}.", f"SELECT {col.name} FROM {t.name}"


@template("easy")
def _count_all(c: Ctx):
    t = c.table()
    q = c.pick(["How many {} are there?", "Count the {}.", "What is the number of {}?"])
    return q.format(t.plural), f"SELECT count(*) FROM {t.name}"


@template("easy")
def _aggregate(c: Ctx):
    t = c.table()
    num = c.pick(_nums(t))
    fn, word = c.pick(AGGS)
    q = c.pick(["What is the {} {} of all {}?", "Give the {} {} over all {}.", "Compute the {} {} of the {}."])
    return q.format(word, num.phrase, t.plural), f"SELECT {fn}({num.name}) FROM {t.name}"


@template("easy")
def _where_number(c: Ctx):
    t = c.table()
    sel, num = c.pick(_texts(t)), c.pick(_nums(t))
    op, word = c.pick(ABOVE_BELOW)
    v = c.value(t, num)
    return (f"Show the {sel.phrase} of {t.plural} whose {num.phrase} is {word} {v}.",
            f"SELECT {sel.name} FROM {t.name} WHERE {num.name} {op} {v}")


@template("easy")
def _where_text(c: Ctx):
    t = c.table()
    key, num = c.pick(_texts(t)), c.pick(_nums(t))
    v = c.value(t, key)
    return (f"What is the {num.phrase} of the {t.plural} whose {key.phrase} is {v}?",
            f"SELECT {num.name} FROM {t.name} WHERE {key.name} = {_lit(v)}")


@template("easy")
def _count_where(c: Ctx):
    t = c.table()
    cat = c.pick(_cats(t))
    v = c.value(t, cat)
    return (f"How many {t.plural} have {cat.phrase} {v}?",
            f"SELECT count(*) FROM {t.name} WHERE {cat.name} = {_lit(v)}")


@template("easy")
def _distinct(c: Ctx):
    t = c.table()
    cat = c.pick(_cats(t))
    q = c.pick(["Show the different {} values of all {}.", "What distinct {} values do the {} have?",
                "List each {} that occurs among the {}, once."])
    return q.format(cat.phrase, t.plural), f"SELECT DISTINCT {cat.name} FROM {t.name}"


@template("easy")
def _sorted(c: Ctx):
    t = c.table()
    sel, num = c.pick(_texts(t)), c.pick(_nums(t))
    order, word = c.pick([("DESC", "descending"), ("ASC", "ascending")])
    q = c.pick(["List the {sel} of all {t} sorted by {num} in {w} order.",
                "Sort the {t} by {num} in {w} order and show their {sel}."])
    return (q.format(sel=sel.phrase, t=t.plural, num=num.phrase, w=word),
            f"SELECT {sel.name} FROM {t.name} ORDER BY {num.name} {order}")


@template("easy")
def _aggregate_where(c: Ctx):
    t = c.table()
    cat, num = c.pick(_cats(t)), c.pick(_nums(t))
    fn, word = c.pick(AGGS)
    v = c.value(t, cat)
    return (f"What is the {word} {num.phrase} of {t.plural} whose {cat.phrase} is {v}?",
            f"SELECT {fn}({num.name}) FROM {t.name} WHERE {cat.name} = {_lit(v)}")


# medium: grouping, top-k, a join, two conditions ------------------------------------------------------------
@template("medium")
def _group_count(c: Ctx):
    t = c.table()
    cat = c.pick(_cats(t))
    q = c.pick(["Show each {} and the number of {} with it.", "For each {}, how many {} are there?",
                "Count the {1} per {0}, with the {0}."])
    return q.format(cat.phrase, t.plural), f"SELECT {cat.name}, count(*) FROM {t.name} GROUP BY {cat.name}"


@template("medium")
def _group_aggregate(c: Ctx):
    t = c.table()
    cat, num = c.pick(_cats(t)), c.pick(_nums(t))
    fn, word = c.pick(AGGS)
    q = c.pick(["For each {cat}, what is the {w} {num} of the {t}?", "Show each {cat} with the {w} {num} of its {t}."])
    return (q.format(cat=cat.phrase, w=word, num=num.phrase, t=t.plural),
            f"SELECT {cat.name}, {fn}({num.name}) FROM {t.name} GROUP BY {cat.name}")


@template("medium")
def _top_k(c: Ctx):
    t = c.table()
    sel, num = c.pick(_texts(t)), c.pick(_nums(t))
    k = c.rng.randint(1, 5)
    order, word = c.pick(ORDERS)
    return (f"What are the {sel.phrase} of the {k} {t.plural} with the {word} {num.phrase}?",
            f"SELECT {sel.name} FROM {t.name} ORDER BY {num.name} {order} LIMIT {k}")


@template("medium")
def _join_by_parent_name(c: Ctx):
    child, parent = c.child, c.parent
    sel, pname = c.pick(_texts(child)), parent.columns[0]
    v = c.value(parent, pname)
    return (f"Show the {sel.phrase} of {child.plural} whose {parent.singular} has {pname.phrase} {v}.",
            f"SELECT T1.{sel.name} FROM {_join(child, parent)} WHERE T2.{pname.name} = {_lit(v)}")


@template("medium")
def _two_conditions(c: Ctx):
    t = c.table()
    sel, num, cat = c.pick(_texts(t)), c.pick(_nums(t)), c.pick(_cats(t))
    op, word = c.pick(ABOVE_BELOW)
    v, w = c.value(t, num), c.value(t, cat)
    return (f"Show the {sel.phrase} of {t.plural} whose {num.phrase} is {word} {v} and whose {cat.phrase} is {w}.",
            f"SELECT {sel.name} FROM {t.name} WHERE {num.name} {op} {v} AND {cat.name} = {_lit(w)}")


@template("medium")
def _either_value(c: Ctx):
    t = c.table()
    cat = c.pick(_cats(t))
    sel = c.pick([x for x in _texts(t) if x is not cat])
    a, b = c.two_values(t, cat)
    return (f"Show the {sel.phrase} of {t.plural} whose {cat.phrase} is either {a} or {b}.",
            f"SELECT {sel.name} FROM {t.name} WHERE {cat.name} = {_lit(a)} OR {cat.name} = {_lit(b)}")


@template("medium")
def _min_max_where(c: Ctx):
    t = c.table()
    cat, num = c.pick(_cats(t)), c.pick(_nums(t))
    v = c.value(t, cat)
    return (f"What are the minimum and maximum {num.phrase} of {t.plural} whose {cat.phrase} is {v}?",
            f"SELECT min({num.name}), max({num.name}) FROM {t.name} WHERE {cat.name} = {_lit(v)}")


@template("medium")
def _join_pairs(c: Ctx):
    child, parent = c.child, c.parent
    sel, pname = c.pick(_texts(child)), parent.columns[0]
    q = c.pick(["Show the {sel} of every {c} together with the {pn} of its {p}.",
                "For every {c}, list its {sel} and the {pn} of its {p}."])
    return (q.format(sel=sel.phrase, c=child.singular, pn=pname.phrase, p=parent.singular),
            f"SELECT T1.{sel.name}, T2.{pname.name} FROM {_join(child, parent)}")


@template("medium")
def _join_count(c: Ctx):
    child, parent = c.child, c.parent
    pname = parent.columns[0]
    q = c.pick(["Show the {pn} of each {p} and the number of {c} in it.",
                "How many {c} does each {p} have? Show the {p}'s {pn} with the count."])
    return (q.format(pn=pname.phrase, p=parent.singular, c=child.plural),
            f"SELECT T2.{pname.name}, count(*) FROM {_join(child, parent)} GROUP BY T1.{child.parent[0]}")


@template("medium")
def _group_having(c: Ctx):
    t = c.table()
    cat = c.pick(_cats(t))
    n = c.rng.randint(2, 8)
    return (f"Which {cat.phrase} values have at least {n} {t.plural}? Show each with its number of {t.plural}.",
            f"SELECT {cat.name}, count(*) FROM {t.name} GROUP BY {cat.name} HAVING count(*) >= {n}")


# hard: a nested query, a set operation, a grouped ranking, three clauses ------------------------------------
@template("hard")
def _most_common(c: Ctx):
    t = c.table()
    cat = c.pick(_cats(t))
    order, word = c.pick([("DESC", "most"), ("ASC", "least")])
    q = c.pick(["Which {cat} is the {w} common among {t}?", "What is the {w} common {cat} of the {t}?"])
    return (q.format(cat=cat.phrase, w=word, t=t.plural),
            f"SELECT {cat.name} FROM {t.name} GROUP BY {cat.name} ORDER BY count(*) {order} LIMIT 1")


@template("hard")
def _versus_average(c: Ctx):
    t = c.table()
    sel, num = c.pick(_texts(t)), c.pick(_nums(t))
    op, word = c.pick([(">", "above"), ("<", "below")])
    q = c.pick(["Show the {sel} of {t} whose {num} is {w} the average {num}.",
                "Which {t} have a {num} {w} the average? Show their {sel}."])
    return (q.format(sel=sel.phrase, t=t.plural, num=num.phrase, w=word),
            f"SELECT {sel.name} FROM {t.name} WHERE {num.name} {op} (SELECT avg({num.name}) FROM {t.name})")


@template("hard")
def _parent_without(c: Ctx):
    child, parent = c.child, c.parent
    cat, pname = c.pick(_cats(child)), parent.columns[0]
    v = c.value(child, cat)
    return (f"Show the {pname.phrase} of {parent.plural} that have no {child.plural} with {cat.phrase} {v}.",
            f"SELECT {pname.name} FROM {parent.name} WHERE {parent.key} NOT IN "
            f"(SELECT {child.parent[0]} FROM {child.name} WHERE {cat.name} = {_lit(v)})")


@template("hard")
def _child_in_parent(c: Ctx):
    child, parent = c.child, c.parent
    sel, num = c.pick(_texts(child)), c.pick(_nums(parent))
    op, word = c.pick(ABOVE_BELOW)
    v = c.value(parent, num)
    return (f"Show the {sel.phrase} of {child.plural} whose {parent.singular}'s {num.phrase} is {word} {v}.",
            f"SELECT {sel.name} FROM {child.name} WHERE {child.parent[0]} IN "
            f"(SELECT {parent.key} FROM {parent.name} WHERE {num.name} {op} {v})")


@template("hard")
def _both_ranges(c: Ctx):
    t = c.table()
    cat, num = c.pick(_cats(t)), c.pick(_nums(t))
    a, b = c.two_values(t, num)
    return (f"Which {cat.phrase} values have both {t.plural} with {num.phrase} above {a} and {t.plural} with "
            f"{num.phrase} below {b}?",
            f"SELECT {cat.name} FROM {t.name} WHERE {num.name} > {a} INTERSECT "
            f"SELECT {cat.name} FROM {t.name} WHERE {num.name} < {b}")


@template("hard")
def _either_set(c: Ctx):
    t = c.table()
    cat, num = c.pick(_cats(t)), c.pick(_nums(t))
    a, b = c.two_values(t, num)
    lo, hi = min(a, b), max(a, b)
    return (f"Which {cat.phrase} values have {t.plural} with {num.phrase} below {lo} or {t.plural} with "
            f"{num.phrase} above {hi}?",
            f"SELECT {cat.name} FROM {t.name} WHERE {num.name} < {lo} UNION "
            f"SELECT {cat.name} FROM {t.name} WHERE {num.name} > {hi}")


@template("hard")
def _none_above(c: Ctx):
    t = c.table()
    cat, num = c.pick(_cats(t)), c.pick(_nums(t))
    v = c.value(t, num)
    return (f"Which {cat.phrase} values have no {t.plural} with {num.phrase} above {v}?",
            f"SELECT {cat.name} FROM {t.name} EXCEPT SELECT {cat.name} FROM {t.name} WHERE {num.name} > {v}")


@template("hard")
def _join_sorted(c: Ctx):
    child, parent = c.child, c.parent
    sel, num, pname = c.pick(_texts(child)), c.pick(_nums(child)), parent.columns[0]
    order, word = c.pick([("DESC", "descending"), ("ASC", "ascending")])
    v = c.value(parent, pname)
    return (f"List the {sel.phrase} of {child.plural} whose {parent.singular} has {pname.phrase} {v}, sorted by "
            f"{num.phrase} in {word} order.",
            f"SELECT T1.{sel.name} FROM {_join(child, parent)} WHERE T2.{pname.name} = {_lit(v)} "
            f"ORDER BY T1.{num.name} {order}")


@template("hard")
def _best_group(c: Ctx):
    t = c.table()
    cat, num = c.pick(_cats(t)), c.pick(_nums(t))
    order, word = c.pick(ORDERS)
    q = c.pick(["Which {cat} has the {w} average {num} among {t}?", "Show the {cat} whose {t} have the {w} average {num}."])
    return (q.format(cat=cat.phrase, w=word, num=num.phrase, t=t.plural),
            f"SELECT {cat.name} FROM {t.name} GROUP BY {cat.name} ORDER BY avg({num.name}) {order} LIMIT 1")


# extra: the above combined ----------------------------------------------------------------------------------
@template("extra")
def _parent_with_most(c: Ctx):
    child, parent = c.child, c.parent
    pname = parent.columns[0]
    order, word = c.pick([("DESC", "most"), ("ASC", "fewest")])
    q = c.pick(["What is the {pn} of the {p} with the {w} {c}?", "Which {p} has the {w} {c}? Give its {pn}.",
                "Give the {pn} of the {p} that has the {w} {c}."])
    return (q.format(pn=pname.phrase, p=parent.singular, w=word, c=child.plural),
            f"SELECT T2.{pname.name} FROM {_join(child, parent)} GROUP BY T1.{child.parent[0]} "
            f"ORDER BY count(*) {order} LIMIT 1")


@template("extra")
def _parent_best_average(c: Ctx):
    child, parent = c.child, c.parent
    pname, num = parent.columns[0], c.pick(_nums(child))
    order, word = c.pick(ORDERS)
    q = c.pick(["What is the {pn} of the {p} whose {c} have the {w} average {num}?",
                "Which {p} has {c} with the {w} average {num}? Give its {pn}."])
    return (q.format(pn=pname.phrase, p=parent.singular, c=child.plural, w=word, num=num.phrase),
            f"SELECT T2.{pname.name} FROM {_join(child, parent)} GROUP BY T1.{child.parent[0]} "
            f"ORDER BY avg(T1.{num.name}) {order} LIMIT 1")


@template("extra")
def _versus_average_and(c: Ctx):
    t = c.table()
    sel, num, cat = c.pick(_texts(t)), c.pick(_nums(t)), c.pick(_cats(t))
    op, word = c.pick([(">", "above"), ("<", "below")])
    v = c.value(t, cat)
    return (f"Show the {sel.phrase} of {t.plural} with {cat.phrase} {v} whose {num.phrase} is {word} the average "
            f"{num.phrase}.",
            f"SELECT {sel.name} FROM {t.name} WHERE {num.name} {op} (SELECT avg({num.name}) FROM {t.name}) "
            f"AND {cat.name} = {_lit(v)}")


@template("extra")
def _parents_with_both(c: Ctx):
    child, parent = c.child, c.parent
    cat, pname = c.pick(_cats(child)), parent.columns[0]
    a, b = c.two_values(child, cat)
    side = f"SELECT T2.{pname.name} FROM {_join(child, parent)} WHERE T1.{cat.name} = "
    return (f"Show the {pname.phrase} of {parent.plural} that have both {child.plural} with {cat.phrase} {a} "
            f"and {child.plural} with {cat.phrase} {b}.",
            f"{side}{_lit(a)} INTERSECT {side}{_lit(b)}")


@template("extra")
def _most_common_where(c: Ctx):
    t = c.table()
    cat, num = c.pick(_cats(t)), c.pick(_nums(t))
    v = c.value(t, num)
    return (f"Among {t.plural} with {num.phrase} above {v}, which {cat.phrase} is the most common?",
            f"SELECT {cat.name} FROM {t.name} WHERE {num.name} > {v} GROUP BY {cat.name} "
            f"ORDER BY count(*) DESC LIMIT 1")


@template("extra")
def _top_below_average(c: Ctx):
    t = c.table()
    sel, num = c.pick(_texts(t)), c.pick(_nums(t))
    k = c.rng.randint(1, 5)
    return (f"Among {t.plural} whose {num.phrase} is below the average, show the {sel.phrase} of the {k} with "
            f"the highest {num.phrase}.",
            f"SELECT {sel.name} FROM {t.name} WHERE {num.name} < (SELECT avg({num.name}) FROM {t.name}) "
            f"ORDER BY {num.name} DESC LIMIT {k}")
