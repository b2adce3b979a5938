"""`text2sql prepare`: DB-GPT-Hub's files, atomic writes, statistics with and without a tokenizer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_prompt import char_tokenizer
from test_spider_data import FIRST_TRAIN_SCHEMA, SHOP, write_spider

from text2sql.cli import main
from text2sql.data import prepare
from text2sql.errors import DataError


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_prepare_writes_dbgpt_hub_layout(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    others = [{"db_id": "shop", "question": "Other?", "query": "SELECT 2"}]
    spider = write_spider(tmp_path / "spider", others=others)
    out = tmp_path / "out"
    assert main(["prepare", "--spider", str(spider), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "dataset_info.json", "example_text2sql_dev.json", "example_text2sql_train.json",
    ]
    train = read(out / "example_text2sql_train.json")
    assert [r["output"] for r in train] == ["SELECT count(*) FROM customer", "SELECT 2"]
    assert set(train[0]) == {"db_id", "instruction", "input", "output", "history"}
    assert len(read(out / "example_text2sql_dev.json")) == 1
    info = read(out / "dataset_info.json")
    assert info["example_text2sql_train"] == {
        "file_name": "example_text2sql_train.json",
        "columns": {"prompt": "instruction", "query": "input", "response": "output", "history": "history"},
    }
    assert info["example_text2sql_dev"]["file_name"] == "example_text2sql_dev.json"
    printed = capsys.readouterr().out
    assert "train: 2 records" in printed and "characters" in printed and "source_p95=" in printed
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp dir left
    assert out.stat().st_mode & 0o077 == 0o077 & ~current_umask()  # not mkdtemp's private 0700


def test_prepare_with_local_tokenizer(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tok_dir = tmp_path / "tok"
    char_tokenizer().save_pretrained(tok_dir)
    spider = write_spider(tmp_path / "spider")
    args = ["prepare", "--spider", str(spider), "--out", str(tmp_path / "out"), "--tokenizer", str(tok_dir),
            "--max-source-length", "700"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "tokens (llama2, before truncation)" in printed
    assert "truncated (source<=700, target<=512): examples=1 truncated=1 fk_lines=1" in printed


def test_prepare_missing_tokenizer_dir_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["prepare", "--spider", str(write_spider(tmp_path / "s")), "--out", str(out), "--tokenizer", "nope/"]
    assert main(args) == 2
    assert not out.exists()


@pytest.mark.parametrize(
    "bad",
    [{"train": '[{"db_id": '}, {"dev": [{"db_id": "ghost", "question": "q", "query": "SELECT 1"}]},
     {"tables": [{**SHOP, "foreign_keys": [[4, 42]]}]}],
    ids=["malformed_json", "unknown_db_id", "fk_out_of_range"],
)
def test_failed_prepare_leaves_out_untouched(tmp_path: Path, bad: dict, capsys: pytest.CaptureFixture) -> None:
    spider = write_spider(tmp_path / "spider", **bad)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["prepare", "--spider", str(spider), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("text2sql prepare: error: ") and "\n" not in err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_error_while_writing_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spider = write_spider(tmp_path / "spider")
    calls = []
    real_dump = json.dump

    def failing_dump(obj, fp, **kw):
        calls.append(fp.name)
        if len(calls) == 2:
            raise OSError("disk full")
        real_dump(obj, fp, **kw)

    monkeypatch.setattr(prepare.json, "dump", failing_dump)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        prepare.run(prepare_args(spider, out))
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["spider"]


def prepare_args(spider: Path, out: Path):
    import argparse

    parser = argparse.ArgumentParser()
    prepare.add_arguments(parser)
    return parser.parse_args(["--spider", str(spider), "--out", str(out)])


def test_bad_spider_raises_spider_error(tmp_path: Path) -> None:
    with pytest.raises(DataError):
        prepare.run(prepare_args(tmp_path / "missing", tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_prepare_real_spider(spider_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert prepare.run(prepare_args(spider_dir, out)) == 0
    train, dev = read(out / "example_text2sql_train.json"), read(out / "example_text2sql_dev.json")
    assert (len(train), len(dev)) == (7000, 1034)
    assert FIRST_TRAIN_SCHEMA in train[0]["instruction"]
    assert dev[0]["db_id"] == "concert_singer"


def test_from_sqlite_refuses_a_non_empty_out_and_never_deletes_what_it_did_not_write(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Issue 29: into a SParC folder it replaced dev.json / tables.json, deleted the 4 databases and left train.json
    and dev_gold.txt: a mixed dataset and lost data."""
    from test_sqlite_schema import QUESTIONS, _pairs, _shop_dir

    dbs = _shop_dir(tmp_path)
    pairs = _pairs(tmp_path / "p.jsonl", [dict(zip(("db_id", "question", "query"), q)) for q in QUESTIONS * 2])
    out = tmp_path / "sparc"
    (out / "database" / "flight_2").mkdir(parents=True)
    (out / "database" / "flight_2" / "flight_2.sqlite").write_bytes(b"theirs")
    for name in ("train.json", "dev.json", "dev_gold.txt"):
        (out / name).write_text("theirs")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    args = ["prepare", "--from-sqlite", str(dbs), "--pairs", str(pairs), "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--out {out} exists and is not empty; pick a new directory or pass --overwrite" in err[0]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # untouched
    assert main([*args, "--overwrite"]) == 0
    said = capsys.readouterr().out
    assert "kept in" in said and "database/flight_2, dev_gold.txt, train.json" in said
    assert (out / "database" / "flight_2" / "flight_2.sqlite").read_bytes() == b"theirs"  # not ours: kept
    assert (out / "train.json").read_text() == "theirs" and (out / "database" / "zoo" / "zoo.sqlite").is_file()
    assert (out / "dev.json").read_text() != "theirs"  # ours, replaced as --overwrite says
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["prepare", "--from-sqlite", str(dbs), "--pairs", str(pairs), "--out", str(empty)]) == 0
