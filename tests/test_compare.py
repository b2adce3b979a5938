"""Denotation comparison: unit rules and a corpus with verdicts derived from the official test-suite rules."""

from __future__ import annotations

import sqlite3

import pytest

from text2sql.eval.compare import (
    ComparisonTimeout,
    order_matters,
    plug_value_variants,
    postprocess,
    remove_distinct,
    replace_cur_year,
    result_eq,
)
from text2sql.eval.execute import ExecutionEvaluator

# ------------------------------------------------------------------------------------------- unit rules


def test_empty_equals_empty_whatever_the_columns():
    assert result_eq([], [], order_matters=False)
    assert result_eq([], [], order_matters=True)
    assert not result_eq([], [(1,)], order_matters=False)
    assert not result_eq([(1,)], [], order_matters=False)


def test_bag_semantics_and_order():
    assert result_eq([(1,), (2,)], [(2,), (1,)], order_matters=False)
    assert not result_eq([(1,), (2,)], [(2,), (1,)], order_matters=True)
    assert not result_eq([(1,), (1,), (2,)], [(1,), (2,), (2,)], order_matters=False)  # same set, other bag
    assert not result_eq([(1,), (1,)], [(1,)], order_matters=False)


def test_column_permutations():
    g = [(1, "a", 2.5), (2, "b", 3.5)]
    p = [("a", 2.5, 1), ("b", 3.5, 2)]
    assert result_eq(g, p, order_matters=False)
    assert result_eq(g, p, order_matters=True)
    # same column value sets, different rows: no permutation works
    assert not result_eq([(1, 2), (3, 4)], [(1, 4), (3, 2)], order_matters=False)
    # more than 3 columns (the official constrained search)
    g5 = [(i, i * 10, str(i), i * 0.5, None) for i in range(6)]
    p5 = [(r[4], r[2], r[0], r[3], r[1]) for r in reversed(g5)]
    assert result_eq(g5, p5, order_matters=False)
    assert not result_eq(g5, p5, order_matters=True)
    assert not result_eq([(1, 2)], [(1, 2, 3)], order_matters=False)


def test_types_nulls_floats():
    assert result_eq([(1,)], [(1.0,)], order_matters=False)  # Python equality, as officially
    assert not result_eq([("1",)], [(1,)], order_matters=False)
    assert result_eq([(None, 1)], [(1, None)], order_matters=False)
    assert not result_eq([(None,)], [(0,)], order_matters=False)
    assert not result_eq([(0.1 + 0.2,)], [(0.3,)], order_matters=False)  # no float tolerance officially


def test_permutation_search_is_bounded():
    import time

    # identical-looking columns: reversal is still found
    g = [tuple([i] * 10) for i in range(3)] + [tuple(range(10))]
    p = [tuple([i] * 10) for i in range(3)] + [tuple(range(9, -1, -1))]
    assert result_eq(g, p, order_matters=False)
    # a Latin square vs the same square with an intercalate swapped: every column fits every column,
    # no permutation matches (8! candidates); the search honours its deadline
    n = 8
    g = [tuple((i + j) % n for j in range(n)) for i in range(n)]
    rows = [list(r) for r in g]
    rows[0][0], rows[0][4] = rows[0][4], rows[0][0]
    rows[4][0], rows[4][4] = rows[4][4], rows[4][0]
    p = [tuple(r) for r in rows]
    with pytest.raises(ComparisonTimeout):
        result_eq(g, p, order_matters=False, deadline=time.monotonic() - 1)


def test_text_normalisation():
    assert postprocess("a > = 1 and b < = 2 and c ! = 3") == "a >= 1 and b <= 2 and c != 3"
    assert remove_distinct("SELECT DISTINCT name FROM t") == "SELECT  name FROM t"
    assert remove_distinct("select count(distinct x) from t") == "select count( x) from t"
    assert remove_distinct("SELECT distinct_count FROM t WHERE a = 'distinct'") == \
        "SELECT distinct_count FROM t WHERE a = 'distinct'"
    assert remove_distinct('SELECT x FROM t WHERE n = "DISTINCT"') == 'SELECT x FROM t WHERE n = "DISTINCT"'
    assert order_matters("SELECT a FROM t ORDER BY a")
    assert not order_matters("SELECT a FROM t")
    assert replace_cur_year("SELECT YEAR(CURDATE()) - 1") == "SELECT 2020- 1"


