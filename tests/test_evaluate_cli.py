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


ZOO_TABLES = [{"db_id": "zoo", "table_names_original": ["animal"],
               "column_names_original": [[-1, "*"], [0, "id"], [0, "name"], [0, "legs"]],
               "column_types": ["text", "number", "text", "number"], "primary_keys": [1], "foreign_keys": []}]


def test_etype_all_prints_em_beside_ex_and_writes_components(files, capsys):
    tmp_path, gold, pred = files
    (tmp_path / "tables.json").write_text(json.dumps(ZOO_TABLES))  # beside --db: found without --tables
    questions = tmp_path / "dev.json"
    questions.write_text(json.dumps([{"question": f"q{i}", "db_id": "zoo"} for i in range(5)]))
    out = tmp_path / "v.jsonl"
    rc = main(["evaluate", "--gold", str(gold), "--pred", str(pred), "--db", str(tmp_path / "database"),
               "--etype", "all", "--questions", str(questions), "--out", str(out), "--workers", "0",
               "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "execution" in text and "exact match" in text and "keywords" in text and "select(no AGG)" in text
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2, 3, 4]
    assert [r["question"] for r in rows] == ["q0", "q1", "q2", "q3", "q4"]
    assert rows[1]["gold"].startswith("SELECT name FROM animal WHERE") and rows[1]["prediction"].endswith("ASC")
    # count(*) same; ORDER BY direction flipped; select items permuted; empty prediction; db unknown
    assert [r["exact_match"] for r in rows] == [True, False, True, False, False]
    assert rows[1]["match_differs"] == ["order", "keywords"] and rows[1]["status"] == "wrong_result"
    assert rows[0]["match_differs"] == [] and "match_error" in rows[3] and "match_error" in rows[4]
    # exact match over all 5 is 2/5, as EX: both print 0.400
    assert text.count("0.400") >= 2


def test_etype_match_needs_no_execution_and_empty_levels_print_a_dash(files, capsys):
    tmp_path, gold, pred = files
    tables = tmp_path / "elsewhere.json"
    tables.write_text(json.dumps(ZOO_TABLES))
    out = tmp_path / "v.jsonl"
    rc = main(["evaluate", "--gold", str(gold), "--pred", str(pred), "--db", str(tmp_path / "database"),
               "--etype", "match", "--tables", str(tables), "--out", str(out), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "exact match" in text and "execution" not in text and "status" not in text
    assert "—" in text  # no hard / extra example: an empty level is "—", not 0.000
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert "status" not in rows[0] and [r["exact_match"] for r in rows] == [True, False, True, False, False]


def test_etype_match_without_tables_json_is_one_error(files, capsys):
    tmp_path, gold, pred = files
    rc = main(["evaluate", "--gold", str(gold), "--pred", str(pred), "--db", str(tmp_path / "database"),
               "--etype", "match"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "tables.json" in err and "--tables" in err


def test_db_dir_without_gold_databases_is_refused_with_a_hint(files, capsys):
    tmp_path, gold, pred = files
    # the Spider root instead of its database/ folder
    rc = main(["evaluate", "--gold", str(gold), "--pred", str(pred), "--db", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "none of the 2 gold databases" in err and f"--db {tmp_path / 'database'}" in err


def test_some_missing_databases_give_one_warning_line(files, capsys):
    tmp_path, gold, pred = files
    rc = main(["evaluate", "--gold", str(gold), "--pred", str(pred), "--db", str(tmp_path / "database"),
               "--workers", "0", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 0 and len(err) == 1 and "warning: 1 of 2 gold databases are missing" in err[0]


def test_questions_file_must_align(files, capsys):
    tmp_path, gold, pred = files
    questions = tmp_path / "dev.json"
    questions.write_text(json.dumps([{"question": "only one"}]))
    rc = main(["evaluate", "--gold", str(gold), "--pred", str(pred), "--db", str(tmp_path / "database"),
               "--questions", str(questions)])
    assert rc == 2 and "has 1 examples, the gold file has 5" in capsys.readouterr().err


def test_malformed_tables_json_is_one_error(files, capsys):
    tmp_path, gold, pred = files
    (tmp_path / "tables.json").write_text('[{"db_id": "zoo"}')
    rc = main(["evaluate", "--gold", str(gold), "--pred", str(pred), "--db", str(tmp_path / "database"),
               "--etype", "match"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "tables.json" in err


def test_component_f1_is_na_when_no_prediction_parses(files, capsys):
    """Issue 29: every component printed F1 1.000 when all predictions failed to parse (the official rule)."""
    tmp_path, gold, pred = files
    (tmp_path / "tables.json").write_text(json.dumps(ZOO_TABLES))
    pred.write_text("not sql at all\n" * 5)
    assert main(["evaluate", "--gold", str(gold), "--pred", str(pred), "--db", str(tmp_path / "database"),
                 "--etype", "all", "--workers", "0", "--no-progress"]) == 0
    text = capsys.readouterr().out
    partial = text.split("partial matching F1")[1].split("n/a: no parsable")[0]
    assert "1.000" not in partial and "n/a" in partial, partial
    assert "n/a: no parsable prediction at that level" in text


def test_a_gold_file_with_swapped_columns_says_so(files, capsys):
    tmp_path, gold, pred = files
    gold.write_text("zoo\tSELECT count(*) FROM animal\n" * 5)
    assert main(["evaluate", "--gold", str(gold), "--pred", str(pred), "--db", str(tmp_path / "database")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{gold}:1: the columns look swapped" in err[0] and "'SQL<TAB>db_id'" in err[0]


def test_a_subsets_questions_file_beside_its_gold_is_read(files, capsys):
    """A run that scored eval.limit examples writes epoch_N_questions.json beside epoch_N_gold.sql
    (text2sql.eval.questions.write_questions): evaluate re-scores it with the subset's questions (BIRD: its
    difficulties), where the whole dev.json no longer aligns."""
    from text2sql.eval.questions import questions_beside, write_questions

    tmp_path, gold, pred = files
    split = tmp_path / "dev.json"
    split.write_text(json.dumps([{"question": f"q{i}", "db_id": "zoo"} for i in range(9)]))
    epoch_gold = tmp_path / "predictions" / "epoch_1_gold.sql"
    epoch_gold.parent.mkdir()
    epoch_gold.write_text(gold.read_text())
    assert questions_beside(epoch_gold) == tmp_path / "predictions" / "epoch_1_questions.json"
    assert questions_beside(tmp_path / "pred.gold.sql") == tmp_path / "pred.questions.json"
    assert write_questions(epoch_gold, [split], [8, 2, 0, 5, 1]) == questions_beside(epoch_gold)
    out = tmp_path / "v.jsonl"
    assert main(["evaluate", "--gold", str(epoch_gold), "--pred", str(pred), "--db", str(tmp_path / "database"),
                 "--out", str(out), "--workers", "0", "--no-progress"]) == 0
    assert [json.loads(x)["question"] for x in out.read_text().splitlines()] == ["q8", "q2", "q0", "q5", "q1"]


def test_evaluate_help_describes_the_multi_turn_layout(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "a blank line after each interaction, as in the gold file" in text and "epoch_N_questions.json" in text
