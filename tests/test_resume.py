"""One run across resumes (run dir, overrides, W&B id, history, finished runs) and metrics that exist on some epochs."""

from __future__ import annotations

import json
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from text2sql.training.checkpoint import EvalCheckpoint, EvalEarlyStopping, ExactResume
from text2sql.errors import ResumeError
from text2sql.job.resume import RunFinished, check_not_finished, checkpoint_to_resume, continue_run_argv
from text2sql.job.run_dir import RunDir
from text2sql.tracking.logger import wandb_run_id
from text2sql.job.history import EpochLog
from text2sql.job.record_callback import RecordEpochs


def make_run(tmp_path, overrides=("debug=smoke", "trainer.max_epochs=3", "seed=7")):
    run = tmp_path / "outputs" / "2026-11-25" / "10-00-00"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("seed: 7\n")
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    return run


@pytest.mark.parametrize("form", ["{run}", "{run}/checkpoints/last.ckpt", "{run}/checkpoints"])
def test_ckpt_path_of_a_run_continues_it_in_its_dir_with_its_overrides(tmp_path, form):
    run = make_run(tmp_path)
    argv = continue_run_argv([f"ckpt_path={form.format(run=run)}", "trainer.max_epochs=5"])
    # recorded overrides first, a key given again replaces the recorded one, the run's own dir
    assert argv == ["debug=smoke", "seed=7", f"ckpt_path={form.format(run=run)}", "trainer.max_epochs=5",
                    f"hydra.run.dir={run.resolve()}"]


def test_argv_left_alone_outside_a_run_dir_in_multiruns_and_with_an_explicit_dir(tmp_path):
    run = make_run(tmp_path)
    (tmp_path / "loose.ckpt").write_bytes(b"")
    for argv in ([f"ckpt_path={tmp_path / 'loose.ckpt'}"], ["-m", f"ckpt_path={run}"],
                 [f"ckpt_path={run}", "hydra.run.dir=elsewhere"], ["ckpt_path=last"], ["optim.lr=1e-3"]):
        assert continue_run_argv(argv) == argv


def test_checkpoint_to_resume(tmp_path):
    run = make_run(tmp_path)
    last = str(run / "checkpoints" / "last.ckpt")
    assert checkpoint_to_resume(str(run), None, tmp_path) == last  # a run dir means its last.ckpt
    assert checkpoint_to_resume("last", None, run) == last
    assert checkpoint_to_resume(None, "auto", run) == last  # resume=auto: a requeued job picks its checkpoint up
    assert checkpoint_to_resume(None, "auto", tmp_path / "fresh") is None  # ... or starts when there is none
    assert checkpoint_to_resume(None, None, run) is None
    with pytest.raises(FileNotFoundError, match="ckpt_path=last"):
        checkpoint_to_resume("last", None, tmp_path / "fresh")
    (run / "checkpoints" / "last.ckpt").unlink()
    with pytest.raises(FileNotFoundError, match="no checkpoints/last.ckpt"):
        checkpoint_to_resume(str(run), None, tmp_path)
    with pytest.raises(ResumeError, match="resume=auto"):
        checkpoint_to_resume(None, "yes", run)


def _ckpt(tmp_path, processed, is_last_batch, step):
    path = tmp_path / f"p{processed}_{is_last_batch}.ckpt"
    torch.save({"epoch": processed, "global_step": step, "loops": {"fit_loop": {
        "epoch_progress": {"current": {"processed": processed}},
        "epoch_loop.batch_progress": {"is_last_batch": is_last_batch}}}}, path)
    return str(path)


def test_a_finished_run_says_so_instead_of_training_its_last_epoch_again(tmp_path):
    with pytest.raises(RunFinished, match="trained 3 epochs .* raise trainer.max_epochs"):
        check_not_finished(_ckpt(tmp_path, 3, True, 24), max_epochs=3)
    check_not_finished(_ckpt(tmp_path, 3, True, 24), max_epochs=5)  # extended: goes on
    check_not_finished(_ckpt(tmp_path, 2, True, 16), max_epochs=3)  # killed after epoch 2 of 3
    check_not_finished(_ckpt(tmp_path, 2, False, 20), max_epochs=3)  # mid-epoch


def test_wandb_run_id_is_kept_in_the_run_dir(tmp_path):
    first = wandb_run_id(tmp_path)
    assert len(first) == 8 and wandb_run_id(tmp_path) == first
    assert (tmp_path / "wandb" / "run_id").read_text().strip() == first
    assert wandb_run_id(tmp_path / "other") != first


