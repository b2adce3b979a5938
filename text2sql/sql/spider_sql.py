"""Spider's SQL grammar as the official evaluator parses it (``process_sql.py``): the structure that exact set
match compares and that hardness is counted on. The code is our own; the rules it follows:

* single quotes become double quotes, quoted text is one value token (an odd number of quotes fails); the
  rest is split as nltk's ``word_tokenize`` splits it (checked against nltk on all Spider queries), so an
  unspaced ``=`` glues to its neighbours;
* only *tables* may have aliases, found by scanning every ``X AS Y`` of the whole query: a column alias
  (``SELECT count(*) AS n``) or a table alias without ``AS`` (``FROM singer s``) makes the query unparsable;
* a select item, group-by item or order-by item is at most ``col op col`` (``a - b``); aggregates are
  ``max/min/count/sum/avg`` of one column; ``IN (1, 2)``, ``IS NULL``, ``EXISTS``, ``CASE``, ``CAST`` and other
  functions are unparsable; a column used as a value swallows the tokens up to the next ``,``, ``)``, ``AND``
  or keyword (``a < b OR c > d`` is one condition); text after the first complete query is ignored.

With :data:`OPEN_SCHEMA` every table and column name is accepted: enough to count a gold query's components
(its hardness) without its database.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

__all__ = ["MatchParseError", "MatchSchema", "OPEN_SCHEMA", "load_schemas", "parse_sql", "sqlite_tables",
           "tokenize", "hardness_counts"]

CLAUSE_KEYWORDS = ("select", "from", "where", "group", "order", "limit", "intersect", "union", "except")
JOIN_KEYWORDS = ("join", "on", "as")
WHERE_OPS = ("not", "between", "=", ">", "<", ">=", "<=", "!=", "in", "like", "is", "exists")
UNIT_OPS = ("none", "-", "+", "*", "/")
AGG_OPS = ("none", "max", "min", "count", "sum", "avg")
COND_OPS = ("and", "or")
SQL_OPS = ("intersect", "union", "except")
ORDER_OPS = ("desc", "asc")


class MatchParseError(ValueError):
    """The official parser would reject this query."""


# ============================================================================================ schema


@dataclass(frozen=True)
class MatchSchema:
    """What the official parser knows of one database: lower-cased tables -> columns, and the foreign-key map
    (every column of a foreign-key group -> the group's lowest-index column)."""

    tables: Mapping[str, tuple[str, ...]]
    fk_map: Mapping[str, str]

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any]) -> "MatchSchema":
        table_names = [str(t).lower() for t in entry["table_names_original"]]
        tables: dict[str, list[str]] = {t: [] for t in table_names}
        cols = []
        for t_idx, name in entry["column_names_original"]:
            if t_idx >= 0:
                table = table_names[t_idx]
                tables[table].append(str(name).lower())
                cols.append(f"__{table}.{str(name).lower()}__")
            else:
                cols.append("__all__")
        groups: list[set[int]] = []
        for a, b in entry.get("foreign_keys", []):
            group = next((g for g in groups if a in g or b in g), None)
            if group is None:
                group = set()
                groups.append(group)
            group.update((a, b))
        fk_map = {}
        for group in groups:
            ids = sorted(group)
            for i in ids:
                fk_map[cols[i]] = cols[ids[0]]
        return cls({t: tuple(c) for t, c in tables.items()}, fk_map)

    open: bool = False  # OPEN_SCHEMA: any table and column exists

    def has_column(self, table: str, column: str) -> bool:
        return self.open or column in self.tables.get(table, ())

    def column_id(self, table: str, column: str) -> str:
        if not self.has_column(table, column):
            raise MatchParseError(f"unknown column {table}.{column}")
        return f"__{table}.{column}__"

    def table_id(self, table: str) -> str:
        if table not in self.tables and not self.open:
            raise MatchParseError(f"unknown table {table}")
        return f"__{table}__"


