"""The generated sample: deterministic, Spider-shaped, executable, written atomically."""

from __future__ import annotations

import filecmp
import json
import sqlite3

import pytest

from text2sql.data import sample as sample_mod
from text2sql.data.datasets import sample
from text2sql.data.sample import generate_sample


def tree_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path):
    a = generate_sample(tmp_path / "a", seed=3, n_train=300, n_dev=40)
    b = generate_sample(tmp_path / "b", seed=3, n_train=300, n_dev=40)
    c = generate_sample(tmp_path / "c", seed=4, n_train=300, n_dev=40)
    assert tree_bytes(a) == tree_bytes(b)
    ta, tc = tree_bytes(a), tree_bytes(c)
    assert ta.keys() == tc.keys()
    assert ta["dev.json"] != tc["dev.json"] and ta["database/company/company.sqlite"] != tc["database/company/company.sqlite"]


def test_spider_layout_and_gold_executes(tmp_path):
    root = generate_sample(tmp_path / "s", seed=0, n_train=200, n_dev=50)
    ds = sample(str(root), seed=0, n_train=200, n_dev=50)
    assert len(ds.examples("train")) == 200 and len(ds.examples("dev")) == 50
    schemas = ds.schemas()
    assert len(schemas) >= 4
    assert all(2 <= len(s.table_names) <= 4 and s.foreign_keys for s in schemas.values())
    dev_questions = {e.question for e in ds.examples("dev")}
    assert not dev_questions & {e.question for e in ds.examples("train")}  # dev is unseen
    kinds = " ".join(e.query for e in ds.examples("train"))
    for clause in ("WHERE", "count(*)", "avg(", "GROUP BY", "ORDER BY", "LIMIT", "JOIN"):
        assert clause in kinds
    nonempty = 0
    for ex in ds.examples("dev"):
        with sqlite3.connect(ds.db_path(ex.db_id)) as conn:
            nonempty += bool(conn.execute(ex.query).fetchall())
    assert nonempty >= 0.9 * 50
    gold = (root / "dev_gold.sql").read_text().splitlines()
    assert gold[0] == f"{ds.examples('dev')[0].query}\t{ds.examples('dev')[0].db_id}"
    assert json.loads((root / "tables.json").read_text())[0]["column_names_original"][0] == [-1, "*"]


def test_failed_generation_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sample_mod, "_dump", boom)
    with pytest.raises(RuntimeError):
        generate_sample(tmp_path / "s", seed=0, n_train=50, n_dev=10)
    assert list(tmp_path.iterdir()) == []


def test_regeneration_is_skipped_when_cached(tmp_path):
    root = sample_mod.ensure_sample(tmp_path / "s", seed=0, n_train=50, n_dev=10)
    stamp = (root / "dev.json").stat().st_mtime_ns
    sample_mod.ensure_sample(root, seed=0, n_train=50, n_dev=10)
    assert (root / "dev.json").stat().st_mtime_ns == stamp
    assert not filecmp.dircmp(root, root).diff_files