def test_plug_value_variants_bounded():
    gold = "SELECT name FROM t WHERE age > 30 AND city = 'Paris'"
    pred = "SELECT name FROM t WHERE age > 20 AND city = 'paris'"
    variants = plug_value_variants(gold, pred)
    assert variants[0] == "SELECT name FROM t WHERE age > 30 AND city = 'Paris'"  # aligned first
    assert len(variants) <= 4
    # table aliases / identifiers are not value slots
    assert plug_value_variants("SELECT T1.a FROM t AS T1 WHERE T1.b = 5",
                               "SELECT T1.a FROM t AS T1 WHERE T1.b = 6") == \
        ["SELECT T1.a FROM t AS T1 WHERE T1.b = 5"]
    many_gold = "SELECT a FROM t WHERE " + " OR ".join(f"b = {i}" for i in range(20))
    many_pred = "SELECT a FROM t WHERE " + " OR ".join(f"b = {i + 100}" for i in range(20))
    assert len(plug_value_variants(many_gold, many_pred, limit=50)) == 50  # 20**20 officially
    assert plug_value_variants("SELECT a FROM t", "SELECT a FROM t WHERE b = 1") == []


# ------------------------------------------------------------------------------------------- corpus

PEOPLE = [
    (1, "Ann", 25, 1.5, "Paris"),
    (2, "Bob", 31, 2.25, "Paris"),
    (3, "Cid", 42, 3.0, "Rome"),
    (4, "Dee", 37, 0.5, None),
    (5, "Eve", 29, 2.75, "Rome"),
]


@pytest.fixture(scope="module")
def corpus_db(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus_db")
    (root / "club").mkdir()
    conn = sqlite3.connect(root / "club" / "club.sqlite")
    conn.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, age INTEGER, score REAL, city TEXT)")
    conn.executemany("INSERT INTO people VALUES (?, ?, ?, ?, ?)", PEOPLE)
    conn.commit()
    conn.close()
    return root


