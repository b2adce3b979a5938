"""Spider loader and DB-GPT-Hub schema text: real data (skips when absent) and small synthetic layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from text2sql.data.schema import parse_schema_text, schema_parts, schema_text
from text2sql.data.datasets import InstructionDataset
from text2sql.data.spider import SpiderSchema, resolve_root
from text2sql.errors import DataError

FIRST_TRAIN_SCHEMA = (
    "department_management contains tables such as department, head, management. "
    "Table department has columns such as Department_ID, Name, Creation, Ranking, Budget_in_Billions, "
    "Num_Employees. Department_ID is the primary key.\n"
    "Table head has columns such as head_ID, name, born_state, age. head_ID is the primary key.\n"
    "Table management has columns such as department_ID, head_ID, temporary_acting. "
    "department_ID is the primary key.\n"
    "The head_ID of management is the foreign key of head_ID of head.\n"
    "The department_ID of management is the foreign key of Department_ID of department.\n"
)

# customer: single PK; orders: composite PK (order_id, line_no) and an FK to customer; log: no PK.
SHOP = {
    "db_id": "shop",
    "table_names_original": ["customer", "orders", "log"],
    "table_names": ["customer", "orders", "log"],
    "column_names_original": [
        [-1, "*"], [0, "cust_id"], [0, "name"], [1, "order_id"], [1, "cust_id"], [1, "line_no"],
        [2, "message"], [2, "at"],
    ],
    "column_types": ["text", "number", "text", "number", "number", "number", "text", "time"],
    "primary_keys": [1, [3, 5]],
    "foreign_keys": [[4, 1]],
}
SHOP_TEXT = (
    "shop contains tables such as customer, orders, log. "
    "Table customer has columns such as cust_id, name. cust_id is the primary key.\n"
    "Table orders has columns such as order_id, cust_id, line_no. "
    "The combination of (order_id, line_no) are the primary key.\n"
    "Table log has columns such as message, at. "
    "The cust_id of orders is the foreign key of cust_id of customer.\n"
)


def write_spider(root: Path, tables=None, train=None, dev=None, others=None) -> Path:
    """A tiny directory in Spider's layout; pass a str to write raw (e.g. malformed) text."""
    root.mkdir(parents=True, exist_ok=True)
    files = {
        "tables.json": [SHOP] if tables is None else tables,
        "train_spider.json": [{"db_id": "shop", "question": "How many customers?", "query": "SELECT count(*) FROM customer"}]
        if train is None else train,
        "dev.json": [{"db_id": "shop", "question": "List log messages.", "query": "SELECT message FROM log"}]
        if dev is None else dev,
    }
    if others is not None:
        files["train_others.json"] = others
    for name, data in files.items():
        (root / name).write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return root


def shop_schema(**changes) -> SpiderSchema:
    entry = {**SHOP, **changes}
    return SpiderSchema(
        entry["db_id"], entry["table_names_original"], [tuple(c) for c in entry["column_names_original"]],
        entry["column_types"], entry["primary_keys"], entry["foreign_keys"],
    )


# --- real Spider --------------------------------------------------------------------------------


def test_real_spider_counts_and_first_record(spider_dir: Path) -> None:
    ds = InstructionDataset(spider_dir)
    train, dev = ds.records("train"), ds.records("dev")
    assert (len(train), len(dev)) == (7000, 1034)
    first = train[0]
    assert first["db_id"] == "department_management"
    assert first["input"] == "###Input:\nHow many heads of the departments are older than 56 ?\n\n###Response:"
    assert first["output"] == "SELECT count(*) FROM head WHERE age  >  56"
    assert first["history"] == []
    assert schema_text(ds.schemas()["department_management"]) == FIRST_TRAIN_SCHEMA
    assert FIRST_TRAIN_SCHEMA in first["instruction"]
    assert first["instruction"].count(" is the primary key.\n") == 3
    assert first["instruction"].count(" is the foreign key of ") == 2


def test_real_spider_schema_texts_parse_back(spider_dir: Path) -> None:
    """Truncation works on record text; every real schema must parse back to the same pieces."""
    for schema in InstructionDataset(spider_dir).schemas().values():
        parts = parse_schema_text(schema_text(schema))
        assert parts is not None and parts == schema_parts(schema), schema.db_id


def test_real_spider_db_path(spider_dir: Path) -> None:
    ds = InstructionDataset(spider_dir)
    assert ds.db_path("concert_singer").is_file()
    assert ds.db_path("wta_1") == spider_dir.resolve() / "database" / "wta_1" / "wta_1.sqlite"