class _Trainer:
    is_global_zero = True

    def __init__(self, epoch, metrics):
        self.current_epoch, self.callback_metrics = epoch, {k: torch.tensor(v) for k, v in metrics.items()}


def test_epoch_log_writes_metrics_json_every_epoch_and_a_rerun_epoch_replaces_its_row(tmp_path):
    first = EpochLog(RunDir(tmp_path))
    first.rows = [{"epoch": 0, "train/loss": 3.0}, {"epoch": 1, "train/loss": 2.0}]
    first.save("stopped")
    record = EpochLog(RunDir(tmp_path), "val/execution_accuracy")
    record.resume()  # the same run goes on
    record.add_score(1, {"val/execution_accuracy": 0.5})
    record.close_epoch(_Trainer(1, {"train/loss_epoch": 1.5, "val/execution_accuracy": 0.5}), None)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["status"] == "running" and [r["epoch"] for r in on_disk["history"]] == [0, 1]
    assert on_disk["history"][1] == {"epoch": 1, "val/execution_accuracy": 0.5, "train/loss": 1.5}
    assert on_disk["best"] == {"val/execution_accuracy": 0.5, "epoch": 1} and record.best()["epoch"] == 1
    assert RunDir(tmp_path).history() == on_disk["history"] == record.rows
    assert RunDir(tmp_path / "none").history() == []


def test_epoch_log_drops_the_stale_scores_of_epochs_without_evaluation(tmp_path):
    """Lightning keeps the last logged EX in callback_metrics: epochs without EX must not repeat it (EM and the
    interaction scores included, which the old filter by name missed)."""
    record = EpochLog(None)
    scores = {"val/execution_accuracy": 0.5, "val/ex_easy": 0.5, "val/status/correct": 0.5, "val/exact_match": 0.25}
    stale = {"train/loss_epoch": 1.0, "val/loss": 2.0, **scores}
    record.add_score(1, scores)
    record.close_epoch(_Trainer(1, stale), None)
    record.close_epoch(_Trainer(2, stale), None)
    assert record.rows[0] == {"epoch": 1, "train/loss": 1.0, "val/loss": 2.0, **scores}
    assert record.rows[1] == {"epoch": 2, "train/loss": 1.0, "val/loss": 2.0}
    assert record.evaluated(1) and not record.evaluated(2)


def test_epoch_log_keeps_the_baseline_the_wall_time_and_tells_its_readers(tmp_path):
    record = EpochLog(RunDir(tmp_path))
    heard = []
    record.subscribe(lambda row, score: heard.append((row["epoch"], score)))
    baseline = SimpleNamespace(rows=[{"db_id": "d", "gold": "SELECT  1", "prediction": "SELECT 2"}])
    record.add_score(-1, {"val/execution_accuracy": 0.125}, score=baseline)
    assert (tmp_path / "predictions" / "epoch_-1_gold.sql").read_text() == "SELECT 1\td\n"
    assert json.loads((tmp_path / "metrics.json").read_text())["baseline"] == {"epoch": -1,
                                                                                "val/execution_accuracy": 0.125}
    record.add_score(0, {"val/execution_accuracy": 0.25}, score=None)  # another rank: metrics, no rows
    record.close_epoch(_Trainer(0, {"val/execution_accuracy": 0.25}), None)
    assert heard == [(-1, baseline), (0, None)]
    assert record.last_scored(1)["epoch"] == 0 and record.last_scored(0)["epoch"] == -1
    record.start -= 100  # 100 s in this process
    saved = record.save("interrupted", step=7)
    assert saved["baseline"]["epoch"] == -1 and saved["step"] == 7 and saved["wall_time_s"] >= 100
    resumed = EpochLog(RunDir(tmp_path))
    resumed.resume()
    assert resumed.rows == record.rows and resumed.baseline == record.baseline
    assert resumed.save("ok")["wall_time_s"] >= 100  # the earlier process's time counts too
    assert json.loads((tmp_path / "metrics.json").read_text())["baseline"]["epoch"] == -1


class EveryOther(BoringModel):
    """Logs `val/ex` only on every 2nd epoch and hands it to the run's record, as the EX callback does with
    eval.every_n_epochs=2."""

    def __init__(self, values, name="val/ex", record=None):
        super().__init__()
        self.values, self.name, self.record = values, name, record

    def on_validation_epoch_end(self):
        if (self.current_epoch + 1) % 2 == 0:
            self.log(self.name, self.values[self.current_epoch])
            if self.record is not None:
                self.record.add_score(self.current_epoch, {self.name: self.values[self.current_epoch]})


