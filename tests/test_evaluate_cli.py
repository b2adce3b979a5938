"""`text2sql evaluate`: files in the official formats, table + status counts, OUT.jsonl, clear errors."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter

import pytest

from text2sql.cli import main


@pytest.fixture()
def files(tmp_path):
    db = tmp_path / "database" / "zoo" / "zoo.sqlite"
    db.parent.mkdir(parents=True)
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE animal (id INTEGER, name TEXT, legs INTEGER)")
    conn.executemany("INSERT INTO animal VALUES (?, ?, ?)", [(1, "cat", 4), (2, "bird", 2), (3, "snake", 0)])
    conn.commit()
    conn.close()
    gold = tmp_path / "gold.sql"
    gold.write_text("SELECT count(*) FROM animal\tzoo\n"
                    "SELECT name FROM animal WHERE legs > 1 ORDER BY legs DESC\tzoo\n"
                    "SELECT name, legs FROM animal\tzoo\n"
                    "SELECT name FROM animal\tzoo\n"
                    "SELECT name FROM animal\tmissing_db\n")
    pred = tmp_path / "pred.sql"
    pred.write_text("SELECT count(*) FROM animal\n"
                    "SELECT name FROM animal WHERE legs > 1 ORDER BY legs ASC\n"
                    "SELECT legs, name FROM animal\n"
                    "\n"
                    "SELECT name FROM animal\n")
    return tmp_path, gold, pred


def test_evaluate_writes_table_and_jsonl(files, capsys):
    tmp_path, gold, pred = files
    out = tmp_path / "out" / "verdicts.jsonl"
    rc = main(["evaluate", "--gold", str(gold), "--pred", str(pred), "--db", str(tmp_path / "database"),
               "--out", str(out), "--workers", "1", "--timeout", "5"])
    assert rc == 0
    text = capsys.readouterr().out
    for word in ("easy", "medium", "hard", "extra", "all", "count", "execution", "correct", "db_missing",
                 "empty_prediction"):
        assert word in text
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["status"] for r in rows] == ["correct", "wrong_result", "correct", "empty_prediction", "db_missing"]
    assert [r["correct"] for r in rows] == [True, False, True, False, False]
    assert all({"correct", "status", "hardness", "db_id", "error"} <= set(r) for r in rows)
    assert rows[4]["db_id"] == "missing_db"
    assert "0.400" in text  # 2 of 5


def test_line_count_mismatch_is_one_error(files, capsys):
    tmp_path, gold, pred = files
    pred.write_text("SELECT 1\n")
    rc = main(["evaluate", "--gold", str(gold), "--pred", str(pred), "--db", str(tmp_path / "database")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "line count mismatch" in err


def test_missing_db_dir_is_one_error(files, capsys):
    tmp_path, gold, pred = files
    rc = main(["evaluate", "--gold", str(gold), "--pred", str(pred), "--db", str(tmp_path / "nope")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "database directory not found" in err


def test_missing_gold_file_is_one_error(files, capsys):
    tmp_path, gold, pred = files
    rc = main(["evaluate", "--gold", str(tmp_path / "nope.sql"), "--pred", str(pred), "--db", str(tmp_path)])
    assert rc == 2 and "gold file not found" in capsys.readouterr().err


def test_spider_dev_gold_against_itself(spider_dir, tmp_path, capsys):
    """Done-when: EX 1.000 on the 972 executable dev examples; the 62 wta_1 ones are db_missing."""
    gold = spider_dir / "dev_gold.sql"
    pred = tmp_path / "pred.sql"
    pred.write_text("".join(line.split("\t")[0] + "\n" for line in gold.read_text().splitlines()))
    out = tmp_path / "out.jsonl"
    rc = main(["evaluate", "--gold", str(gold), "--pred", str(pred), "--db", str(spider_dir / "database"),
               "--out", str(out), "--no-progress"])
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 1034
    assert Counter(r["status"] for r in rows) == {"correct": 972, "db_missing": 62}
    assert {r["db_id"] for r in rows if r["status"] == "db_missing"} == {"wta_1"}
    assert Counter(r["hardness"] for r in rows) == {"easy": 248, "medium": 446, "hard": 174, "extra": 166}


def test_flags_are_accepted(files, capsys):
    tmp_path, gold, pred = files
    gold.write_text("SELECT name FROM animal WHERE legs = 4\tzoo\nSELECT DISTINCT legs FROM animal\tzoo\n")
    pred.write_text("SELECT name FROM animal WHERE legs = 2\nSELECT legs FROM animal\n")
    out = tmp_path / "v.jsonl"
    args = ["evaluate", "--gold", str(gold), "--pred", str(pred), "--db", str(tmp_path / "database"),
            "--timeout", "3", "--workers", "0", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    assert [json.loads(x)["correct"] for x in out.read_text().splitlines()] == [False, True]
    assert main(args + ["--plug-value", "--keep-distinct"]) == 0
    assert [json.loads(x)["correct"] for x in out.read_text().splitlines()] == [True, True]
    assert main(args + ["--test-suite"]) == 0
    assert "test suite" in capsys.readouterr().out
    assert main(args[:-5] + ["--timeout", "0"]) == 2