# (gold, pred, expected correct, evaluator options); expected from the official exec_eval rules
CORPUS = [
    # column permutations
    ("SELECT name, age FROM people", "SELECT age, name FROM people", True, {}),
    ("SELECT id, name, age, city FROM people", "SELECT city, age, name, id FROM people", True, {}),
    ("SELECT name, age FROM people ORDER BY age", "SELECT age, name FROM people ORDER BY age", True, {}),
    ("SELECT name FROM people", "SELECT name, age FROM people", False, {}),
    # ORDER BY in gold vs not
    ("SELECT name FROM people ORDER BY age", "SELECT name FROM people ORDER BY age DESC", False, {}),
    ("SELECT name FROM people ORDER BY age", "SELECT name FROM people", False, {}),
    ("SELECT name FROM people", "SELECT name FROM people ORDER BY name DESC", True, {}),
    ("SELECT name FROM people ORDER BY age DESC LIMIT 1", "SELECT name FROM people WHERE age = 42", True, {}),
    # duplicates (bag semantics) and DISTINCT
    ("SELECT city FROM people WHERE id IN (1, 2, 3)", "SELECT city FROM people WHERE id IN (1, 3, 5)", False, {}),
    ("SELECT city FROM people", "SELECT DISTINCT city FROM people", True, {}),
    ("SELECT city FROM people", "SELECT DISTINCT city FROM people", False, {"keep_distinct": True}),
    ("SELECT DISTINCT city FROM people", "SELECT DISTINCT city FROM people", True, {"keep_distinct": True}),
    ("SELECT count(DISTINCT city) FROM people", "SELECT count(city) FROM people", True, {}),
    ("SELECT count(DISTINCT city) FROM people", "SELECT count(city) FROM people", False, {"keep_distinct": True}),
    # NULLs
    ("SELECT city FROM people WHERE city IS NULL", "SELECT NULL FROM people WHERE id = 4", True, {}),
    ("SELECT city FROM people WHERE id = 4", "SELECT '' FROM people WHERE id = 4", False, {}),
    ("SELECT name, city FROM people", "SELECT city, name FROM people", True, {}),
    # floats and mixed types
    ("SELECT avg(age) FROM people", "SELECT sum(age) / count(*) FROM people", False, {}),  # 32.8 vs 32
    ("SELECT avg(age) FROM people", "SELECT sum(age) * 1.0 / count(*) FROM people", True, {}),
    ("SELECT max(age) FROM people", "SELECT max(age) * 1.0 FROM people", True, {}),  # 42 == 42.0
    ("SELECT score FROM people WHERE id = 1", "SELECT '1.5' FROM people WHERE id = 1", False, {}),
    ("SELECT id FROM people WHERE id = 1", "SELECT CAST(id AS TEXT) FROM people WHERE id = 1", False, {}),
    # empty results
    ("SELECT name FROM people WHERE age > 100", "SELECT id, name FROM people WHERE age > 200", True, {}),
    ("SELECT name FROM people WHERE age > 100", "SELECT name FROM people WHERE age > 40", False, {}),
    ("SELECT name FROM people WHERE age > 40", "SELECT name FROM people WHERE age > 100", False, {}),
    # value changes, with and without plug-value
    ("SELECT name FROM people WHERE age > 30", "SELECT name FROM people WHERE age > 27", False, {}),
    ("SELECT name FROM people WHERE age > 30", "SELECT name FROM people WHERE age > 27", True,
     {"plug_value": True}),
    ("SELECT id FROM people WHERE city = 'Rome'", "SELECT id FROM people WHERE city = 'rome'", False, {}),
    ("SELECT id FROM people WHERE city = 'Rome'", "SELECT id FROM people WHERE city = 'rome'", True,
     {"plug_value": True}),
    ("SELECT id FROM people WHERE city = \"Rome\"", "SELECT id FROM people WHERE city = 'Milan'", True,
     {"plug_value": True}),
    ("SELECT id FROM people WHERE city = 'Rome'", "SELECT name FROM people WHERE city = 'Paris'", False,
     {"plug_value": True}),  # the structure is wrong, values cannot fix it
    # official text normalisations
    ("SELECT name FROM people WHERE age >= 31", "SELECT name FROM people WHERE age > = 31", True, {}),
    ("SELECT name FROM people WHERE age != 31", "SELECT name FROM people WHERE age ! = 31", True, {}),
    ("SELECT name FROM people WHERE id = 1", "SELECT name FROM people WHERE id = value AND age > 0", True, {}),
]


@pytest.mark.parametrize("gold,pred,expected,opts", CORPUS)
def test_corpus(corpus_db, gold, pred, expected, opts):
    with ExecutionEvaluator(corpus_db, workers=0, timeout=5, **opts) as ev:
        (v,) = ev.evaluate([("club", gold, pred)])
    assert v.correct is expected, (v, gold, pred)
    assert v.status == ("correct" if expected else "wrong_result")


def test_corpus_same_verdicts_with_worker_processes(corpus_db):
    by_opts: dict = {}
    for gold, pred, expected, opts in CORPUS:
        by_opts.setdefault(tuple(sorted(opts.items())), []).append((gold, pred, expected))
    for key, cases in by_opts.items():
        with ExecutionEvaluator(corpus_db, workers=2, timeout=5, **dict(key)) as ev:
            verdicts = ev.evaluate([("club", g, p) for g, p, _ in cases])
        assert [v.correct for v in verdicts] == [e for _, _, e in cases], key
