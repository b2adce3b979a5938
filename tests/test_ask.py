"""`text2sql ask`: a trained run answers on any SQLite database, as a user types it; bad input is one line."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from test_sqlite_schema import make_db
from text2sql.cli import main


def ask(*argv: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "text2sql", "ask", *argv], input=stdin, cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_ask_answers_on_a_spider_dev_database(smoke_run, spider_dir: Path, tmp_path: Path) -> None:
    run_dir, _ = smoke_run
    db = spider_dir / "database" / "concert_singer" / "concert_singer.sqlite"
    before = db.read_bytes()
    proc = ask("--run", str(run_dir), "--db", str(db), "How many singers do we have?", cwd=tmp_path)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]  # 1: the smoke model's SQL did not run (said in one line)
    assert f"weights: adapter {run_dir / 'adapter'}" in proc.stderr and "model: " in proc.stderr
    assert "; on cpu; CPU threads: " in proc.stderr  # where generation ran (predict.place_model)
    assert "database: " in proc.stderr and "(4 tables); decoding: greedy" in proc.stderr
    assert "generated in " in proc.stderr and " s, executed in " in proc.stderr
    out = proc.stdout.strip().splitlines()
    assert out and out[0].strip(), proc.stdout  # the SQL comes first
    assert (proc.returncode == 0) == (not out[-1].startswith("error: ")), proc.stdout
    assert "Traceback" not in proc.stderr and db.read_bytes() == before


@pytest.mark.slow
def test_ask_reads_questions_until_eof_on_a_new_database(smoke_run, tmp_path: Path) -> None:
    """A database the project has never seen, questions on stdin, --json for scripts."""
    run_dir, _ = smoke_run
    db = make_db(tmp_path / "garden.sqlite", "CREATE TABLE plant (id INTEGER PRIMARY KEY, name TEXT, height REAL);"
                 "CREATE TABLE bed (id INTEGER PRIMARY KEY, plant_id INT REFERENCES plant(id), row INT);"
                 "INSERT INTO plant (name, height) VALUES ('fern', 0.4), ('oak', 12.0);")
    proc = ask("--checkpoint", str(run_dir / "checkpoints" / "last.ckpt"), "--db", str(db), "--json",
               stdin="How many plants are there?\n\nWhat is the tallest plant?\n", cwd=tmp_path)
    answers = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == (0 if all(a["status"] == "ok" for a in answers) else 1), proc.stderr[-2000:]
    assert [a["question"] for a in answers] == ["How many plants are there?", "What is the tallest plant?"]
    for a in answers:
        assert set(a) >= {"sql", "status", "error", "columns", "rows", "row_count", "generation_s", "execution_s"}
        assert a["generation_s"] > 0 and (a["status"] == "ok") == (a["error"] is None)
    assert f"weights: checkpoint {run_dir / 'checkpoints' / 'last.ckpt'}" in proc.stderr
    assert "(2 tables)" in proc.stderr


@pytest.fixture()
def fake_sql(monkeypatch):
    """Pins what the model writes, to check what ask does with each kind of SQL (the model itself is real)."""
    written: list[str] = []

    def generate_sql(model, tokenizer, sources, **kwargs):
        assert len(sources) == 1 and len(sources[0]) > 10  # a real prompt was encoded
        return [written.pop(0)]

    monkeypatch.setattr("text2sql.eval.candidates.generate_sql", generate_sql)  # greedy's path in every strategy
    return written


def test_rows_table_json_and_a_writing_sql(smoke_run, tmp_path: Path, fake_sql, capsys, monkeypatch) -> None:
    run_dir, _ = smoke_run
    db = make_db(tmp_path / "pets.sqlite", "CREATE TABLE pet (id INTEGER PRIMARY KEY, name TEXT, age INT);" +
                 "".join(f"INSERT INTO pet (name, age) VALUES ('pet{i}', {i});" for i in range(30)))
    fake_sql.append("SELECT name, age FROM pet WHERE age < 3 ORDER BY age")
    assert main(["ask", "--run", str(run_dir), "--db", str(db), "Which pets are younger than 3?"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "SELECT name, age FROM pet WHERE age < 3 ORDER BY age"
    assert "┃ name " in out and "│ pet2 │" in out and "3 rows" in out
    fake_sql.append("DELETE FROM pet")
    assert main(["ask", "--run", str(run_dir), "--db", str(db), "Remove every pet"]) == 1  # EXIT_RULE: SQL failed
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "DELETE FROM pet" and out[1].startswith(
        "error: write_refused: the SQL writes to the database: refused, nothing was changed"), out
    assert sqlite3.connect(db).execute("SELECT count(*) FROM pet").fetchone() == (30,)
    # line by line with --json: a failing question is one answer and the next one is still answered; one failed
    # question makes the exit status 1, as for a single question (issue 29: stdin mode exited 0)
    fake_sql.extend(["DROP TABLE pet", "SELECT * FROM pet"])
    monkeypatch.setattr("sys.stdin", io.StringIO("drop it\nAll pets?\n"))
    assert main(["ask", "--run", str(run_dir), "--db", str(db), "--json", "--rows", "5"]) == 1
    dropped, listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert dropped["status"] == "write_refused" and dropped["rows"] == [] and listed["status"] == "ok"
    assert listed["columns"] == ["id", "name", "age"] and listed["row_count"] == 30 and len(listed["rows"]) == 5
    assert listed["rows"][0] == [1, "pet0", 0]


def test_ask_decodes_with_the_chosen_strategy(smoke_run, tmp_path: Path, capsys, monkeypatch) -> None:
    """--decoding picks any eval.decoding strategy; the executing ones run their candidates on --db."""
    run_dir, _ = smoke_run
    db = make_db(tmp_path / "pets.sqlite", "CREATE TABLE pet (id INTEGER PRIMARY KEY, name TEXT, age INT);"
                 "INSERT INTO pet (name, age) VALUES ('rex', 3);")
    monkeypatch.setattr("sys.stdin", io.StringIO("How many pets are there?\n"))
    rc = main(["ask", "--run", str(run_dir), "--db", str(db), "--json", "--decoding", "self_consistency",
               "-o", "eval.decoding.num_samples=3"])
    captured = capsys.readouterr()
    answer = json.loads(captured.out.splitlines()[-1])
    assert rc == (0 if answer["status"] == "ok" else 1)  # the smoke model's SQL may not run: the exit rule says
    assert answer["decoding"] == "self_consistency" and 1 <= answer["candidates"] <= 3
    assert "decoding: self_consistency" in captured.err


def test_bad_input_is_one_line(tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "run"  # a run dir whose training never saved weights (its config only)
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("model: {name: tiny}\n")
    db = make_db(tmp_path / "ok.sqlite", "CREATE TABLE t (a INT);")

    def error(*argv: str) -> str:
        assert main(["ask", *argv]) == 2
        lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(lines) == 1, lines
        return lines[0]

    (tmp_path / "notes.txt").write_text("not a database")
    assert "notes.txt is not an SQLite database" in error("--run", str(run_dir), "--db", str(tmp_path / "notes.txt"),
                                                          "q?")
    sqlite3.connect(tmp_path / "empty.sqlite").execute("PRAGMA user_version = 7").connection.close()
    assert "empty.sqlite has no tables" in error("--run", str(run_dir), "--db", str(tmp_path / "empty.sqlite"), "q?")
    assert "empty question" in error("--run", str(run_dir), "--db", str(db), "   ")
    assert f"no adapter/, model/ or checkpoints/*.ckpt in {run_dir}" in error("--run", str(run_dir), "--db", str(db),
                                                                            "q?")
    assert "say which model answers" in error("--db", str(db), "q?")
    assert "not a training run dir" in error("--run", str(tmp_path), "--db", str(db), "q?")
    assert f"--db {tmp_path} is a directory: give one SQLite database file, e.g. --db " in error(
        "--run", str(run_dir), "--db", str(tmp_path), "q?")
    assert "--timeout must be > 0 seconds, got 0" in error("--run", str(run_dir), "--db", str(db), "--timeout", "0",
                                                            "q?")
    assert "--best needs --run RUN_DIR" in error("--checkpoint", str(tmp_path / "x.ckpt"), "--best", "--db", str(db),
                                                 "q?")
    assert "--interactive reads questions at a prompt" in error("--run", str(run_dir), "--db", str(db),
                                                                "--interactive", "q?")


def test_help_states_the_exit_rule(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["ask", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert ("exit status: 0 when the SQL of every question ran, 1 when the SQL of any question did not" in text
            and "the same for one question and for questions read from stdin" in text)


def test_a_multi_turn_run_keeps_earlier_turns_as_history(smoke_run, tmp_path: Path, fake_sql, capsys,
                                                          monkeypatch) -> None:
    """Issue 29: `ask` on a SParC/CoSQL run answered each question alone. Now each prompt carries the conversation's
    earlier questions and the SQL written for them, as add_history("earlier") built training's; a blank line starts
    a new conversation. A single-turn run keeps answering each question alone."""
    import text2sql.data.prompt as prompt

    run_dir, _ = smoke_run
    db = make_db(tmp_path / "pets.sqlite", "CREATE TABLE pet (id INTEGER PRIMARY KEY, name TEXT, age INT);"
                 "INSERT INTO pet (name, age) VALUES ('rex', 3);")
    seen: list[list] = []
    encode = prompt.encode_source

    def spy(record, *args, **kwargs):
        seen.append([list(pair) for pair in record["history"]])
        return encode(record, *args, **kwargs)

    monkeypatch.setattr(prompt, "encode_source", spy)
    for layout, expected in (("sparc", lambda q: [[], [[q[0], "SELECT count(*) FROM pet"]], []]),
                             (None, lambda q: [[], [], []])):
        seen.clear()
        fake_sql.extend(["SELECT count(*) FROM pet", "SELECT name FROM pet", "SELECT age FROM pet"])
        monkeypatch.setattr("sys.stdin", io.StringIO("How many pets?\nAnd their names?\n\nHow old?\n"))
        extra = ["-o", f"dataset.layout={layout}"] if layout else []
        assert main(["ask", "--run", str(run_dir), "--db", str(db), "--json", "--interactive", *extra]) == 0
        captured = capsys.readouterr()
        answers = [json.loads(line) for line in captured.out.splitlines()]
        assert [a["sql"] for a in answers] == ["SELECT count(*) FROM pet", "SELECT name FROM pet",
                                               "SELECT age FROM pet"]
        first_input = prompt.INPUT_FORMAT.format("How many pets?")
        assert seen == expected([first_input]), seen
        assert [a["turn"] for a in answers] == ([1, 2, 1] if layout else [1, 1, 1])
        assert ("a new conversation" in captured.err) == bool(layout)
        assert captured.err.count("question> ") == 5  # --interactive prompts even when stdin is not a terminal


def test_best_loads_the_best_epochs_weights_and_says_so(smoke_run, tmp_path: Path, fake_sql, capsys) -> None:
    run_dir, _ = smoke_run
    db = make_db(tmp_path / "pets.sqlite", "CREATE TABLE pet (id INTEGER PRIMARY KEY, name TEXT, age INT);")
    best = json.loads((run_dir / "metrics.json").read_text())["best"]["epoch"]
    fake_sql.append("SELECT count(*) FROM pet")
    assert main(["ask", "--run", str(run_dir), "--db", str(db), "--best", "How many pets?"]) == 0
    err = capsys.readouterr().err
    assert f"(the best epoch, {best}: val/execution_accuracy " in err
    assert any(f"weights: {kind} {path} (the best epoch, {best}" in err for kind, path in (
        ("adapter", run_dir / "adapter_best"),  # exported by the W&B callback when the best epoch is not the last
        ("checkpoint", run_dir / "checkpoints" / f"epoch{best:02d}.ckpt"), ("adapter", run_dir / "adapter"))), err
    fake_sql.append("SELECT count(*) FROM pet")
    assert main(["ask", "--run", str(run_dir), "--db", str(db), "How many pets?"]) == 0
    assert "(the final weights, the last epoch's; --best: the best epoch's)" in capsys.readouterr().err