# --- schema text rules -----------------------------------------------------------------------------


def test_schema_text_composite_pk_no_pk_and_fk_across_tables() -> None:
    assert schema_text(shop_schema()) == SHOP_TEXT


def test_schema_text_counts_star_column_and_several_fks() -> None:
    text = schema_text(shop_schema(primary_keys=[2, 6], foreign_keys=[[4, 1], [7, 3]]))
    assert "Table customer has columns such as cust_id, name. name is the primary key.\n" in text
    assert "Table log has columns such as message, at. message is the primary key.\n" in text
    assert text.endswith(
        "The cust_id of orders is the foreign key of cust_id of customer.\n"
        "The at of log is the foreign key of order_id of orders.\n"
    )


def test_schema_text_without_keys_has_no_newline() -> None:
    text = schema_text(shop_schema(primary_keys=[], foreign_keys=[]))
    assert "\n" not in text and text.endswith("Table log has columns such as message, at. ")


def test_parse_schema_text_rejects_foreign_text() -> None:
    assert parse_schema_text("CREATE TABLE x (a int);") is None
    assert parse_schema_text(SHOP_TEXT) == schema_parts(shop_schema())


# --- loader ----------------------------------------------------------------------------------------


def test_train_is_train_spider_then_train_others(tmp_path: Path) -> None:
    others = [{"db_id": "shop", "question": "Other?", "query": "SELECT 1"}]
    ds = InstructionDataset(write_spider(tmp_path / "s", others=others))
    assert [e.question for e in ds.examples("train")] == ["How many customers?", "Other?"]
    assert [r["output"] for r in ds.records("dev")] == ["SELECT message FROM log"]


def test_resolve_root_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPIDER_DIR", str(tmp_path))
    assert resolve_root(None) == tmp_path.resolve()
    assert resolve_root(tmp_path / ".") == tmp_path.resolve()
    monkeypatch.delenv("SPIDER_DIR")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="data/spider"):
        resolve_root(None)


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_missing_root_says_how_to_point_at_it(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        InstructionDataset(tmp_path / "nowhere")
    msg = one_line(err)
    assert str(tmp_path / "nowhere") in msg and "dataset.root=" in msg and "SPIDER_DIR" in msg


def test_missing_file_is_named(tmp_path: Path) -> None:
    root = write_spider(tmp_path / "s")
    (root / "dev.json").unlink()
    with pytest.raises(DataError) as err:
        InstructionDataset(root).examples("dev")
    assert "dev.json" in one_line(err)


def test_malformed_json_names_the_file(tmp_path: Path) -> None:
    root = write_spider(tmp_path / "s", train='[{"db_id": "shop",')
    with pytest.raises(DataError) as err:
        InstructionDataset(root).records("train")
    msg = one_line(err)
    assert "malformed JSON" in msg and str(root / "train_spider.json") in msg


def test_unknown_db_id_names_file_and_record(tmp_path: Path) -> None:
    train = [
        {"db_id": "shop", "question": "q0", "query": "SELECT 1"},
        {"db_id": "nope", "question": "q1", "query": "SELECT 1"},
    ]
    with pytest.raises(DataError) as err:
        InstructionDataset(write_spider(tmp_path / "s", train=train)).records("train")
    msg = one_line(err)
    assert "train_spider.json record 1" in msg and "'nope'" in msg and "tables.json" in msg


def test_missing_key_names_file_and_record(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        InstructionDataset(write_spider(tmp_path / "s", dev=[{"db_id": "shop", "query": "SELECT 1"}])).examples("dev")
    assert "dev.json record 0" in one_line(err) and "question" in str(err.value)


@pytest.mark.parametrize(
    "change, what",
    [({"foreign_keys": [[4, 99]]}, "foreign_keys[0]"), ({"primary_keys": [1, [3, 8]]}, "primary_keys[1]"),
     ({"foreign_keys": [[0, 1]]}, "foreign_keys[0]")],
)
def test_key_index_out_of_range_names_file_and_db(tmp_path: Path, change: dict, what: str) -> None:
    with pytest.raises(DataError) as err:
        InstructionDataset(write_spider(tmp_path / "s", tables=[{**SHOP, **change}])).schemas()
    msg = one_line(err)
    assert "tables.json" in msg and "'shop'" in msg and what in msg


def test_unknown_split(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown Spider split"):
        InstructionDataset(write_spider(tmp_path / "s")).examples("test")
