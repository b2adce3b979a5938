"""Exact set match (EM) and partial component scores with the semantics of the official Spider evaluator.

The official verdict (taoyds/test-suite-sql-eval ``evaluation.py`` over Spider's ``process_sql.py``) is
defined by that tool's *token grammar*, failures included, so the grammar is re-implemented
(:mod:`text2sql.sql.spider_sql`, whose parse equals the ``sql`` field of every Spider dev example) rather than
a general SQL AST mapped onto it: sqlglot would accept, and an AST would normalise, many queries the official
parser rejects or reads differently. The code is our own; the comparison rules it follows:

Comparison (``evaluation.py`` with ``DISABLE_VALUE`` and ``DISABLE_DISTINCT``):

* values are dropped (a sub-query used as a value is kept and compared structurally), ``DISTINCT`` is
  ignored everywhere, every ``LIMIT`` value reads as 1 (official ``parse_limit`` tests its string token for
  ``int`` and so always returns 1: ``LIMIT 1`` and ``LIMIT 2`` differ nowhere, not even in a sub-query),
  columns linked by foreign keys are identified (outer query only);
* ``JOIN ... ON`` conditions are never compared (only their or/not/in/like keywords count); the later
  first-join-condition check of taoyds/spider's own evaluation.py is not applied (DB-GPT-Hub and the
  test-suite evaluator do not have it);
* each component (select, select(no AGG), where, where(no OP), group(no Having), group, order, and/or, IUEN,
  keywords) scores 1 only when prediction and gold have the same number of units and all of them match as a
  multiset; EM needs every component at 1 and the same multiset of FROM tables;
* a prediction that cannot be parsed is scored as the empty query (so it is never an exact match, but still
  counts in the component accuracies as the official tool counts it);
* reported component F1 per hardness level: accuracy averaged over examples whose prediction has the
  component, recall over examples whose gold has it, F1 their harmonic mean, and 1.0 when both are 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from text2sql.sql.hardness import HARDNESS_LEVELS
from text2sql.sql.spider_sql import (
    SQL_OPS,
    WHERE_OPS,
    MatchParseError,
    MatchSchema,
    _empty_sql,
    load_schemas,
    parse_sql,
    sqlite_tables,
    tokenize,
)

__all__ = [
    "PARTIAL_TYPES",
    "MatchParseError",
    "MatchResult",
    "MatchSchema",
    "ExactMatcher",
    "load_schemas",
    "parse_sql",
    "summarize_match",
    "tokenize",
]

PARTIAL_TYPES = ("select", "select(no AGG)", "where", "where(no OP)", "group(no Having)", "group", "order",
                 "and/or", "IUEN", "keywords")


# ============================================================================================ normalisation


def _drop_values_cond(condition: list) -> list:
    out = []
    for k, unit in enumerate(condition):
        if k % 2:
            out.append(unit)
            continue
        not_op, op_id, vu, v1, v2 = unit
        v1 = _drop_values(v1) if isinstance(v1, dict) else None
        v2 = _drop_values(v2) if isinstance(v2, dict) else None
        out.append((not_op, op_id, vu, v1, v2))
    return out


def _drop_values(sql: dict | None) -> dict | None:
    """Official ``rebuild_sql_val``: values -> None, sub-queries kept (recursively without values); the LIMIT
    value -> 1 as official ``parse_limit`` reads every one."""
    if sql is None:
        return None
    if sql["limit"] is not None:
        sql["limit"] = 1
    sql["from"]["conds"] = _drop_values_cond(sql["from"]["conds"])
    sql["having"] = _drop_values_cond(sql["having"])
    sql["where"] = _drop_values_cond(sql["where"])
    for op in SQL_OPS:
        sql[op] = _drop_values(sql[op])
    return sql


def _valid_columns(table_units: list, schema: MatchSchema) -> set[str]:
    tables = {tid[2:-2] for kind, tid in table_units if kind == "table_unit"}
    return {f"__{t}.{c}__" for t in tables if t in schema.tables for c in schema.tables[t]}


def _norm_col(cu, valid: set[str], fk_map: Mapping[str, str]):
    if cu is None:
        return None
    agg, col_id, _distinct = cu
    if col_id in fk_map and col_id in valid:
        col_id = fk_map[col_id]
    return agg, col_id, None  # DISABLE_DISTINCT


def _norm_val(vu, valid, fk_map):
    if vu is None:
        return None
    op, c1, c2 = vu
    return op, _norm_col(c1, valid, fk_map), _norm_col(c2, valid, fk_map)


def _norm_cond(condition: list, valid, fk_map) -> list:
    return [u if k % 2 else (u[0], u[1], _norm_val(u[2], valid, fk_map), u[3], u[4])
            for k, u in enumerate(condition)]


def _norm_cols(sql: dict | None, valid: set[str], fk_map) -> dict | None:
    """Official ``rebuild_sql_col``: foreign-key columns identified, DISTINCT dropped; set operations use the
    outer query's tables, sub-queries used as values are left as they are (as the official tool does)."""
    if sql is None:
        return None
    sql["select"] = (None, [(agg, _norm_val(vu, valid, fk_map)) for agg, vu in sql["select"][1]])
    sql["from"]["table_units"] = [
        (kind, _norm_col(x, valid, fk_map) if isinstance(x, tuple) else x) for kind, x in sql["from"]["table_units"]]
    sql["from"]["conds"] = _norm_cond(sql["from"]["conds"], valid, fk_map)
    sql["where"] = _norm_cond(sql["where"], valid, fk_map)
    sql["groupBy"] = [_norm_col(cu, valid, fk_map) for cu in sql["groupBy"]]
    if sql["orderBy"]:
        direction, units = sql["orderBy"]
        sql["orderBy"] = (direction, [_norm_val(vu, valid, fk_map) for vu in units])
    sql["having"] = _norm_cond(sql["having"], valid, fk_map)
    for op in SQL_OPS:
        sql[op] = _norm_cols(sql[op], valid, fk_map)
    return sql


