"""A run's lifecycle around `fit`: progress lines, Ctrl-C / SIGTERM as states, the baseline before training, and
the frictions of issue 21 (outputs checked before loading, missing databases named). The subprocess drills
(a real SIGINT / SIGTERM and the exact resume) are in test_resume_e2e.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import REPO_ROOT
from text2sql.cli import main
from text2sql.job.progress import TrainingProgress
from text2sql.job.stop import RunStopped, stop_on_signals
from text2sql.job.stop_callback import StopOnSignal

# -- progress lines -------------------------------------------------------------------------------------------


def test_progress_line_has_epoch_step_loss_rate_and_eta():
    progress = TrainingProgress(every_s=30, plain=True)
    progress._run_start, progress._batches_run, progress._loss = 100.0, 10, 1.23456
    progress._epoch = {"tokens": 5000, "seconds": 2.0, "steps_start": 0}
    trainer = SimpleNamespace(num_training_batches=20, max_epochs=3, current_epoch=0, global_step=10,
                              estimated_stepping_batches=60)
    # 10 batches in 20 s: 2 s a batch, 50 to go
    assert progress.line(trainer, 10, now=120.0) == "epoch 0 of 3 batch 10/20 step 10/60 loss 1.2346 2,500 tok/s ETA 1m40s"
    assert TrainingProgress(plain=None).plain is not sys.stdout.isatty()  # decided by the terminal


# -- Ctrl-C and SIGTERM ---------------------------------------------------------------------------------------


class _Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch["input_ids"].float()).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class _SignalAt(pl.Callback):
    """Sends the signal at the end of batch number `batch` (1-based)."""

    def __init__(self, batch, signum):
        self.batch, self.signum = batch, signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx + 1 == self.batch and self.signum:
            os.kill(os.getpid(), self.signum)
            self.signum = None  # once: a second signal means "stop now"


def _fit(tmp_path, callbacks, accumulate=1):
    data = [{"input_ids": torch.ones(4, dtype=torch.long) * i, "attention_mask": torch.ones(4)} for i in range(16)]
    loader = DataLoader(data, batch_size=2)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False, default_root_dir=tmp_path,
                         accumulate_grad_batches=accumulate, callbacks=callbacks)
    trainer.fit(_Tiny(), train_dataloaders=loader)
    return trainer


@pytest.mark.parametrize("signum, status, accumulate, at_batch, step", [
    (signal.SIGINT, "interrupted", 1, 2, 2),  # right after step 2: the stop is there
    (signal.SIGTERM, "preempted", 2, 5, 3),   # half-way through step 3's accumulation: it completes step 3 first
])
def test_a_signal_stops_after_the_current_optimizer_step_with_a_checkpoint_of_it(tmp_path, signum, status, accumulate,
                                                                                  at_batch, step):
    ckpt, before = tmp_path / "last.ckpt", signal.getsignal(signal.SIGINT)
    progress = TrainingProgress(every_s=None)
    with pytest.raises(RunStopped) as stopped, stop_on_signals():
        _fit(tmp_path, [_SignalAt(at_batch, signum), progress, StopOnSignal(ckpt)], accumulate)
    assert stopped.value.status == status and stopped.value.saved and stopped.value.step == step
    state = torch.load(ckpt, weights_only=False)
    assert state["global_step"] == step and state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"][
        "processed"] == step * accumulate
    assert signal.getsignal(signal.SIGINT) is before  # the handlers are restored afterwards


def test_a_signal_before_training_stops_at_once_and_a_second_one_does_too():
    with pytest.raises(RunStopped) as stopped, stop_on_signals():
        os.kill(os.getpid(), signal.SIGTERM)  # e.g. while the model loads: nothing to save yet
    assert stopped.value.status == "preempted" and not stopped.value.saved and stopped.value.step is None


def test_the_armed_handler_says_its_line_without_logging(monkeypatch, capfd):
    """The first signal may arrive while the main thread is inside a log handler's flush of train.log: logging from
    the handler then raised "reentrant call inside BufferedWriter" and printed a traceback (seen under load in
    the SIGTERM drill). The handler records the request and writes its line to stderr's descriptor only."""
    import logging

    from text2sql.job import stop

    def no_logging(*args, **kwargs):
        raise AssertionError("the signal handler logged")

    monkeypatch.setattr(logging.Logger, "handle", no_logging)
    with stop_on_signals():
        stop.REQUEST.armed = True
        stop._handler(signal.SIGTERM, None)  # as Python calls it, between two bytecodes of the main thread
        assert stop.REQUEST.signum == signal.SIGTERM
    assert "SIGTERM: stopping after the current step with a checkpoint (again: stop now)" in capfd.readouterr().err


