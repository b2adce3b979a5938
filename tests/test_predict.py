"""`text2sql predict`: same config as training, same generation as the callback, DB-GPT-Hub's pred.sql."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from text2sql.cli import main
from text2sql.job.run_dir import RunDir


@pytest.fixture(scope="module")
def trained_run(smoke_run):
    """conftest's smoke run (peft.r=4, default relative cache in its own start dir)."""
    run_dir, start = smoke_run
    assert (start / ".cache" / "text2sql").is_dir()
    return run_dir, start


def test_predict_from_run_dir_matches_the_callbacks_predictions(trained_run, tmp_path, monkeypatch):
    run_dir, _ = trained_run
    monkeypatch.delenv("TEXT2SQL_CACHE", raising=False)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "pred.sql"
    (tmp_path / "dev_gold.sql").write_text("a dataset's own gold\n")  # issue 29: predict wrote over it
    # debug=smoke scores eval.limit=16 examples: --limit 16 takes the same fixed-seed subset, in the same order
    assert main(["predict", "--run", str(run_dir), "--out", str(out), "--no-progress", "--limit", "16",
                 "eval.max_new_tokens=48", "--evaluate", "--decoding", "greedy"]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 16 and all("\n" not in line for line in lines)
    # the callback scored the same model at the last epoch: same prompts, same outputs
    # (predict loads the run's final weights, its adapter or last.ckpt: those of the last epoch)
    epoch = run_dir / "predictions"
    assert lines == (epoch / "epoch_1_pred.sql").read_text().splitlines()
    # the callback's gold file is the same examples' gold: the epoch re-scores with `text2sql evaluate`
    assert (epoch / "epoch_1_gold.sql").read_text() == (tmp_path / "pred.gold.sql").read_text()
    assert (tmp_path / "dev_gold.sql").read_text() == "a dataset's own gold\n"


def test_predict_decoding_flag_and_best_epoch(trained_run, tmp_path, capsys):
    """`predict --decoding STRATEGY` as `ask --decoding`; `--best` loads the best epoch's weights and says which."""
    run_dir, _ = trained_run
    best = __import__("json").loads((run_dir / "metrics.json").read_text())["best"]["epoch"]
    out = tmp_path / "p.sql"
    assert main(["predict", "--run", str(run_dir), "--best", "--decoding", "beam", "--limit", "2",
                 "--max-new-tokens", "8", "--no-progress", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "(decoding: beam)" in captured.out and len(out.read_text().splitlines()) == 2
    assert "text2sql predict: weights: " in captured.err and f"(the best epoch, {best}: " in captured.err
    assert main(["predict", "--checkpoint", str(run_dir / "checkpoints" / "last.ckpt"), "--best"]) == 2
    assert "--best needs --run RUN_DIR" in capsys.readouterr().err


def test_predict_bad_inputs_are_one_line(tmp_path, capsys):
    assert main(["predict", "--run", str(tmp_path), "--out", str(tmp_path / "p.sql")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a training run dir" in err[0]
    assert main(["predict", "--checkpoint", str(tmp_path / "nope.ckpt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["predict", "model=nope"]) == 2
    assert "model/nope" in capsys.readouterr().err


def test_checkpoint_alone_finds_its_run_config_from_anywhere(trained_run, tmp_path, monkeypatch, capsys):
    """Issue 13.3 / 13.7: no overrides repeated (before: a size-mismatch traceback, the run used peft.r=4), no
    sample or tiny model rebuilt in the current dir, pred.sql in the run dir, the full evaluate tables."""
    run_dir, start = trained_run
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.setenv("TEXT2SQL_CACHE", str(tmp_path / "another_cache"))  # this shell's cache is not the run's
    monkeypatch.chdir(elsewhere)
    models_before = sorted(p.name for p in (start / ".cache" / "text2sql" / "models").iterdir())
    assert main(["predict", "--checkpoint", str(run_dir / "checkpoints" / "last.ckpt"), "--limit", "12",
                 "--no-progress", "--evaluate", "--max-new-tokens", "24"]) == 0
    out = capsys.readouterr()
    assert f"using the config of run {run_dir}" in out.err
    assert len((run_dir / "pred.sql").read_text().splitlines()) == 12
    assert list(elsewhere.iterdir()) == [] and not (tmp_path / "another_cache").exists()  # nothing rebuilt here
    assert sorted(p.name for p in (start / ".cache" / "text2sql" / "models").iterdir()) == models_before
    for needle in ("EXECUTION ACCURACY", "easy", "medium", "extra", "all", "wrong_result", "syntax_error"):
        assert needle in out.out, out.out  # per hardness and per status, not just the overall EX
    gold = (run_dir / "pred.gold.sql").read_text().splitlines()
    assert len(gold) == 12 and all("\t" in line for line in gold)


def test_adapter_records_an_absolute_base_and_merges_from_anywhere(trained_run, tmp_path, monkeypatch):
    """Issue 13.7: the adapter's base_model_name_or_path was `.cache/text2sql/models/...`, relative to the start
    dir, so `text2sql merge` failed from anywhere else."""
    import json

    run_dir, start = trained_run
    base = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert os.path.isabs(base) and base.startswith(str(start))
    monkeypatch.chdir(tmp_path)
    assert main(["merge", "--adapter", str(run_dir), "--out", str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged" / "config.json").is_file()


def test_a_checkpoint_that_does_not_fit_the_config_is_one_line(trained_run, tmp_path, capsys):
    run_dir, _ = trained_run
    ckpt = tmp_path / "elsewhere.ckpt"  # outside its run dir: no config to find, the default one (r=16) is used
    ckpt.write_bytes((run_dir / "checkpoints" / "last.ckpt").read_bytes())
    assert main(["predict", "--checkpoint", str(ckpt), "--limit", "2", "--no-progress",
                 "--out", str(tmp_path / "p.sql"), f"paths.cache_dir={run_dir.parent / 'start' / '.cache' / 'text2sql'}"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and "predict:" in ln]
    assert len(err) == 1 and "does not fit this model/peft config" in err[0] and "size mismatch" in err[0]
    assert not (tmp_path / "p.sql").exists()


def test_group_choice_with_a_saved_run_config_is_refused(tmp_path):
    """`--run R model=x` used to merge the string 'x' over the run's whole model section."""
    from text2sql.errors import UserError
    from text2sql.inference.predict import compose_config

    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("model: {name: tiny}\neval: {batch_size: 4}\n")
    assert compose_config(["eval.batch_size=8"], tmp_path).eval.batch_size == 8
    with pytest.raises(UserError, match="model=codellama7b picks a config group"):
        compose_config(["model=codellama7b"], tmp_path)


@pytest.mark.slow
def test_an_installed_wheel_predicts_and_evaluates_from_anywhere(trained_run, tmp_path):
    """`pip install .` (a wheel, not editable): conf/ ships inside the package, so `text2sql predict --run` and
    `text2sql evaluate` work from any directory with the installed copy, not the checkout."""
    run_dir, _ = trained_run
    wheels, site, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", str(REPO_ROOT), "-w", str(wheels)],
                   check=True, capture_output=True, timeout=300)
    wheel = next(wheels.glob("text2sql-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True,
                   capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(site), "WANDB_MODE": "offline"}

    def text2sql(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(site / "bin" / "text2sql"), *args], cwd=elsewhere, env=env, capture_output=True,
                              text=True, timeout=600)

    where = subprocess.run([sys.executable, "-c", "import text2sql.config.paths as p; print(p.__file__); "
                            "print(p.conf_dir())"], cwd=elsewhere, env=env, capture_output=True, text=True)
    module_file, conf = where.stdout.split()
    assert module_file.startswith(str(site)) and conf.startswith(str(site)), where.stdout
    assert (Path(conf) / "train.yaml").is_file() and (Path(conf) / "hydra" / "job_logging" / "console.yaml").is_file()

    pred = elsewhere / "pred.sql"
    proc = text2sql("predict", "--run", str(run_dir), "--out", str(pred), "--limit", "4", "--no-progress",
                    "--evaluate")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(pred.read_text().splitlines()) == 4 and "execution accuracy" in proc.stdout.lower()
    proc = text2sql("evaluate", "--gold", str(elsewhere / "pred.gold.sql"), "--pred", str(pred), "--db",
                    str(Path(RunDir(run_dir).resolved_paths()["dataset.root"]) / "database"), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.slow
def test_predict_prints_no_third_party_noise(trained_run, tmp_path):
    """bitsandbytes' "Failed to load CPU gemm_4bit_forward" hint (CPUs with AVX512-BF16) and transformers'
    `is_gradient_checkpointing` FutureWarning (called by PEFT) are filtered as in training; our lines stay."""
    run_dir, _ = trained_run
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    proc = subprocess.run([sys.executable, "-m", "text2sql", "predict", "--run", str(run_dir), "--limit", "2",
                           "--out", str(tmp_path / "p.sql"), "--no-progress", "eval.max_new_tokens=8"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    output = proc.stdout + proc.stderr
    assert "wrote 2 predictions" in output
    # the CPU policy of training (text2sql/machine/threads.py), set by the verb before torch loaded OpenMP
    assert "generating on cpu; CPU threads: " in proc.stderr
    assert __import__("re").search(r"OpenMP waiting: GOMP_SPINCOUNT=(100|10000) \(auto: [\d.]+ of \d+ usable CPU\(s\) "
                                   r"busy outside this run at start -> (busy|idle)\)", proc.stderr), proc.stderr
    assert "gemm_4bit_forward" not in output and "Warning" not in output, output
    assert "Loading weights" not in output  # the tiny model's bar (issue 29)


def test_inference_runs_where_asked_and_says_where(monkeypatch):
    """`--device auto` (default) is this process's GPU when torch sees one, else the CPU under training's thread
    policy; `--device cuda` without a GPU is one line; weights bitsandbytes placed at load stay put."""
    import torch

    import text2sql.inference.predict as predict_module
    from text2sql.errors import UserError
    from text2sql.inference.predict import place_model

    model = torch.nn.Linear(2, 2)
    if torch.cuda.is_available():
        assert place_model(model).startswith("cuda:")
        return
    assert place_model(model).startswith("cpu; CPU threads: ")
    assert next(model.parameters()).device.type == "cpu"
    with pytest.raises(UserError, match=r"^--device cuda: torch .* sees no CUDA GPU; use --device cpu$"):
        place_model(model, "cuda")
    with pytest.raises(UserError, match="unknown --device 'tpu'"):
        place_model(model, "tpu")
    def never(*args, **kwargs):
        raise AssertionError("weights loaded before the device was checked")

    monkeypatch.setattr(predict_module, "_load_weights", never)
    with pytest.raises(UserError, match="--device cuda: torch"):
        predict_module.load_for_inference(None, None, None, "cuda")
    model.hf_device_map = {"": "cpu"}  # as from_pretrained(device_map=...) leaves it
    assert place_model(model, "cpu") == "cpu"