def normalize(sql: dict, schema: MatchSchema) -> dict:
    """Values dropped, foreign keys identified, DISTINCT ignored; rewrites ``sql`` (a fresh parse) in place."""
    sql = _drop_values(sql)
    return _norm_cols(sql, _valid_columns(sql["from"]["table_units"], schema), schema.fk_map)


# ============================================================================================ comparison


def _scores(count: int, pred_total: int, label_total: int) -> tuple[int, int, int]:
    if pred_total != label_total:
        return 0, 0, 0
    return (1, 1, 1) if count == pred_total else (0, 0, 0)


def _multiset_hits(pred_units: list, label_units: list) -> int:
    label_units = list(label_units)
    hits = 0
    for unit in pred_units:
        if unit in label_units:
            hits += 1
            label_units.remove(unit)
    return hits


def _keywords(sql: dict) -> set[str]:
    res = set()
    for key, word in (("where", "where"), ("groupBy", "group"), ("having", "having")):
        if sql[key]:
            res.add(word)
    if sql["orderBy"]:
        res.add(sql["orderBy"][0])
        res.add("order")
    if sql["limit"] is not None:
        res.add("limit")
    for op in ("except", "union", "intersect"):
        if sql[op] is not None:
            res.add(op)
    units = sql["from"]["conds"][::2] + sql["where"][::2] + sql["having"][::2]
    connectors = sql["from"]["conds"][1::2] + sql["where"][1::2] + sql["having"][1::2]
    if "or" in connectors:
        res.add("or")
    if any(u[0] for u in units):
        res.add("not")
    if any(u[1] == WHERE_OPS.index("in") for u in units):
        res.add("in")
    if any(u[1] == WHERE_OPS.index("like") for u in units):
        res.add("like")
    return res


def _nested(pred: dict | None, label: dict | None) -> tuple[int, int, int]:
    lt = int(label is not None)
    pt = int(pred is not None)
    cnt = int(_exact(pred, label)[0]) if pred is not None and label is not None else 0
    return lt, pt, cnt