# -- output paths are checked before any model loads ----------------------------------------------------------


def test_output_paths_are_checked_before_a_model_loads_or_scoring_starts(tmp_path, monkeypatch, capsys):
    import transformers

    import text2sql.eval.execute as execute
    import text2sql.inference.predict as predict

    def never(*a, **k):
        raise AssertionError("loaded before the output path was checked")

    monkeypatch.setattr(predict, "load_for_inference", never)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", never)
    monkeypatch.setattr(execute, "ExecutionEvaluator", never)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")

    assert main(["predict", "--out", str(blocker / "pred.sql"), "--no-progress"]) == 2
    assert f"cannot write {blocker / 'pred.sql'}" in capsys.readouterr().err

    base, adapter = tmp_path / "base", tmp_path / "adapter"
    base.mkdir(), adapter.mkdir()
    (base / "config.json").write_text("{}")
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    assert main(["merge", "--adapter", str(adapter), "--out", str(blocker / "merged")]) == 2
    assert f"cannot write {blocker / 'merged'}" in capsys.readouterr().err

    db = tmp_path / "db" / "d1"
    db.mkdir(parents=True)
    (db / "d1.sqlite").write_bytes(b"")
    (tmp_path / "gold.sql").write_text("SELECT 1\td1\n")
    (tmp_path / "pred.sql").write_text("SELECT 1\n")
    assert main(["evaluate", "--gold", str(tmp_path / "gold.sql"), "--pred", str(tmp_path / "pred.sql"), "--db",
                 str(tmp_path / "db"), "--out", str(blocker / "v.jsonl"), "--no-progress"]) == 2
    assert f"cannot write {blocker / 'v.jsonl'}" in capsys.readouterr().err


# -- a Spider copy without some databases ---------------------------------------------------------------------


def test_missing_databases_are_named_at_the_start_with_the_ex_ceiling(tmp_path, caplog):
    from text2sql.eval.callback import ExecutionAccuracyCallback

    db_dir = tmp_path / "database"
    for name in ("a", "b"):
        (db_dir / name).mkdir(parents=True)
        (db_dir / name / f"{name}.sqlite").write_bytes(b"")
    dev = [{"db_id": d} for d in ["a"] * 50 + ["wta_1"] * 3 + ["b"] * 47]
    trainer = SimpleNamespace(is_global_zero=True, datamodule=SimpleNamespace(
        dev_records=dev, dataset=SimpleNamespace(root=tmp_path, db_dir=lambda split: db_dir)))
    with caplog.at_level("WARNING"):
        ExecutionAccuracyCallback().on_fit_start(trainer, None)
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == (f"3 of 100 dev examples have no database under {db_dir}: wta_1 (3); they count as db_missing, "
                    "so execution accuracy is at most 0.970")
    caplog.clear()
    ExecutionAccuracyCallback(limit=10, seed=0).on_fit_start(trainer, None)  # only the scored subset counts
    assert all("wta_1" not in r.getMessage() or "of 10 dev" in r.getMessage() for r in caplog.records)


# -- the baseline before training, and the resumed epoch's delta ----------------------------------------------


@pytest.mark.slow
def test_baseline_before_training_is_epoch_minus_one_and_in_metrics_json(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline", "TEXT2SQL_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "train.py", "debug=smoke", "logger=csv", "trainer.max_epochs=1",
                           "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "data.train_limit=64",
                           "eval.before_training=true", "eval.limit=8", "eval.max_new_tokens=16",
                           f"hydra.run.dir={run}"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((run / "metrics.json").read_text())
    baseline = record["baseline"]
    assert baseline["epoch"] == -1 and 0 <= baseline["val/execution_accuracy"] <= 1 and "val/exact_match" in baseline
    assert [r["epoch"] for r in record["history"]] == [0]  # never the best epoch: it has no checkpoint
    assert "before training: execution accuracy" in proc.stdout and "over the baseline" in proc.stdout
    assert (run / "predictions" / "epoch_-1_pred.sql").is_file() and (run / "predictions" / "epoch_-1_gold.sql").is_file()
    metrics_csv = next(run.rglob("metrics.csv")).read_text()
    assert ",-1" in metrics_csv or "-1," in metrics_csv  # the loggers got the epoch -1 row