def _fit(tmp_path, callbacks, epochs, values, name="val/ex", record=None):
    trainer = pl.Trainer(max_epochs=epochs, limit_train_batches=2, limit_val_batches=1, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=callbacks, default_root_dir=tmp_path)
    trainer.fit(EveryOther(values, name, record))
    return trainer


def test_the_configured_checkpoint_callback_survives_eval_every_n_epochs_2(tmp_path):
    """`python train.py eval.every_n_epochs=2` crashed after the first epoch (issue 13 item 1)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from conftest import REPO_ROOT

    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["eval.every_n_epochs=2"])
    record = EpochLog(None, cfg.optimized_metric)
    ckpt = instantiate(cfg.callbacks.model_checkpoint, dirpath=str(tmp_path), record=record)
    stop = instantiate(cfg.callbacks.early_stopping, patience=1, record=record)
    _fit(tmp_path, [ckpt, stop, RecordEpochs(record)], 4, [None, 0.5, None, 0.7], name=cfg.optimized_metric,
         record=record)
    assert ckpt.best_model_score == pytest.approx(0.7) and (tmp_path / "last.ckpt").is_file()
    assert record.best()["epoch"] == 3 and [r["epoch"] for r in record.rows] == [0, 1, 2, 3]


def test_plain_model_checkpoint_crashes_on_an_epoch_without_the_metric(tmp_path):
    """What `python train.py eval.every_n_epochs=2` hit (issue 13 item 1)."""
    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor="val/ex", mode="max", save_last=True)
    with pytest.raises(MisconfigurationException, match="could not find the monitored key"):
        _fit(tmp_path, [ckpt], 2, [0.1, 0.2])


def test_checkpoint_and_early_stopping_work_on_epochs_without_the_metric(tmp_path):
    values = [None, 0.5, None, 0.4, None, 0.3, None, 0.9]  # EX at epochs 1, 3, 5, 7; worse twice after epoch 1
    record = EpochLog(None, "val/ex")
    ckpt = EvalCheckpoint(dirpath=tmp_path, filename="epoch{epoch:02d}", auto_insert_metric_name=False,
                          monitor="val/ex", mode="max", save_top_k=1, save_last=True, record=record)
    stop = EvalEarlyStopping(monitor="val/ex", mode="max", patience=2, record=record)
    trainer = _fit(tmp_path, [ckpt, stop], 8, values, record=record)
    assert trainer.current_epoch == 6  # stopped after epoch 5: two evaluations (3, 5) without gain, not two epochs
    assert ckpt.best_model_path.endswith("epoch01.ckpt") and ckpt.best_model_score == pytest.approx(0.5)
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["epoch"] >= 5  # last.ckpt on every epoch

    record = EpochLog(None, "val/ex")
    off = EvalEarlyStopping(monitor="val/ex", patience=None, record=record)
    assert _fit(tmp_path / "off", [off], 8, values, record=record).current_epoch == 8


def test_exact_resume_draws_the_same_numbers_whatever_came_before():
    cb = ExactResume(seed=7)
    trainer = type("T", (), {"current_epoch": 2, "global_rank": 0})()

    def draw():
        cb.on_train_batch_start(trainer, None, None, 5)
        return torch.rand(3)

    first = draw()
    torch.rand(100)  # e.g. model building or evaluation consumed numbers in another process
    assert torch.equal(draw(), first)
    cb.on_train_batch_start(trainer, None, None, 6)
    assert not torch.equal(torch.rand(3), first)


def test_slurm_preset_requeues_preempted_jobs_which_resume_by_themselves():
    """Submitit requeues a preempted/timed-out job (the launcher is checkpointable); resume=auto picks it up."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    import submitit
    from hydra import compose, initialize_config_dir
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

    from conftest import REPO_ROOT

    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["+launcher=slurm"], return_hydra_config=True)
    assert cfg.resume == "auto" and cfg.hydra.launcher.max_num_timeout > 0
    launcher = SlurmLauncher.__new__(SlurmLauncher)
    resubmission = launcher.checkpoint(["optim.lr=1e-3"], "hydra.sweep.subdir", 0, "job", None)
    assert isinstance(resubmission, submitit.helpers.DelayedSubmission)
    assert resubmission.args[0] == ["optim.lr=1e-3"]  # the same job (same overrides, same job dir) runs again


def test_resume_and_checkpoint_write_errors_are_one_line_user_errors():
    from text2sql.errors import CheckpointWriteError
    from text2sql.job.lifecycle import _user_error

    full = CheckpointWriteError(28, "could not write checkpoint last.ckpt (No space left on device)")
    wrapped = RuntimeError("fit failed")
    wrapped.__cause__ = full
    assert _user_error(wrapped) is full and _user_error(ResumeError("resume='yes'")) is not None