def partial_match(pred: dict, label: dict) -> dict[str, dict[str, int]]:
    """Official ``eval_partial_match`` on normalised structures: per component acc/rec/f1 (each 0 or 1) and
    the unit counts of gold (label_total) and prediction (pred_total)."""
    res: dict[str, dict[str, int]] = {}

    def put(name: str, count: int, pt: int, lt: int) -> None:
        acc, rec, f1 = _scores(count, pt, lt)
        res[name] = {"acc": acc, "rec": rec, "f1": f1, "label_total": lt, "pred_total": pt}

    p_sel, l_sel = pred["select"][1], label["select"][1]
    put("select", _multiset_hits(p_sel, l_sel), len(p_sel), len(l_sel))
    put("select(no AGG)", _multiset_hits([u[1] for u in p_sel], [u[1] for u in l_sel]), len(p_sel), len(l_sel))

    p_where, l_where = pred["where"][::2], label["where"][::2]
    put("where", _multiset_hits(p_where, l_where), len(p_where), len(l_where))
    put("where(no OP)", _multiset_hits([u[2] for u in p_where], [u[2] for u in l_where]), len(p_where), len(l_where))

    # group(no Having): columns compared by their name only (official: the table part is split off)
    def names(units):
        return [cu[1].split(".")[1] if "." in cu[1] else cu[1] for cu in units]

    put("group(no Having)", _multiset_hits(names(pred["groupBy"]), names(label["groupBy"])),
        len(pred["groupBy"]), len(label["groupBy"]))

    pt, lt = int(bool(pred["groupBy"])), int(bool(label["groupBy"]))
    same = pt == lt == 1 and [cu[1] for cu in pred["groupBy"]] == [cu[1] for cu in label["groupBy"]] \
        and pred["having"] == label["having"]
    put("group", int(same), pt, lt)

    pt, lt = int(bool(pred["orderBy"])), int(bool(label["orderBy"]))
    same = bool(label["orderBy"]) and pred["orderBy"] == label["orderBy"] \
        and ((pred["limit"] is None) == (label["limit"] is None))
    put("order", int(same), pt, lt)

    p_ao, l_ao = set(pred["where"][1::2]), set(label["where"][1::2])
    if p_ao == l_ao:
        put("and/or", 1, 1, 1)
    else:  # official: returns (len(pred), len(label), 0) in (label_total, pred_total, cnt) order
        put("and/or", 0, len(l_ao), len(p_ao))

    lt = pt = cnt = 0
    for op in ("intersect", "except", "union"):
        a, b, c = _nested(pred[op], label[op])
        lt, pt, cnt = lt + a, pt + b, cnt + c
    put("IUEN", cnt, pt, lt)

    p_kw, l_kw = _keywords(pred), _keywords(label)
    put("keywords", len(p_kw & l_kw), len(p_kw), len(l_kw))
    return res


def _table_key(unit):
    kind, x = unit
    return (kind, repr(x))  # official sorts the units themselves; repr keeps two sub-queries comparable


def _exact(pred: dict, label: dict) -> tuple[bool, dict]:
    partial = partial_match(pred, label)
    if any(s["f1"] != 1 for s in partial.values()):
        return False, partial
    if label["from"]["table_units"]:
        same = sorted(label["from"]["table_units"], key=_table_key) == sorted(pred["from"]["table_units"],
                                                                             key=_table_key)
        return same, partial
    return True, partial


# ============================================================================================ API


@dataclass
class MatchResult:
    exact: bool
    partial: dict[str, dict[str, int]]
    parsed: bool = True  # False: the prediction could not be parsed (scored as the empty query)
    error: str | None = None
    gold_error: str | None = None  # the gold itself could not be parsed (the official tool would stop)

    def differing(self) -> list[str]:
        """Components whose score is not 1, plus "from" when only the FROM tables differ."""
        out = [k for k in PARTIAL_TYPES if self.partial.get(k, {}).get("f1") != 1]
        if not self.exact and not out:
            out.append("from")
        return out


