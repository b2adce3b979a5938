"""Bad-input drills (issue 10.6), one test each, listed in docs/troubleshooting.md.

Each drill feeds a broken input to the command a user would run and checks the answer is one clear line or a
recorded per-example status, that the input is left as it was, and that no half-written output remains.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from text2sql.cli import main
from text2sql.data.datasets import InstructionDataset, sample
from text2sql.errors import DataError

ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}


def digest(path: Path) -> dict[str, str]:
    """Content hash of every file under `path`: inputs must not change."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def one_error_line(err: str, prefix: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(prefix) and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def spider_copy(tmp_path_factory) -> Path:
    """A small dataset in Spider's layout (the generated sample: 4 SQLite databases)."""
    return sample(str(tmp_path_factory.mktemp("drills") / "sample"), seed=0, n_train=30, n_dev=10).root


@pytest.fixture
def spider(spider_copy, tmp_path) -> Path:
    """A private copy each drill may break."""
    return Path(shutil.copytree(spider_copy, tmp_path / "spider"))


# --- Spider files ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,damage", [
    ("train_spider.json", lambda text: text[: len(text) // 2]),      # truncated mid-file (a killed download)
    ("dev.json", lambda text: text.replace('"query"', "query", 1)),  # malformed
    ("tables.json", lambda text: ""),                                 # empty file
])
def test_truncated_or_malformed_spider_json(spider, tmp_path, capsys, name, damage):
    path = spider / name
    path.write_text(damage(path.read_text()))
    before = digest(spider)
    out = tmp_path / "prepared"
    assert main(["prepare", "--spider", str(spider), "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err, "text2sql prepare: error: malformed JSON in")
    assert name in line
    assert digest(spider) == before and not out.exists() and not list(tmp_path.glob(".prepared*"))


@pytest.mark.parametrize("change,needle", [
    ({"table_names_original": "employee"}, "table_names_original must be a list, got str"),
    ({"column_names_original": [[-1, "*"], ["0", "name"]]}, "column_names_original[1] = ['0', 'name'] is not a pair"),
    ({"column_names_original": [[-1, "*"], [0]]}, "column_names_original[1] = [0] is not a pair"),
    ({"column_types": ["text", 3]}, "column_types must hold strs, got int 3"),
    ({"primary_keys": "1"}, "primary_keys must be a list"),
    ({"primary_keys": ["1"]}, "primary_keys[0] index '1' is out of range"),
    ({"foreign_keys": [[1]]}, "foreign_keys[0] = [1] is not a pair"),
    ({"db_id": 7}, "db_id must be a non-empty string, got 7"),
])
def test_wrong_types_in_tables_json(spider, change, needle):
    path = spider / "tables.json"
    tables = json.loads(path.read_text())
    tables[0].update(change)
    if "column_names_original" in change:
        tables[0]["column_types"] = ["text"] * len(change["column_names_original"])
    path.write_text(json.dumps(tables))
    before = digest(spider)
    with pytest.raises(DataError) as info:
        InstructionDataset(spider).records("dev")
    assert needle in str(info.value) and "tables.json" in str(info.value) and "\n" not in str(info.value)
    assert digest(spider) == before


def test_wrong_types_in_a_split_file(spider):
    path = spider / "dev.json"
    dev = json.loads(path.read_text())
    dev[3]["question"] = ["not", "a", "string"]
    path.write_text(json.dumps(dev))
    with pytest.raises(DataError, match=r"dev.json record 3: question must be a string, got list"):
        InstructionDataset(spider).records("dev")


def test_empty_dev_split_is_one_line_before_torch(spider, tmp_path):
    (spider / "dev.json").write_text("[]")
    proc = subprocess.run([sys.executable, "train.py", "dataset=spider", f"dataset.root={spider}", "logger=none",
                           f"hydra.run.dir={tmp_path}/run"], cwd=REPO_ROOT, env=ENV, capture_output=True,
                          text=True, timeout=120)
    line = one_error_line(proc.stderr, "error: the dev split of")
    assert "dev.json holds no example" in line and proc.returncode == 1
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "dev split" in metrics["error"]


# --- databases and predictions --------------------------------------------------------------------------------


def evaluate(spider: Path, pred: Path, tmp_path: Path, capsys) -> list[dict]:
    out = tmp_path / "verdicts.jsonl"
    assert main(["evaluate", "--gold", str(spider / "dev_gold.sql"), "--pred", str(pred), "--db",
                 str(spider / "database"), "--workers", "0", "--no-progress", "--out", str(out)]) == 0
    capsys.readouterr()
    return [json.loads(line) for line in out.read_text().splitlines()]


def gold_sql(spider: Path) -> list[bytes]:
    return [line.split(b"\t")[0] for line in (spider / "dev_gold.sql").read_bytes().splitlines()]


def test_db_file_that_is_not_sqlite(spider, tmp_path, capsys):
    gold = (spider / "dev_gold.sql").read_text().splitlines()
    broken = gold[0].split("\t")[1]
    db = spider / "database" / broken / f"{broken}.sqlite"
    db.write_bytes(b"this is not an SQLite file\n" * 100)
    pred = tmp_path / "pred.sql"
    pred.write_bytes(b"\n".join(gold_sql(spider)) + b"\n")
    before = digest(spider)
    verdicts = evaluate(spider, pred, tmp_path, capsys)
    for line, v in zip(gold, verdicts):
        if line.endswith("\t" + broken):
            assert v["status"] == "exec_error" and "file is not a database" in v["error"]
        else:
            assert v["status"] == "correct"
    assert digest(spider) == before  # opened read-only: nothing written into the broken file


PRED_ODDITIES = {
    # name: (damage to the first prediction line / the file, expected status of example 0)
    "crlf": (lambda lines: b"\r\n".join(lines) + b"\r\n", "correct"),
    "blank lines": (lambda lines: b"\n".join([b"", *lines[1:]]) + b"\n\n\n", "empty_prediction"),
    "nul byte": (lambda lines: b"\n".join([lines[0][:6] + b"\x00" + lines[0][6:], *lines[1:]]) + b"\n", "exec_error"),
    "non-utf8": (lambda lines: b"\n".join([lines[0] + b" WHERE 1 = '\xe9\xff'", *lines[1:]]) + b"\n",
                 ("wrong_result", "exec_error", "syntax_error")),
    "1 MB line": (lambda lines: b"\n".join([b"SELECT " + b"1+" * 500_000 + b"1", *lines[1:]]) + b"\n",
                  ("exec_error", "syntax_error")),
}


@pytest.mark.parametrize("name", list(PRED_ODDITIES))
def test_prediction_file_oddities(spider, tmp_path, capsys, name):
    damage, expected = PRED_ODDITIES[name]
    pred = tmp_path / "pred.sql"
    pred.write_bytes(damage(gold_sql(spider)))
    before = digest(pred)
    verdicts = evaluate(spider, pred, tmp_path, capsys)
    assert len(verdicts) == 10
    assert verdicts[0]["status"] in ((expected,) if isinstance(expected, str) else expected)
    assert all(v["status"] == "correct" for v in verdicts[1:])  # one bad line never spoils the others
    assert digest(pred) == before


# --- outputs --------------------------------------------------------------------------------------------------


def test_output_dir_that_is_not_writable(spider, tmp_path, capsys):
    """A path under a regular file cannot be created, even by root (chmod does not stop root)."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory\n")
    pred = tmp_path / "pred.sql"
    pred.write_bytes(b"\n".join(gold_sql(spider)) + b"\n")
    assert main(["prepare", "--spider", str(spider), "--out", str(blocker / "out")]) == 2
    one_error_line(capsys.readouterr().err, "text2sql prepare: error:")
    assert main(["evaluate", "--gold", str(spider / "dev_gold.sql"), "--pred", str(pred), "--db",
                 str(spider / "database"), "--workers", "0", "--no-progress", "--out", str(blocker / "v.jsonl")]) == 2
    assert str(blocker) in one_error_line(capsys.readouterr().err, "text2sql evaluate: error:")
    proc = subprocess.run([sys.executable, "train.py", "debug=smoke", "logger=none", f"hydra.run.dir={blocker}/run"],
                          cwd=REPO_ROOT, env={**ENV, "TEXT2SQL_CACHE": str(tmp_path / "cache")},
                          capture_output=True, text=True, timeout=120)
    line = one_error_line(proc.stderr, "error: cannot write")
    assert str(blocker) in line and proc.returncode == 1
    assert blocker.read_text() == "not a directory\n"


def test_run_dir_that_cannot_be_created_is_one_line(tmp_path):
    """/proc refuses new directories (even for root): Hydra's mkdir fails before the job starts."""
    proc = subprocess.run([sys.executable, "train.py", "hydra.run.dir=/proc/x"], cwd=REPO_ROOT,
                          env={**ENV, "TEXT2SQL_CACHE": str(tmp_path / "cache")}, capture_output=True, text=True,
                          timeout=120)
    line = one_error_line(proc.stderr, "error: cannot write /proc/x")
    assert "hydra.run.dir" in line and proc.returncode == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod; covered by the file-as-parent drill")
def test_read_only_run_dir(spider, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main(["prepare", "--spider", str(spider), "--out", str(ro / "out")]) == 2
        assert "Permission denied" in one_error_line(capsys.readouterr().err, "text2sql prepare: error:")
    finally:
        ro.chmod(0o755)


BUILD = r"""
import json, os, sys, time
from pathlib import Path
from omegaconf import OmegaConf
import text2sql.data.sample as sample_mod
import text2sql.model.load as load_mod
from text2sql.data.datasets import corpus, sample

cache, log = Path(sys.argv[1]), Path(sys.argv[2])
def counted(name, fn):
    def wrapper(*a, **k):
        with open(log, "a") as f:
            f.write(name + "\n")
        return fn(*a, **k)
    return wrapper
sample_mod.generate_sample = counted("sample", sample_mod.generate_sample)
load_mod.build_tiny_model = counted("model", load_mod.build_tiny_model)
while not (cache.parent / "go").exists():  # both processes start building at the same moment
    time.sleep(0.01)
ds = sample(str(cache / "data"), seed=0, n_train=60, n_dev=10)
cfg = OmegaConf.create({"name": "tiny-drill", "path": None, "build": {"cache_dir": str(cache / "models"),
    "vocab_size": 200, "seed": 0, "data_key": "drill", "merge_preamble": True},
    "architecture": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "num_key_value_heads": 2, "max_position_embeddings": 256, "tie_word_embeddings": False}})
path = load_mod.resolve_model_path(cfg, corpus=lambda: corpus(ds))
tok = load_mod.load_tokenizer(cfg, path)
print(json.dumps({"records": len(ds.records("train")), "ids": tok("SELECT name FROM employee")["input_ids"]}))
"""


@pytest.mark.slow  # two processes import transformers and build a tokenizer (~15 s on 2 shared cores)
def test_two_runs_on_a_cold_cache_build_once(tmp_path):
    cache = tmp_path / "cache"
    log = tmp_path / "builds.log"
    procs = [subprocess.Popen([sys.executable, "-c", BUILD, str(cache), str(log)], cwd=tmp_path, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    (tmp_path / "go").touch()
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-1500:] for _, err in results]
    outs = [json.loads(out.strip().splitlines()[-1]) for out, _ in results]
    assert outs[0] == outs[1] and outs[0]["records"] == 60
    assert sorted(log.read_text().split()) == ["model", "sample"]  # each built once, the other process waited
    leftovers = [p for p in cache.rglob("*") if ".tmp-" in p.name]
    assert not leftovers
    assert (cache / "data" / ".complete").is_file()