def sqlite_tables(db_file: str | Path) -> dict[str, tuple[str, ...]]:
    """Tables -> columns of an SQLite file, lower-cased, read-only: the official parser takes its schema from
    the database itself (tables.json misses a few tables that real queries use)."""
    import sqlite3

    uri = Path(db_file).resolve().as_uri() + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True)
    try:
        names = [str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        out = {}
        for name in names:
            cols = conn.execute("SELECT name FROM pragma_table_info(?)", (name,)).fetchall()
            out[name.lower()] = tuple(str(c[0]).lower() for c in cols)
        return out
    finally:
        conn.close()


def load_schemas(tables_json: str | Path) -> dict[str, MatchSchema]:
    """db_id -> :class:`MatchSchema` for every entry of a Spider ``tables.json``."""
    path = Path(tables_json)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        return {e["db_id"]: MatchSchema.from_entry(e) for e in entries}
    except FileNotFoundError:
        raise FileNotFoundError(f"tables.json not found: {path}") from None
    except (ValueError, KeyError, TypeError, IndexError) as err:
        raise ValueError(f"{path}: not a Spider tables.json ({type(err).__name__}: {err})") from None


# ============================================================================================ tokens

# nltk's word_tokenize (what the official tokenizer calls), reduced to the rules that can fire once quoted
# values are placeholders: brackets, < > * ; ! ? @ # $ % & and backticks stand alone, a comma or colon only
# when no digit follows, "--" and "..." stand alone, a final period is split off. "=", "+", "-", "/" and "." are
# never split: "age>=20" is "age > =20" and "a=1" one token, both unparsable, as for the official tool.
_NLTK_RULES = [
    (re.compile(r"([«“‘„]|[`]+)"), r" \1 "),
    (re.compile(r"([^\.])(\.)([\]\)}>»”’ ]*)\s*$"), r"\1 \2 \3 "),
    (re.compile(r"([:,])([^\d])"), r" \1 \2"),
    (re.compile(r"([:,])$"), r" \1 "),
    (re.compile(r"\.{2,}"), r" \g<0> "),
    (re.compile(r"[;@#$%&]"), r" \g<0> "),
    (re.compile(r"[\u2012-\u2015]"), r" \g<0> "),
    (re.compile(r"([^\.])(\.)([\]\)}>]*)\s*$"), r"\1 \2\3 "),
    (re.compile(r"[?!]"), r" \g<0> "),
    (re.compile(r"[*]"), r" \g<0> "),
    (re.compile(r"[\]\[\(\)\{\}\<\>]"), r" \g<0> "),
    (re.compile(r"--"), r" -- "),
    (re.compile(r"(?i)\b(can)(not)\b"), r" \1 \2 "),
]


def _word_split(text: str) -> list[str]:
    for rule, sub in _NLTK_RULES:
        text = rule.sub(sub, text)
    return text.split()


def tokenize(sql: str) -> list[str]:
    """Official ``process_sql.tokenize``: single quotes become double quotes, each quoted value is replaced
    by a placeholder *in place* (so ``name='x'`` stays glued to ``name=``), the text is split as nltk's
    word_tokenize splits it, lower-cased, values put back, and ``! =``/``> =``/``< =`` merged."""
    text = str(sql).replace("'", '"')
    quotes = [i for i, ch in enumerate(text) if ch == '"']
    if len(quotes) % 2:
        raise MatchParseError("unexpected quote")
    values: dict[str, str] = {}
    parts, last = [], 0
    for k in range(0, len(quotes), 2):
        start, end = quotes[k], quotes[k + 1]
        key = f"__val_{start}_{end}__"
        values[key] = text[start:end + 1]
        parts.append(text[last:start])
        parts.append(key)
        last = end + 1
    parts.append(text[last:])
    toks = [values.get(t, t) for t in (w.lower() for w in _word_split("".join(parts)))]
    for i in range(len(toks) - 1, 0, -1):  # official: right to left, "=" joins the token before it
        if toks[i] == "=" and toks[i - 1] in ("!", ">", "<"):
            toks[i - 1:i + 1] = [toks[i - 1] + "="]
    return toks


# ============================================================================================ parser


def _empty_sql() -> dict:
    """What the official evaluator scores an unparsable prediction as."""
    return {"except": None, "from": {"conds": [], "table_units": []}, "groupBy": [], "having": [],
            "intersect": None, "limit": None, "orderBy": [], "select": [False, []], "union": None, "where": []}


class _Parser:
    """Recursive descent over the official grammar; every failure raises :class:`MatchParseError`."""

    def __init__(self, toks: list[str], schema: MatchSchema) -> None:
        self.toks = toks
        self.n = len(toks)
        self.schema = schema
        aliases: dict[str, str] = {}
        for i, tok in enumerate(toks):  # every "X AS Y" of the query, columns included
            if tok == "as":
                if i + 1 >= self.n or i == 0:
                    raise MatchParseError("dangling AS")
                aliases[toks[i + 1]] = toks[i - 1]
        for table in schema.tables:
            if table in aliases:
                raise MatchParseError(f"alias {table} has the name of a table")
            aliases[table] = table
        self.aliases = aliases

    def tok(self, i: int) -> str:
        if i >= self.n:
            raise MatchParseError("unexpected end of query")
        return self.toks[i]

    def expect(self, i: int, what: str) -> int:
        if self.tok(i) != what:
            raise MatchParseError(f"expected {what!r}, got {self.toks[i]!r}")
        return i + 1

    def table_of(self, alias: str) -> str:
        if alias not in self.aliases:
            if self.schema.open:
                return alias
            raise MatchParseError(f"unknown table or alias {alias!r}")
        return self.aliases[alias]

    # -- units
    def col(self, i: int, default_tables: list[str] | None) -> tuple[int, str]:
        tok = self.tok(i)
        if tok == "*":
            return i + 1, "__all__"
        if "." in tok:
            parts = tok.split(".")
            if len(parts) != 2:
                raise MatchParseError(f"bad column {tok!r}")
            return i + 1, self.schema.column_id(self.table_of(parts[0]), parts[1])
        if not default_tables:
            raise MatchParseError("column outside any FROM table")
        for alias in default_tables:
            table = self.table_of(alias)
            if self.schema.has_column(table, tok):
                return i + 1, self.schema.column_id(table, tok)
        raise MatchParseError(f"unknown column {tok!r}")

    def col_unit(self, i: int, default_tables) -> tuple[int, tuple]:
        block = distinct = False
        if self.tok(i) == "(":
            block, i = True, i + 1
        if self.tok(i) in AGG_OPS:
            agg = AGG_OPS.index(self.tok(i))
            i = self.expect(i + 1, "(")
            if self.tok(i) == "distinct":
                distinct, i = True, i + 1
            i, col_id = self.col(i, default_tables)
            i = self.expect(i, ")")
            return i, (agg, col_id, distinct)  # official: the block's ")" is left to the caller
        if self.tok(i) == "distinct":
            distinct, i = True, i + 1
        i, col_id = self.col(i, default_tables)
        if block:
            i = self.expect(i, ")")
        return i, (0, col_id, distinct)

    def val_unit(self, i: int, default_tables) -> tuple[int, tuple]:
        block = False
        if self.tok(i) == "(":
            block, i = True, i + 1
        i, unit1 = self.col_unit(i, default_tables)
        op, unit2 = 0, None
        if i < self.n and self.toks[i] in UNIT_OPS:
            op = UNIT_OPS.index(self.toks[i])
            i, unit2 = self.col_unit(i + 1, default_tables)
        if block:
            i = self.expect(i, ")")
        return i, (op, unit1, unit2)

    def table_unit(self, i: int) -> tuple[int, str, str]:
        table = self.table_of(self.tok(i))
        i = i + 3 if i + 1 < self.n and self.toks[i + 1] == "as" else i + 1
        return i, self.schema.table_id(table), table

    def value(self, i: int, default_tables) -> tuple[int, Any]:
        start = i
        block = False
        if self.tok(i) == "(":
            block, i = True, i + 1
        tok = self.tok(i)
        if tok == "select":
            i, val = self.sql(i)
        elif '"' in tok:
            val, i = tok, i + 1
        else:
            try:
                val, i = float(tok), i + 1
            except ValueError:
                # official: a column value is parsed from the tokens up to the next , ) AND or keyword,
                # starting at the bracket when there is one
                end = i
                while end < self.n and self.toks[end] not in (",", ")", "and") \
                        and self.toks[end] not in CLAUSE_KEYWORDS and self.toks[end] not in JOIN_KEYWORDS:
                    end += 1
                sub = _Parser.__new__(_Parser)
                sub.toks, sub.n, sub.schema, sub.aliases = self.toks[start:end], end - start, self.schema, self.aliases
                _, val = sub.col_unit(0, default_tables)
                i = end
        if block:
            i = self.expect(i, ")")
        return i, val

    def condition(self, i: int, default_tables) -> tuple[int, list]:
        conds: list = []
        while i < self.n:
            i, vu = self.val_unit(i, default_tables)
            not_op = False
            if self.tok(i) == "not":
                not_op, i = True, i + 1
            op = self.tok(i)
            if op not in WHERE_OPS:
                raise MatchParseError(f"bad condition operator {op!r}")
            op_id = WHERE_OPS.index(op)
            i += 1
            val2 = None
            if op == "between":
                i, val1 = self.value(i, default_tables)
                i = self.expect(i, "and")
                i, val2 = self.value(i, default_tables)
            else:
                i, val1 = self.value(i, default_tables)
            conds.append((not_op, op_id, vu, val1, val2))
            if i < self.n and (self.toks[i] in CLAUSE_KEYWORDS or self.toks[i] in (")", ";")
                               or self.toks[i] in JOIN_KEYWORDS):
                break
            if i < self.n and self.toks[i] in COND_OPS:
                conds.append(self.toks[i])
                i += 1
        return i, conds

    # -- clauses
    def select(self, i: int, default_tables) -> tuple[int, tuple]:
        i = self.expect(i, "select")
        distinct = False
        if i < self.n and self.toks[i] == "distinct":
            distinct, i = True, i + 1
        units = []
        while i < self.n and self.toks[i] not in CLAUSE_KEYWORDS:
            agg = 0
            if self.toks[i] in AGG_OPS:
                agg, i = AGG_OPS.index(self.toks[i]), i + 1
            i, vu = self.val_unit(i, default_tables)
            units.append((agg, vu))
            if i < self.n and self.toks[i] == ",":
                i += 1
        return i, (distinct, units)

    def from_(self, start: int) -> tuple[int, list, list, list]:
        try:
            i = self.toks.index("from", start) + 1
        except ValueError:
            raise MatchParseError("FROM not found") from None
        default_tables: list[str] = []
        units: list = []
        conds: list = []
        while i < self.n:
            block = False
            if self.toks[i] == "(":
                block, i = True, i + 1
            if self.tok(i) == "select":
                i, sub = self.sql(i)
                units.append(("sql", sub))
            else:
                if self.toks[i] == "join":
                    i += 1
                i, table_id, table = self.table_unit(i)
                units.append(("table_unit", table_id))
                default_tables.append(table)
            if i < self.n and self.toks[i] == "on":
                i, these = self.condition(i + 1, default_tables)
                if conds:
                    conds.append("and")
                conds.extend(these)
            if block:
                i = self.expect(i, ")")
            if i < self.n and (self.toks[i] in CLAUSE_KEYWORDS or self.toks[i] in (")", ";")):
                break
        return i, units, conds, default_tables

    def group_by(self, i: int, default_tables) -> tuple[int, list]:
        units: list = []
        if i >= self.n or self.toks[i] != "group":
            return i, units
        i = self.expect(i + 1, "by")
        while i < self.n and not (self.toks[i] in CLAUSE_KEYWORDS or self.toks[i] in (")", ";")):
            i, cu = self.col_unit(i, default_tables)
            units.append(cu)
            if i < self.n and self.toks[i] == ",":
                i += 1
            else:
                break
        return i, units

    def order_by(self, i: int, default_tables) -> tuple[int, Any]:
        units: list = []
        direction = "asc"
        if i >= self.n or self.toks[i] != "order":
            return i, units
        i = self.expect(i + 1, "by")
        while i < self.n and not (self.toks[i] in CLAUSE_KEYWORDS or self.toks[i] in (")", ";")):
            i, vu = self.val_unit(i, default_tables)
            units.append(vu)
            if i < self.n and self.toks[i] in ORDER_OPS:
                direction, i = self.toks[i], i + 1  # official: the last direction given wins for all keys
            if i < self.n and self.toks[i] == ",":
                i += 1
            else:
                break
        return i, (direction, units)

    def conditions_clause(self, i: int, keyword: str, default_tables) -> tuple[int, list]:
        if i >= self.n or self.toks[i] != keyword:
            return i, []
        return self.condition(i + 1, default_tables)

    def limit(self, i: int) -> tuple[int, int | None]:
        if i < self.n and self.toks[i] == "limit":
            value = self.tok(i + 1)  # official: any token (a placeholder too), read as 1 by the matcher
            return i + 2, int(value) if value.isdigit() else 1
        return i, None

    def skip_semicolons(self, i: int) -> int:
        while i < self.n and self.toks[i] == ";":
            i += 1
        return i

    def sql(self, start: int) -> tuple[int, dict]:
        i = start
        block = False
        if self.tok(i) == "(":
            block, i = True, i + 1
        from_end, units, from_conds, default_tables = self.from_(start)
        out: dict[str, Any] = {"from": {"table_units": units, "conds": from_conds}}
        _, out["select"] = self.select(i, default_tables)
        i = from_end
        i, out["where"] = self.conditions_clause(i, "where", default_tables)
        i, out["groupBy"] = self.group_by(i, default_tables)
        i, out["having"] = self.conditions_clause(i, "having", default_tables)
        i, out["orderBy"] = self.order_by(i, default_tables)
        i, out["limit"] = self.limit(i)
        i = self.skip_semicolons(i)
        if block:
            i = self.expect(i, ")")
        i = self.skip_semicolons(i)
        for op in SQL_OPS:
            out[op] = None
        if i < self.n and self.toks[i] in SQL_OPS:
            op = self.toks[i]
            i, out[op] = self.sql(i + 1)
        return i, out


def parse_sql(sql: str, schema: MatchSchema) -> dict:
    """The official structure of ``sql`` (``process_sql.get_sql``); raises :class:`MatchParseError`.
    Tokens after the first complete query are ignored, as the official parser ignores them."""
    toks = tokenize(sql)
    parser = _Parser(toks, schema)
    try:
        _, out = parser.sql(0)
    except RecursionError:
        raise MatchParseError("query nested too deeply") from None
    return out


OPEN_SCHEMA = MatchSchema({}, {}, open=True)


def hardness_counts(sql: dict) -> tuple[int, int, int]:
    """(component1, component2, others) of a parsed query, as ``evaluation.py`` counts them for hardness."""
    conds = sql["from"]["conds"][::2] + sql["where"][::2] + sql["having"][::2]
    connectors = sql["from"]["conds"][1::2] + sql["where"][1::2] + sql["having"][1::2]
    comp1 = (int(bool(sql["where"])) + int(bool(sql["groupBy"])) + int(bool(sql["orderBy"]))
             + int(sql["limit"] is not None) + max(len(sql["from"]["table_units"]) - 1, 0)
             + connectors.count("or") + sum(c[1] == WHERE_OPS.index("like") for c in conds))
    comp2 = sum(isinstance(c[3], dict) + isinstance(c[4], dict) for c in conds)
    comp2 += sum(sql[op] is not None for op in SQL_OPS)

    def aggs(units) -> int:  # official count_agg: unit[0] is an aggregate id for select items and column
        return sum(u[0] != 0 for u in units)  # units, but not_op for conditions (a quirk kept on purpose)

    agg = aggs(sql["select"][1]) + aggs(sql["where"][::2]) + aggs(sql["groupBy"])
    if sql["orderBy"]:
        units = sql["orderBy"][1]
        agg += aggs([u[1] for u in units if u[1]] + [u[2] for u in units if u[2]])
    agg += aggs(sql["having"])  # official: the whole list, and/or strings included
    others = int(agg > 1) + int(len(sql["select"][1]) > 1) + int(len(sql["where"]) > 1) + int(len(sql["groupBy"]) > 1)
    return comp1, comp2, others