class ExactMatcher:
    """Exact set match of predictions against gold, per example, with a schema per database.

    ``schemas``: ``db_id -> MatchSchema`` (see :func:`load_schemas`) or the path of a ``tables.json``.
    Gold parses are cached for the matcher's life (the gold never changes between epochs).
    """

    def __init__(self, schemas: Mapping[str, MatchSchema] | str | Path, db_dir: str | Path | None = None) -> None:
        self.schemas = load_schemas(schemas) if isinstance(schemas, (str, Path)) else dict(schemas)
        self.db_dir = Path(db_dir) if db_dir is not None else None
        self._resolved: set[str] = set()
        self._gold: dict[tuple[str, str], tuple[dict | None, str | None]] = {}

    def schema(self, db_id: str) -> MatchSchema | None:
        """tables.json's schema; with ``db_dir``, its tables and columns are those of the SQLite file (as the
        official tool reads them), the foreign keys those of tables.json."""
        schema = self.schemas.get(db_id)
        if schema is not None and self.db_dir is not None and db_id not in self._resolved:
            self._resolved.add(db_id)
            db_file = self.db_dir / db_id / f"{db_id}.sqlite"
            if db_file.is_file():
                try:
                    schema = self.schemas[db_id] = MatchSchema(sqlite_tables(db_file), schema.fk_map)
                except Exception:  # noqa: BLE001 - unreadable file: keep tables.json's schema
                    pass
        return schema

    def _gold_sql(self, db_id: str, gold: str, schema: MatchSchema) -> tuple[dict | None, str | None]:
        key = (db_id, gold)
        hit = self._gold.get(key)
        if hit is None:
            try:
                hit = (normalize(parse_sql(gold, schema), schema), None)
            except MatchParseError as err:
                hit = (None, str(err))
            self._gold[key] = hit
        return hit

    def match(self, db_id: str, gold: str, pred: str) -> MatchResult:
        schema = self.schema(db_id)
        if schema is None:
            return MatchResult(False, {}, False, f"db_id {db_id!r} not in tables.json", gold_error="unknown db_id")
        g, gerr = self._gold_sql(db_id, gold, schema)
        if g is None:
            return MatchResult(False, {}, False, None, gold_error=gerr)
        pred = (pred or "").replace(" value ", " 1 ")  # official (test-suite): placeholder values
        parsed, error = True, None
        try:
            p = normalize(parse_sql(pred, schema), schema)
        except MatchParseError as err:
            p, parsed, error = normalize(_empty_sql(), schema), False, str(err)
        exact, partial = _exact(p, g)
        return MatchResult(bool(exact), partial, parsed, error)

    def match_all(self, items: Iterable[tuple[str, str, str]]) -> list[MatchResult]:
        """Results for ``items`` = (db_id, gold_sql, pred_sql), in order."""
        return [self.match(db_id, gold, pred) for db_id, gold, pred in items]


def summarize_match(results: Iterable[MatchResult], levels: Iterable[str]) -> dict[str, Any]:
    """Official aggregation per hardness level (``levels`` aligned with ``results``; "all" added):
    ``{level: {"count", "exact", "partial": {type: {"acc", "rec", "f1"}}}}``; empty levels have count 0 and
    ``exact`` None. Examples whose gold could not be parsed count as not exact, without partial scores."""
    buckets: dict[str, dict[str, Any]] = {}
    for r, level in zip(results, levels):
        for key in (level, "all"):
            b = buckets.setdefault(key, {"count": 0, "exact": 0, "partial": {
                t: {"acc": 0.0, "rec": 0.0, "acc_count": 0, "rec_count": 0} for t in PARTIAL_TYPES}})
            b["count"] += 1
            b["exact"] += int(r.exact)
            for t, s in r.partial.items():
                p = b["partial"][t]
                if s["pred_total"] > 0:
                    p["acc"] += s["acc"]
                    p["acc_count"] += 1
                if s["label_total"] > 0:
                    p["rec"] += s["rec"]
                    p["rec_count"] += 1
    out: dict[str, Any] = {}
    for level in (*HARDNESS_LEVELS, "all"):
        b = buckets.get(level)
        if not b:
            out[level] = {"count": 0, "exact": None, "partial": {t: None for t in PARTIAL_TYPES}}
            continue
        partial = {}
        for t, p in b["partial"].items():
            acc = p["acc"] / p["acc_count"] if p["acc_count"] else 0.0
            rec = p["rec"] / p["rec_count"] if p["rec_count"] else 0.0
            f1 = 1.0 if acc == 0 and rec == 0 else 2 * acc * rec / (acc + rec)  # official: both 0 -> 1
            partial[t] = {"acc": acc, "rec": rec, "f1": f1}
        out[level] = {"count": b["count"], "exact": b["exact"] / b["count"], "partial": partial}
    return out
