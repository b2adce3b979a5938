"""The generated sample: deterministic, Spider-shaped, at Spider's hardness mix, executable, written atomically."""

from __future__ import annotations

import filecmp
import json
import random
import sqlite3
from collections import Counter

import pytest

from text2sql.data import sample as sample_mod
from text2sql.data.datasets import sample
from text2sql.data.sample import DOMAINS, LEVEL_SHARES, SAMPLE_VERSION, generate_sample, level_counts
from text2sql.data.sample_templates import TEMPLATES, Ctx
from text2sql.sql.hardness import HARDNESS_LEVELS, hardness


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
    for clause in ("WHERE", "count(*)", "avg(", "GROUP BY", "HAVING", "ORDER BY", "LIMIT", "JOIN", " OR ",
                   "(SELECT", "NOT IN", "INTERSECT", "UNION", "EXCEPT"):
        assert clause in kinds, clause
    for ex in ds.examples("dev"):  # every gold query answers with at least one non-NULL row
        with sqlite3.connect(ds.db_path(ex.db_id)) as conn:
            first = conn.execute(ex.query).fetchone()
        assert first is not None and any(v is not None for v in first), ex.query
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


def test_levels_follow_spider_dev_mix(tmp_path):
    """Each split holds Spider dev's hardness mix (24/43/17/16 %), as the official rules classify the gold SQL."""
    root = generate_sample(tmp_path / "s", seed=1, n_train=400, n_dev=200)
    for split, n in (("train_spider.json", 400), ("dev.json", 200)):
        got = Counter(hardness(e["query"]) for e in json.loads((root / split).read_text()))
        assert got == level_counts(n)
        for level in HARDNESS_LEVELS:
            assert abs(got[level] / n - LEVEL_SHARES[level]) <= 1 / n
    assert level_counts(200) == {"easy": 48, "medium": 86, "hard": 34, "extra": 32}
    assert sum(level_counts(7).values()) == 7


@pytest.mark.parametrize("level", HARDNESS_LEVELS)
def test_every_template_gives_its_level_on_every_database(level, tmp_path):
    """A template filed under a level yields queries of that level (and valid SQLite) on all four databases."""
    rng = random.Random(0)
    for db_id, tables in DOMAINS.items():
        rows = sample_mod._make_rows(rng, tables)
        path = tmp_path / f"{db_id}.sqlite"
        sample_mod._write_db(path, tables, rows)
        with sqlite3.connect(path) as conn:
            for make in TEMPLATES[level]:
                for _ in range(5):
                    question, query = make(Ctx(rng, tables, rows))
                    assert hardness(query) == level, (make.__name__, query)
                    conn.execute(query).fetchall()
                    assert question.endswith(("?", ".")) and "'" not in question.replace("'s ", "")


def test_cache_names_carry_the_generator_version():
    """A new generator version never reuses an old cached sample or a tokenizer trained on it."""
    from omegaconf import OmegaConf

    from conftest import REPO_ROOT

    cfg = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf" / "dataset" / "sample.yaml"), resolve=False)
    assert f"/sample-v{SAMPLE_VERSION}-" in cfg["root"] and cfg["fingerprint"].startswith(f"sample-v{SAMPLE_VERSION}-")


def test_tiny_model_cache_dir_is_named_after_model_and_data(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from text2sql.model import load

    built = []
    monkeypatch.setattr(load, "build_tiny_model", lambda out_dir, *a, **k: built.append(out_dir))
    cfg = OmegaConf.create({"name": "tiny-llama", "architecture": {"hidden_size": 8},
                            "build": {"cache_dir": str(tmp_path), "vocab_size": 64, "seed": 0,
                                      "data_key": "sample-v2-seed0-3000-200"}})
    path = load.resolve_model_path(cfg, corpus=lambda: iter(["x"]))
    name = built[0].name
    assert path == str(built[0]) and name.startswith("tiny-llama-sample-v2-seed0-3000-200-")
    assert len(name.rsplit("-", 1)[1]) == 12  # the fingerprint still decides which build is reused
    cfg.build.seed = 1
    assert load.resolve_model_path(cfg, corpus=lambda: iter(["x"])) != path


def test_a_given_model_path_wins_over_building_the_tiny_model(tmp_path, monkeypatch):
    """`model=tiny_codellama model.path=<dir>` loads <dir> (what bench/gpu_acceptance.py's CPU check does); it used
    to build a fresh model silently and train that instead."""
    from omegaconf import OmegaConf

    from text2sql.model import load

    built = []
    monkeypatch.setattr(load, "build_tiny_model", lambda out_dir, *a, **k: built.append(out_dir))
    (tmp_path / "given").mkdir()
    (tmp_path / "given" / "config.json").write_text("{}")
    cfg = OmegaConf.create({"name": "tiny-codellama", "path": str(tmp_path / "given"), "architecture": {},
                            "build": {"cache_dir": str(tmp_path), "vocab_size": 64, "seed": 0, "data_key": "d"}})
    assert load.resolve_model_path(cfg, corpus=lambda: iter(["x"])) == str(tmp_path / "given") and not built
    cfg.path = None
    load.resolve_model_path(cfg, corpus=lambda: iter(["x"]))
    assert built  # no path: built (or reused) from the cache, as before


def test_spider_is_looked_for_at_SPIDER_DIR_first(tmp_path, monkeypatch):
    import conftest

    (tmp_path / "dev.json").write_text("[]")
    monkeypatch.setenv("SPIDER_DIR", str(tmp_path))
    assert conftest.find_spider()[0] == tmp_path
    monkeypatch.setenv("SPIDER_DIR", str(tmp_path / "absent"))
    found, looked = conftest.find_spider()
    assert looked == [tmp_path / "absent", conftest.SHARED_SPIDER]
    assert found == (conftest.SHARED_SPIDER if (conftest.SHARED_SPIDER / "dev.json").is_file() else None)
