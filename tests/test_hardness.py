"""Spider hardness on a sqlglot AST, checked against the official split of the dev set."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from text2sql.sql.hardness import hardness, hardness_counts


@pytest.mark.parametrize("sql,level", [
    ("SELECT count(*) FROM singer", "easy"),
    ("SELECT name FROM singer WHERE age > 30", "easy"),
    ("SELECT name, country, age FROM singer ORDER BY age DESC", "medium"),
    ("SELECT T2.name FROM a AS T1 JOIN b AS T2 ON T1.id = T2.id WHERE T1.x = \"v\"", "medium"),
    ("SELECT name FROM t WHERE a = 1 OR b LIKE '%x%'", "hard"),
    ("SELECT name FROM t WHERE a NOT IN (SELECT a FROM u)", "hard"),
    ("SELECT name FROM t UNION SELECT name FROM u", "hard"),
    ("SELECT a, count(*) FROM t JOIN u ON t.x = u.x GROUP BY a ORDER BY count(*) DESC LIMIT 1", "extra"),
    ("SELECT name FROM t WHERE a > (SELECT avg(a) FROM t) INTERSECT SELECT name FROM u", "extra"),
])
def test_examples(sql, level):
    assert hardness(sql) == level


def test_double_quoted_strings_are_values():
    # "Paris" must be read as a string value, not an identifier, and must not break parsing
    assert hardness_counts('SELECT a FROM t WHERE city = "Paris" AND name LIKE "%a\'b%"') == (2, 0, 1)


def test_set_operation_clauses_belong_to_the_last_operand():
    # process_sql attaches ORDER BY / LIMIT after a set operation to the nested (right) query
    assert hardness_counts("SELECT a FROM t UNION SELECT a FROM u ORDER BY a LIMIT 3") == (0, 1, 0)


def test_unparsable_is_extra():
    assert hardness("this is not sql (") == "extra"


def _official_counts(s: dict) -> tuple[int, int, int]:
    """The official count_component1/2 and count_others on Spider's own parsed `sql` dict."""
    def count_agg(units):
        return len([u for u in units if u[0] != 0])

    c1 = int(len(s["where"]) > 0) + int(len(s["groupBy"]) > 0) + int(len(s["orderBy"]) > 0)
    c1 += int(s["limit"] is not None) + max(len(s["from"]["table_units"]) - 1, 0)
    ao = s["from"]["conds"][1::2] + s["where"][1::2] + s["having"][1::2]
    units = s["from"]["conds"][::2] + s["where"][::2] + s["having"][::2]
    c1 += ao.count("or") + len([u for u in units if u[1] == 9])  # 9 = like
    c2 = sum(isinstance(u[3], dict) + isinstance(u[4], dict) for u in units)
    c2 += sum(s[k] is not None for k in ("intersect", "except", "union"))
    agg = count_agg(s["select"][1]) + count_agg(s["where"][::2]) + count_agg(s["groupBy"])
    if s["orderBy"]:
        agg += count_agg([u[1] for u in s["orderBy"][1] if u[1]] + [u[2] for u in s["orderBy"][1] if u[2]])
    agg += count_agg(s["having"])
    others = int(agg > 1) + int(len(s["select"][1]) > 1) + int(len(s["where"]) > 1) + int(len(s["groupBy"]) > 1)
    return c1, c2, others


def test_dev_split_matches_official(spider_dir):
    dev = json.loads((spider_dir / "dev.json").read_text())
    assert len(dev) == 1034
    counts = Counter(hardness(ex["query"]) for ex in dev)
    assert counts == {"easy": 248, "medium": 446, "hard": 174, "extra": 166}
    # and per example, the same component counts as the official functions on Spider's parse
    mismatches = [ex["query"] for ex in dev if hardness_counts(ex["query"]) != _official_counts(ex["sql"])]
    assert not mismatches, mismatches[:5]


def test_dev_gold_file_matches(spider_dir):
    lines = (spider_dir / "dev_gold.sql").read_text().splitlines()
    counts = Counter(hardness(line.split("\t")[0]) for line in lines if line.strip())
    assert counts == {"easy": 248, "medium": 446, "hard": 174, "extra": 166}
