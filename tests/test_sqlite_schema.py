"""A schema read from an SQLite file (`data/sqlite_schema.py`) and `text2sql prepare --from-sqlite`."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from text2sql.cli import main
from text2sql.data.schema import schema_text
from text2sql.data.spider import SpiderDataset, parse_schema
from text2sql.data.sqlite_schema import SQLiteSchemaError, read_schema, tables_json_entry

SHOP = """
CREATE TABLE customer (id INTEGER PRIMARY KEY AUTOINCREMENT, Name VARCHAR(20), born DATE, vip BOOLEAN, pic BLOB);
CREATE TABLE orders (order_id INT, line INT, customer_id INT REFERENCES Customer(ID), amount REAL,
                     PRIMARY KEY (line, order_id));
CREATE TABLE note (cust INT, body TEXT, ghost INT REFERENCES nowhere(x), FOREIGN KEY (cust) REFERENCES customer);
INSERT INTO customer (Name, born, vip) VALUES ('Ann', '1990-01-01', 1), ('Bo', '1985-05-05', 0);
INSERT INTO orders VALUES (1, 1, 1, 9.5), (1, 2, 1, 3.0), (2, 1, 2, 4.0);
INSERT INTO note VALUES (1, 'likes tea', NULL);
"""


def make_db(path: Path, script: str = SHOP) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.executescript(script)
    conn.commit()
    conn.close()
    return path


def test_schema_from_a_sqlite_file_is_a_spider_tables_entry(tmp_path: Path) -> None:
    db = make_db(tmp_path / "shop.sqlite")
    entry = tables_json_entry(read_schema(db))
    assert entry["table_names_original"] == ["customer", "orders", "note"]  # sqlite_sequence left out
    assert entry["column_names_original"][:3] == [[-1, "*"], [0, "id"], [0, "Name"]]
    assert entry["column_names"][2] == [0, "name"] and entry["table_names"] == ["customer", "orders", "note"]
    # Spider's coarse types: INTEGER/REAL number, VARCHAR/TEXT text, DATE time, BOOLEAN boolean, BLOB others
    assert entry["column_types"] == ["text", "number", "text", "time", "boolean", "others",
                                     "number", "number", "number", "number", "number", "text", "number"]
    # the composite key in key order (line, order_id), one entry; foreign keys resolved without case, a bare
    # REFERENCES customer names its primary key, and one to a missing table is left out
    assert entry["primary_keys"] == [1, [7, 6]]
    assert entry["foreign_keys"] == [[8, 1], [10, 1]]
    assert parse_schema(json.loads(json.dumps(entry)), Path("tables.json"), 0) == read_schema(db)
    assert schema_text(read_schema(db, "my_shop")) == (
        "my_shop contains tables such as customer, orders, note. "
        "Table customer has columns such as id, Name, born, vip, pic. id is the primary key.\n"
        "Table orders has columns such as order_id, line, customer_id, amount. "
        "The combination of (line, order_id) are the primary key.\n"
        "Table note has columns such as cust, body, ghost. "
        "The customer_id of orders is the foreign key of id of customer.\n"
        "The cust of note is the foreign key of id of customer.\n")


def test_files_that_are_not_databases_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "notes.sqlite").write_text("just text\n")
    with pytest.raises(SQLiteSchemaError, match="is not an SQLite database"):
        read_schema(tmp_path / "notes.sqlite")
    sqlite3.connect(tmp_path / "empty.sqlite").execute("PRAGMA user_version = 1").connection.close()
    with pytest.raises(SQLiteSchemaError, match="has no tables"):
        read_schema(tmp_path / "empty.sqlite")
    with pytest.raises(SQLiteSchemaError, match="not found"):
        read_schema(tmp_path / "nope.sqlite")


def _pairs(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _shop_dir(tmp_path: Path) -> Path:
    dbs = tmp_path / "dbs"
    make_db(dbs / "shop.sqlite")
    make_db(dbs / "zoo" / "zoo.sqlite", "CREATE TABLE animal (id INTEGER PRIMARY KEY, name TEXT, legs INT);"
            "INSERT INTO animal (name, legs) VALUES ('cat', 4), ('owl', 2);")
    (dbs / "zoo" / "schema.sql").write_text("-- not a database file, ignored\n")
    return dbs


QUESTIONS = [("shop", "How many customers?", "SELECT count(*) FROM customer"),
             ("shop", "Total amount of orders?", "SELECT sum(amount) FROM orders"),
             ("shop", "Names of customers with orders?",
              "SELECT DISTINCT T1.Name FROM customer AS T1 JOIN orders AS T2 ON T1.id = T2.customer_id"),
             ("zoo", "How many animals?", "SELECT count(*) FROM animal"),
             ("zoo", "Which animals have four legs?", "SELECT name FROM animal WHERE legs = 4")]


def test_prepare_from_sqlite_writes_spiders_layout(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dbs = _shop_dir(tmp_path)
    csv_file = tmp_path / "pairs.csv"
    csv_file.write_text("db_id,question,query\n" + "".join(f'{d},"{q}","{s}"\n' for d, q, s in QUESTIONS * 2))
    out = tmp_path / "out"
    assert main(["prepare", "--from-sqlite", str(dbs), "--pairs", str(csv_file), "--out", str(out),
                 "--split-by", "database", "--dev-fraction", "0.3", "--seed", "1"]) == 0
    assert f"dataset=spider dataset.root={out}" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["database", "dev.json", "dev_gold.sql", "tables.json",
                                                     "train_gold.sql", "train_spider.json"]
    dataset = SpiderDataset(out)  # the project's own loader reads it as Spider
    train, dev = dataset.examples("train"), dataset.examples("dev")
    assert len(train) + len(dev) == 10 and {e.db_id for e in train}.isdisjoint({e.db_id for e in dev})
    assert dataset.schemas()["zoo"].table_names == ["animal"] and dataset.db_path("shop").is_file()
    gold = (out / "dev_gold.sql").read_text().splitlines()
    assert [g.split("\t") for g in gold] == [[e.query, e.db_id] for e in dev]
    # random split, JSONL: the seed decides, the same seed gives the same split
    pairs = _pairs(tmp_path / "pairs.jsonl", [dict(zip(("db_id", "question", "query"), q)) for q in QUESTIONS * 2])
    splits = []
    for name in ("a", "b"):
        assert main(["prepare", "--from-sqlite", str(dbs), "--pairs", str(pairs), "--out", str(tmp_path / name),
                     "--dev-fraction", "0.2"]) == 0
        splits.append(json.loads((tmp_path / name / "dev.json").read_text()))
    assert len(splits[0]) == 2 and splits[0] == splits[1]


def _one_error_line(capsys: pytest.CaptureFixture) -> str:
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert "Traceback" not in "\n".join(lines)
    return lines[-1]


def test_prepare_from_sqlite_bad_input_is_one_line_and_writes_nothing(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    dbs = _shop_dir(tmp_path)
    out = tmp_path / "out"
    rows = [dict(zip(("db_id", "question", "query"), q)) for q in QUESTIONS]

    def prepare(pairs: list[dict], *extra: str, db_dir: Path = dbs) -> int:
        return main(["prepare", "--from-sqlite", str(db_dir), "--pairs", str(_pairs(tmp_path / "p.jsonl", pairs)),
                     "--out", str(out), "--overwrite", *extra])  # OUT holds the --drop-invalid run below

    assert prepare(rows + [{"db_id": "shopp", "question": "q", "query": "SELECT 1"}]) == 2
    assert "p.jsonl:6: db_id 'shopp' is not a database in the --from-sqlite dir (found: shop, zoo)" in \
        _one_error_line(capsys)
    bad = rows[:2] + [{"db_id": "zoo", "question": "q", "query": "SELECT wings FROM animal"}] + rows[2:] + [
        {"db_id": "shop", "question": "w", "query": "DELETE FROM customer"}]
    assert prepare(bad) == 2
    err = capsys.readouterr().err
    assert "p.jsonl:3: no such column: wings" in err and "p.jsonl:7: write refused" in err
    assert err.strip().splitlines()[-1].endswith("2 of 7 gold queries do not run (listed above); fix them or pass "
                                                 "--drop-invalid to leave them out")
    assert not out.exists()
    endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    assert prepare(rows + [{"db_id": "zoo", "question": "q", "query": endless}], "--timeout", "0.3") == 2
    assert "p.jsonl:6: timeout: still running after 0.3 s" in capsys.readouterr().err and not out.exists()
    assert prepare(bad, "--drop-invalid") == 0
    assert len(SpiderDataset(out).examples("train")) + len(SpiderDataset(out).examples("dev")) == 5
    assert sqlite3.connect(dbs / "shop.sqlite").execute("SELECT count(*) FROM customer").fetchone() == (2,)
    for where, text in (("dbs/zoo/zoo.db", "SQLite format 3 but not really"), ("dbs/readme.sqlite3", "")):
        path = tmp_path / where
        path.write_text(text)
        assert prepare(rows) == 2
        assert f"{path} is not an SQLite database" in _one_error_line(capsys)
        path.unlink()
    make_db(dbs / "shop" / "shop.db", "CREATE TABLE t (a INT);")
    assert prepare(rows) == 2
    assert "duplicate database id 'shop'" in _one_error_line(capsys)
    (dbs / "shop" / "shop.db").unlink()
    assert prepare([{"db_id": "shop", "question": "", "query": "SELECT 1"}]) == 2
    assert "p.jsonl:1: missing or empty question" in _one_error_line(capsys)
    assert prepare(rows, "--split-by", "database", "--dev-fraction", "1.5") == 2
    assert "--dev-fraction must be between 0 and 1" in _one_error_line(capsys)
    assert main(["prepare", "--from-sqlite", str(dbs), "--out", str(out)]) == 2
    assert "--from-sqlite needs --pairs FILE" in _one_error_line(capsys)


def spider_compatible(entry: dict) -> dict:
    """What Spider's tables.json records for the same database, where it differs from reading the file:
    a composite primary key keeps its first column only."""
    return {**entry, "primary_keys": [pk[0] if isinstance(pk, list) else pk for pk in entry["primary_keys"]]}


def spider_as_read(entry: dict) -> dict:
    """Spider's own tables.json entry without what reading the file leaves out: the `sqlite_sequence` table
    (SQLite's internal AUTOINCREMENT counter, in world_1) and a foreign key listed twice (dog_kennels)."""
    tables = entry["table_names_original"]
    if "sqlite_sequence" in tables:
        gone = tables.index("sqlite_sequence")
        old = entry["column_names_original"]
        keep = [i for i, (t, _) in enumerate(old) if t != gone]
        new_index = {i: j for j, i in enumerate(keep)}
        shift = lambda t: t - (t > gone)  # noqa: E731
        entry = {**entry, "table_names_original": [t for t in tables if t != "sqlite_sequence"],
                 "column_names_original": [[shift(t) if t >= 0 else t, n] for t, n in (old[i] for i in keep)],
                 "column_types": [entry["column_types"][i] for i in keep],
                 "primary_keys": [new_index[k] for k in entry["primary_keys"]],
                 "foreign_keys": [[new_index[a], new_index[b]] for a, b in entry["foreign_keys"]]}
    unique = []
    for fk in entry["foreign_keys"]:
        if fk not in unique:
            unique.append(fk)
    return {**entry, "foreign_keys": unique}


def test_from_sqlite_on_real_spider_dev_matches_spiders_schema_text(spider_dir: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    """The schema text built from each dev database file equals the one from Spider's tables.json, once the
    three known differences are accounted for (each named in spider_compatible / spider_as_read)."""
    spider = SpiderDataset(spider_dir)
    present = [e for e in spider.examples("dev") if spider.db_path(e.db_id).is_file()]
    pairs = _pairs(tmp_path / "dev_pairs.jsonl", [{"db_id": e.db_id, "question": e.question, "query": e.query}
                                                  for e in present])
    out = tmp_path / "out"
    assert main(["prepare", "--from-sqlite", str(spider_dir / "database"), "--pairs", str(pairs), "--out", str(out),
                 "--split-by", "database"]) == 0  # every gold query runs
    ours = {e["db_id"]: e for e in json.loads((out / "tables.json").read_text())}
    theirs = {e["db_id"]: e for e in json.loads((spider_dir / "tables.json").read_text())}
    text = lambda e: schema_text(parse_schema(e, Path("tables.json"), 0))  # noqa: E731
    dev_dbs = sorted({e.db_id for e in present})
    equal = [db for db in dev_dbs if text(ours[db]) == text(theirs[db])]
    assert len(equal) >= len(dev_dbs) // 2, equal  # most are equal as they stand
    for db in dev_dbs:
        assert text(spider_compatible(ours[db])) == text(spider_as_read(theirs[db])), db
        assert ours[db]["column_types"] == spider_as_read(theirs[db])["column_types"], db


@pytest.mark.slow
def test_prepared_dir_trains_with_dataset_spider(tmp_path: Path) -> None:
    """`python train.py dataset=spider dataset.root=OUT` trains and scores EX on a layout made from SQLite files."""
    dbs = _shop_dir(tmp_path)
    rows = [dict(zip(("db_id", "question", "query"), q)) for q in QUESTIONS * 4]
    out = tmp_path / "out"
    assert main(["prepare", "--from-sqlite", str(dbs), "--pairs", str(_pairs(tmp_path / "p.jsonl", rows)),
                 "--out", str(out)]) == 0
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO_ROOT), "TEXT2SQL_CACHE": str(tmp_path / "c")}
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), "dataset=spider", f"dataset.root={out}",
                           "debug=smoke", "logger=none", "trainer.max_epochs=1", "dataset.max_source_length=256",
                           f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "val/execution_accuracy" in json.dumps(metrics)
