"""`text2sql report`: ranking, tables and the picture, on synthetic Hydra sweep dirs (no training)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from text2sql.cli import main
from text2sql.errors import UserError
from text2sql.sweep import report
from text2sql.sweep.jobs import read_job
from text2sql.sweep.plot import plot

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_job(sweep: Path, num: int, overrides: list[str], metrics: dict | None = None, log: str | None = None) -> Path:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "config.yaml").write_text("{}\n")
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    if log is not None:
        (job / "train.log").write_text(log)
    return job


def ok_metrics(ex: list[float], losses: list[float], wall: float = 12.5) -> dict:
    history = []
    for epoch, (e, loss) in enumerate(zip(ex, losses)):
        history.append({"epoch": epoch, "val/execution_accuracy": e, "train/loss": loss, "val/loss": loss + 0.5,
                        "val/ex_easy": min(1.0, e + 0.1), "val/ex_medium": e, "val/ex_hard": max(0.0, e - 0.1)})
    best_epoch = max(range(len(ex)), key=lambda i: (ex[i], -i))
    return {"final": dict(history[-1]), "history": history,
            "best": {"val/execution_accuracy": ex[best_epoch], "epoch": best_epoch},
            "status": "ok", "error": None, "wall_time_s": wall}


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """A 2x2 grid over peft.r and optim.lr with debug=smoke fixed, plus a failed job and a crashed one."""
    d = tmp_path / "multirun" / "2026-11-25" / "12-00-00"
    make_job(d, 0, ["debug=smoke", "peft.r=4", "optim.lr=1e-3"], ok_metrics([0.1, 0.3], [2.0, 1.5], wall=61))
    make_job(d, 1, ["debug=smoke", "peft.r=4", "optim.lr=2e-3"], ok_metrics([0.2, 0.6, 0.5], [1.9, 1.2, 1.0]))
    make_job(d, 2, ["debug=smoke", "peft.r=8", "optim.lr=1e-3"], ok_metrics([0.4, 0.4], [1.8, 1.4]))
    make_job(d, 3, ["debug=smoke", "peft.r=8", "optim.lr=2e-3"],
             {"final": {}, "history": [], "best": {}, "status": "failed",
              "error": "Traceback (most recent call last):\n  ...\nValueError: optim.lr must be > 0, got -1",
              "wall_time_s": 3.0})
    # a job that died without metrics.json: the error comes from Hydra's job log
    make_job(d, 10, ["debug=smoke", "peft.r=16", "optim.lr=1e-3"], None,
             log="[2026-11-25 12:00:01,000][__main__][INFO] - start\n"
                 "[2026-11-25 12:00:02,000][__main__][ERROR] - torch.OutOfMemoryError: CUDA out of memory\n")
    (d / ".submitit").mkdir()  # launcher bookkeeping, not a job
    (d / "multirun.yaml").write_text(yaml.safe_dump(
        {"hydra": {"overrides": {"task": ["debug=smoke", "peft.r=4,8,16", "optim.lr=1e-3,2e-3"]},
                   "sweeper": {"params": None}}}))
    return d


def test_ranking_and_swept_columns(sweep: Path):
    rep = report.build_report(sweep, png=False)
    assert [j.name for j in rep.jobs] == ["1", "2", "0", "3", "10"]
    assert rep.swept == ["peft.r", "optim.lr"]  # debug=smoke is fixed, not a column
    best = rep.jobs[0]
    assert best.best == pytest.approx(0.6) and best.best_epoch == 1
    assert best.final_loss == pytest.approx(1.0)          # last epoch's loss, not the best epoch's
    assert best.hardness == {"easy": pytest.approx(0.7), "medium": pytest.approx(0.6), "hard": pytest.approx(0.5)}
    assert rep.jobs[1].best_epoch == 0                     # ties: first epoch that reaches the max
    assert rep.jobs[3].status == "failed" and rep.jobs[3].error == "ValueError: optim.lr must be > 0, got -1"
    assert rep.jobs[4].status == "failed" and "CUDA out of memory" in rep.jobs[4].error
    assert rep.jobs[0].overrides["optim.lr"] == pytest.approx(2e-3)  # typed, "2e-3" is a float


def test_summary_md(sweep: Path):
    report.build_report(sweep, png=False)
    md = (sweep / "summary.md").read_text()
    table = [ln for ln in md.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header == ["rank", "job", "peft.r", "optim.lr", "best EX", "epoch", "final train loss", "final val loss",
                      "EX easy", "EX medium", "EX hard", "wall time", "status"]
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in table[2:]]
    assert [r[1] for r in rows] == ["1", "2", "0", "3", "10"]
    assert rows[0][2:6] == ["4", "0.002", "0.6", "1"]
    assert rows[2][header.index("wall time")] == "1m01s"
    assert rows[3][-1] == "failed: ValueError: optim.lr must be > 0, got -1"
    assert rows[4][-1].startswith("failed: ") and "out of memory" in rows[4][-1]
    assert "`debug=smoke`" in md


def test_summary_csv(sweep: Path):
    report.build_report(sweep, png=False)
    with (sweep / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["rank", "job", "peft.r", "optim.lr", "best_execution_accuracy", "best_epoch", "epochs",
                             "final_train_loss", "final_val_loss", "ex_easy", "ex_medium", "ex_hard", "wall_time_s", "status", "error",
                             "job_dir"]
    assert [r["job"] for r in rows] == ["1", "2", "0", "3", "10"]
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert float(rows[0]["best_execution_accuracy"]) == pytest.approx(0.6)
    assert rows[0]["epochs"] == "3" and float(rows[0]["optim.lr"]) == pytest.approx(0.002)
    assert rows[3]["status"] == "failed" and rows[3]["best_execution_accuracy"] == ""
    assert rows[3]["error"] == "ValueError: optim.lr must be > 0, got -1"


def test_summary_png_is_valid(sweep: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg

    rep = report.build_report(sweep)
    png = sweep / "summary.png"
    assert rep.files["summary.png"] == png
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    img = mpimg.imread(png)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200


def test_other_metric_and_categorical_values(tmp_path: Path):
    d = tmp_path / "sweep"
    m = ok_metrics([0.2, 0.3], [1.0, 0.9])
    for h in m["history"]:
        h["val/exact_match"] = 1 - h["val/execution_accuracy"]
    make_job(d, 0, ["model=tiny", "peft.target_modules=all"], m)
    make_job(d, 1, ["model=tiny", "peft.target_modules=attn"], ok_metrics([0.5], [1.0]))
    rep = report.build_report(d, metric="val/exact_match")
    assert rep.swept == ["peft.target_modules"]
    assert [j.name for j in rep.jobs] == ["0", "1"]       # job 1 has no val/exact_match: after the ones that do
    assert rep.jobs[0].best == pytest.approx(0.8) and rep.jobs[1].best is None
    assert (d / "summary.png").read_bytes()[:8] == PNG_SIGNATURE


def test_cli_prints_top_rows(sweep: Path, capsys):
    assert main(["report", str(sweep), "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "5 jobs, 3 ok" in out and "summary.md" in out
    assert all((sweep / name).is_file() for name in report.SUMMARY_FILES)


def test_no_jobs_is_one_line_error(tmp_path: Path, capsys):
    empty = tmp_path / "multirun" / "2026-11-25"
    (empty / "12-00-00" / "0" / ".hydra").mkdir(parents=True)
    with pytest.raises(UserError, match="no Hydra jobs found.*12-00-00"):
        report.build_report(empty)
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("text2sql report: error:") and "\n" not in err


def test_error_txt_and_null_best(tmp_path: Path):
    """A job killed after saving its traceback (error.txt, no metrics.json), and metrics.json with best: null."""
    d = tmp_path / "sweep"
    job = make_job(d, 0, ["optim.lr=1e-3"], None)
    (job / "error.txt").write_text("Traceback (most recent call last):\n  File x\nRuntimeError: loss is NaN\n")
    make_job(d, 1, ["optim.lr=1"], {"final": {}, "history": [], "best": None, "status": "failed",
                                     "error": "FloatingPointError: NaN loss", "wall_time_s": 1.0})
    make_job(d, 2, ["optim.lr=1e-4"], ok_metrics([0.1], [1.0]))
    rep = report.build_report(d, png=False)
    assert [(j.name, j.status) for j in rep.jobs] == [("2", "ok"), ("0", "failed"), ("1", "failed")]
    assert rep.jobs[1].error == "RuntimeError: loss is NaN"
    assert rep.jobs[2].error == "FloatingPointError: NaN loss" and rep.jobs[2].best is None


def test_ties_go_to_the_lower_val_loss(tmp_path: Path):
    d = tmp_path / "sweep"
    make_job(d, 0, ["optim.lr=1e-3"], ok_metrics([0.0, 0.0], [2.0, 1.8]))
    make_job(d, 1, ["optim.lr=2e-3"], ok_metrics([0.0, 0.0], [2.0, 1.2]))
    make_job(d, 2, ["optim.lr=5e-3"], ok_metrics([0.0, 0.0], [2.0, 1.5]))
    rep = report.build_report(d)
    assert [j.name for j in rep.jobs] == ["1", "2", "0"]
    assert rep.jobs[0].val_loss == pytest.approx(1.7)
    assert len(rep.jobs[0].loss_history) == 2


def test_unknown_metric_is_refused_and_good_output_stays(sweep: Path, capsys):
    """Issue 13.5: a typo in --metric used to exit 0 and overwrite summary.* with an empty column."""
    assert main(["report", str(sweep), "--no-plot"]) == 0
    before = {name: (sweep / name).read_bytes() for name in ("summary.md", "summary.csv")}
    capsys.readouterr()
    assert main(["report", str(sweep), "--metric", "val/ex_hrad"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "unknown metric 'val/ex_hrad'" in err[0]
    assert "val/execution_accuracy" in err[0] and "val/ex_hard" in err[0]  # the known ones are listed
    assert {name: (sweep / name).read_bytes() for name in before} == before
    assert not (sweep / "summary.png").exists() and not list(sweep.glob(".summary*"))


def test_metric_absent_from_every_successful_job_says_no_example_of_this_kind(tmp_path: Path, capsys):
    """A sample without hard questions: val/ex_hard is a real metric, but no job has a value for it."""
    d = tmp_path / "sweep"
    for num, lr in enumerate(("1e-3", "2e-3")):
        m = ok_metrics([0.5, 0.7 + num / 10], [1.0, 0.8])
        for row in [*m["history"], m["final"]]:
            row.pop("val/ex_hard")
        make_job(d, num, [f"optim.lr={lr}"], m)
    (d / "summary.md").write_text("a good earlier report\n")
    assert main(["report", str(d), "--metric", "val/ex_hard"]) == 2
    err = capsys.readouterr().err
    assert "no example of this kind" in err and "no successful job" not in err
    assert (d / "summary.md").read_text() == "a good earlier report\n"
    assert main(["report", str(d), "--metric", "val/ex_medium", "--no-plot"]) == 0  # a present bucket works


def test_picture_of_jobs_without_the_metric_does_not_blame_success(tmp_path: Path, monkeypatch):
    """Only some jobs have the metric: the file is written; an empty panel never says 'no successful job'."""
    d = tmp_path / "sweep"
    make_job(d, 0, ["optim.lr=1e-3"], ok_metrics([0.5], [1.0]))
    texts = []
    import matplotlib.axes

    original = matplotlib.axes.Axes.text
    monkeypatch.setattr(matplotlib.axes.Axes, "text", lambda self, *a, **k: texts.append(a[2]) or original(self, *a, **k))
    plot(d / "p.png", [read_job(d / "0", "val/exact_match")], ["optim.lr"], "val/exact_match", "t")
    assert texts == ["no job recorded an epoch", "no job has exact_match"]


def test_console_table_fits_80_columns(tmp_path: Path):
    """Three swept keys, a long error and a long dir: every line fits 80 columns, no value is cut, and the
    error is printed whole under the table (it used to be folded into a narrow status column)."""
    import io
    import re

    from rich.console import Console

    from text2sql.sweep.tables import print_summary

    d = tmp_path / "multirun" / "2026-12-02" / "04-00-00"
    for i, (r, lr) in enumerate([(8, "1e-4"), (64, "1e-3"), (16, "2e-5")]):
        make_job(d, i, [f"peft.r={r}", "peft.alpha=16" if i else "peft.alpha=128", f"optim.lr={lr}"],
                 ok_metrics([0.25, 0.5 + i / 10], [2.0, 1.25], wall=3725))
    error = "RuntimeError: " + "a very long reason that does not fit in any table column " * 2
    make_job(d, 3, ["peft.r=8", "peft.alpha=32", "optim.lr=1e-2"],
             {"history": [], "status": "failed", "error": error, "wall_time_s": 1.0})
    rep = report.build_report(d, png=False)
    out = io.StringIO()
    print_summary(rep.sweep_dir, rep.jobs, rep.swept, rep.metric, 10, list(rep.files.values()),
                  Console(file=out, width=80, color_system=None))
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80, out.getvalue()
    header = next(line for line in lines if " job " in line).split()
    assert header[:5] == ["#", "job", "r", "alpha", "lr"] and "wall" in header
    rows = [line.split() for line in lines if re.match(r"\s*\d+\s+\d+\s", line)]  # rank, job, ...
    assert [row[2:5] for row in rows] == [["16", "16", "2e-05"], ["64", "16", "0.001"], ["8", "128", "0.0001"],
                                          ["8", "32", "0.01"]]
    assert rows[0][-2:] == ["1h02m", "ok"] and rows[-1][-1] == "failed"
    assert " ".join(out.getvalue().split()).count(error.strip()) == 1  # whole, on its own line


def test_narrow_terminal_drops_optional_columns_not_values(sweep: Path):
    from rich.console import Console

    from text2sql.sweep.tables import console_table

    rep = report.build_report(sweep, png=False)
    table = console_table(rep.jobs, rep.swept, rep.metric, width=50)
    headers = [c.header for c in table.columns]
    assert headers[:4] == ["#", "job", "r", "lr"] and "wall" not in headers and headers[-1] == "status"
    assert Console(width=10_000).measure(table).maximum <= 50


def test_log_axis_for_orders_of_magnitude(tmp_path: Path, monkeypatch):
    """lr 1e-4 and 1e-3 (one order of magnitude) and an Optuna `tag(log, ...)` key get a log x axis;
    r 8 and 16 stay linear."""
    import matplotlib.axes

    from text2sql.sweep.jobs import declared_log_keys
    from text2sql.sweep.plot import log_axis

    assert log_axis([1e-4, 1e-3]) and not log_axis([1e-3, 2e-3]) and log_axis([1e-3, 2e-3], declared_log=True)
    assert not log_axis([0.0, 0.1, 10.0]) and not log_axis([])
    d = tmp_path / "sweep"
    for i, (r, lr, drop) in enumerate([(8, "1e-4", 0.05), (16, "1e-3", 0.1), (8, "5e-4", 0.2)]):
        make_job(d, i, [f"peft.r={r}", f"optim.lr={lr}", f"peft.dropout={drop}"], ok_metrics([0.2 * i], [1.0]))
    (d / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"sweeper": {"params": {
        "peft.dropout": "tag(log, interval(0.05, 0.2))", "peft.r": "choice(8, 16)", "optim.lr": "1e-4,1e-3"}}}}))
    assert declared_log_keys(d) == {"peft.dropout"}
    scales = {}
    original = matplotlib.axes.Axes.set_xlabel
    monkeypatch.setattr(matplotlib.axes.Axes, "set_xlabel",
                        lambda self, label, *a, **k: scales.setdefault(label.split()[0], self.get_xscale())
                        or original(self, label, *a, **k))
    report.build_report(d)
    assert scales == {"epoch": "linear", "peft.r": "linear", "optim.lr": "log", "peft.dropout": "log"}


def test_report_modules_take_metric_names_from_metric_names():
    """One constant per metric: the report package names no metric itself (text2sql/metric_names.py does)."""
    import re

    import text2sql.sweep

    for path in Path(text2sql.sweep.__file__).parent.glob("*.py"):
        assert not re.search(r"[\"'](val|train)/", path.read_text()), path.name
