"""PEFT checkpoints hold only the adapter (+ optimizer/scheduler state), resume exactly, and export HF dirs."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM

from text2sql.data.datamodule import TextToSQLDataModule, _Encoded
from text2sql.training.checkpoint import AtomicCheckpointIO, ExportPretrained
from text2sql.training.module import Text2SQLModule
from text2sql.model.peft import apply_peft
from tiny import tiny_model

# cosine with warmup: the LR differs at every step, so a scheduler restored wrongly shows up in the LR and the loss
OPTIM = OmegaConf.create({"lr": 5e-3, "weight_decay": 0.01, "betas": [0.9, 0.999], "scheduler": "cosine",
                          "warmup_ratio": 0.0, "warmup_steps": 2})
LORA = OmegaConf.create({"method": "lora", "r": 8, "alpha": 16, "dropout": 0.0,
                         "target_modules": ["q_proj", "v_proj"], "modules_to_save": None})
FULL = OmegaConf.create({"method": "full"})
STEPS_PER_EPOCH = 4


class FixedOrder(TextToSQLDataModule):
    """Same batches in every epoch and every process: isolates what the checkpoint restores from data order.

    (A shuffling sampler resumes exactly only if its order is a function of (seed, epoch), e.g. via `set_epoch`.)
    """

    def train_dataloader(self):
        return DataLoader(_Encoded(self.train_items), batch_size=self.batch_size, shuffle=False,
                          collate_fn=self._collate)


class Record(pl.Callback):
    def __init__(self):
        self.rows = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        self.rows.append((trainer.global_step, float(outputs["loss"]), lr))


class StopAfter(pl.Callback):
    """Simulates the interruption: the process ends after `epochs` epochs (a checkpoint was just written)."""

    def __init__(self, epochs):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


@pytest.fixture(scope="module")
def setup(tiny_default):
    return tiny_default


def build(setup, peft=LORA):
    dataset, model_cfg, path, tokenizer = setup
    torch.manual_seed(0)
    model = apply_peft(tiny_model(model_cfg, path, tokenizer), peft)
    dm = FixedOrder(dataset, tokenizer, template="vanilla", max_source_length=256, max_target_length=256,
                    batch_size=8, eval_batch_size=8, train_limit=8 * STEPS_PER_EPOCH, val_loss_limit=8)
    return Text2SQLModule(model, OPTIM), dm


def fit(setup, root, epochs=3, callbacks=(), ckpt_path=None, peft=LORA):
    module, dm = build(setup, peft)
    record = Record()
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=1,
                         default_root_dir=root, callbacks=[record, *callbacks], enable_checkpointing=True)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return trainer, module, record.rows


def last_checkpoint(dirpath):
    return ModelCheckpoint(dirpath=dirpath, save_last=True, save_top_k=0)


@pytest.fixture(scope="module")
def runs(setup, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    export = ExportPretrained(str(root / "uninterrupted"))
    _, module, full_rows = fit(setup, root / "a", callbacks=[export])
    fit(setup, root / "b", callbacks=[StopAfter(1), last_checkpoint(root / "b" / "ckpt")])
    trainer_c, _, resumed_rows = fit(setup, root / "c", ckpt_path=str(root / "b" / "ckpt" / "last.ckpt"))
    return {"root": root, "module": module, "full": full_rows, "resumed": resumed_rows, "trainer_c": trainer_c,
            "ckpt": root / "b" / "ckpt" / "last.ckpt", "export": export}


def test_resume_reproduces_the_uninterrupted_run(runs):
    full, resumed = runs["full"], runs["resumed"]
    assert len(full) == 3 * STEPS_PER_EPOCH
    assert len(resumed) == 2 * STEPS_PER_EPOCH  # picks up after epoch 1, not from scratch
    for (step_a, loss_a, lr_a), (step_b, loss_b, lr_b) in zip(full[STEPS_PER_EPOCH:], resumed):
        assert step_a == step_b
        assert lr_a == pytest.approx(lr_b, rel=1e-12, abs=0)
        assert loss_a == pytest.approx(loss_b, rel=1e-5, abs=1e-6)
    assert runs["trainer_c"].global_step == 3 * STEPS_PER_EPOCH
    assert len({round(r[2], 12) for r in full}) > 3  # the schedule really moves


def test_peft_checkpoint_holds_only_the_adapter(runs):
    ckpt = torch.load(runs["ckpt"], map_location="cpu", weights_only=False)
    keys = set(ckpt["state_dict"])
    assert ckpt.get("trainable_only") is True
    assert keys and all("lora_" in k for k in keys)
    assert keys == runs["module"].trainable_keys()
    assert ckpt["optimizer_states"] and ckpt["lr_schedulers"]  # everything resume needs is there


def test_checkpoint_missing_adapter_weights_is_refused(runs, setup):
    ckpt = torch.load(runs["ckpt"], map_location="cpu", weights_only=False)
    module, _ = build(setup)
    ckpt["state_dict"].pop(next(iter(ckpt["state_dict"])))
    with pytest.raises(ValueError, match="trainable weights"):
        module.on_load_checkpoint(ckpt)


def test_adapter_checkpoint_is_a_small_fraction_of_a_full_one(runs, setup, tmp_path):
    fit(setup, tmp_path, epochs=1, peft=FULL, callbacks=[last_checkpoint(tmp_path / "ckpt")])
    full_size = (tmp_path / "ckpt" / "last.ckpt").stat().st_size
    adapter_size = runs["ckpt"].stat().st_size
    print(f"tiny model checkpoint: LoRA {adapter_size:,} bytes vs full fine-tuning {full_size:,} bytes "
          f"({adapter_size / full_size:.1%})")
    assert adapter_size < 0.1 * full_size
    full = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    assert "trainable_only" not in full and any("embed_tokens" in k for k in full["state_dict"])


def test_adapter_export_loads_with_peft_and_gives_the_same_logits(runs, setup):
    from peft import PeftModel

    _, model_cfg, path, tokenizer = setup
    out = runs["root"] / "uninterrupted" / "adapter"
    assert runs["export"].saved_to == out
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert (out / "tokenizer_config.json").is_file()
    loaded = PeftModel.from_pretrained(tiny_model(model_cfg, path, tokenizer), out).eval()
    trained = runs["module"].model.eval()
    ids = torch.tensor([tokenizer("SELECT count(*) FROM singer")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, trained(input_ids=ids).logits)


def test_full_finetune_exports_a_whole_model(setup, tmp_path):
    export = ExportPretrained(str(tmp_path))
    _, module, _ = fit(setup, tmp_path, epochs=1, peft=FULL, callbacks=[export])
    assert export.saved_to == tmp_path / "model"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, module.model.eval()(input_ids=ids).logits)


# -- atomic checkpoint writes: a full disk or a kill during a save leaves the previous last.ckpt loadable ------------
# (Lightning 2.6's own writer is a transaction too, but through a temp file in the system temp dir: a move across
# filesystems is a copy, so a kill during it truncates the target, and a small /tmp fills up first.)
# Each drill runs in a forked child, so the file size limit and the kill stay there.


_FULL_DISK = """
import resource, signal, sys, torch
from text2sql.training.checkpoint import AtomicCheckpointIO
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit: EFBIG, as ENOSPC on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
try:
    AtomicCheckpointIO().save_checkpoint({"step": 2, "w": torch.ones(100_000)}, sys.argv[1])  # 400 kB: does not fit
    print("saved")
except OSError as err:
    print(f"{type(err).__name__}: {err}")
"""

_KILLED = """
import os, signal, sys, torch
from text2sql.training.checkpoint import AtomicCheckpointIO
def dying_save(obj, f, *args, **kwargs):  # SIGKILL half way through the write
    f.write(b"\\x80\\x02 half a checkpoint")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = dying_save
AtomicCheckpointIO().save_checkpoint({"step": 2, "w": torch.ones(10)}, sys.argv[1])
"""


def _in_child(code, path):
    """A fresh interpreter (not a fork of this threaded one, which can deadlock), bounded in time."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300)
    lines = proc.stdout.strip().splitlines()
    return proc.returncode, (lines[-1] if lines else proc.stderr[-500:])


def test_full_disk_during_a_save_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1, "w": torch.zeros(10)}, path)
    code, message = _in_child(_FULL_DISK, path)
    assert code == 0 and message.startswith("CheckpointWriteError") and "previous checkpoint is kept" in message
    assert torch.load(path, weights_only=False)["step"] == 1
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_kill_during_a_save_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1, "w": torch.zeros(10)}, path)
    code, _ = _in_child(_KILLED, path)
    assert code == -9
    assert torch.load(path, weights_only=False)["step"] == 1
    assert (tmp_path / ".last.ckpt.tmp").exists()  # the half-written file is beside it (same filesystem: rename)
    AtomicCheckpointIO().save_checkpoint({"step": 3}, path)  # the next save replaces both
    assert torch.load(path, weights_only=False)["step"] == 3 and sorted(tmp_path.iterdir()) == [path]


# -- exact resume with shuffled, length-grouped batches and dropout, from an epoch end and from mid-epoch ----------


class StopAtStep(pl.Callback):
    """Simulates the kill: the process ends right after optimizer step `step` (its checkpoint was just written)."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def fit_shuffled(setup, root, ckpt_path=None, callbacks=()):
    from text2sql.training.checkpoint import ExactResume

    dataset, model_cfg, path, tokenizer = setup
    torch.manual_seed(0)
    model = apply_peft(tiny_model(model_cfg, path, tokenizer), OmegaConf.merge(LORA, {"dropout": 0.2}))
    dm = TextToSQLDataModule(dataset, tokenizer, template="vanilla", max_source_length=256, max_target_length=256,
                             batch_size=8, eval_batch_size=8, train_limit=8 * STEPS_PER_EPOCH, val_loss_limit=8,
                             group_by_length=True, seed=3)
    torch.rand(int(ckpt_path is not None) * 7)  # a resumed process has drawn other random numbers before
    record = Record()
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=1, default_root_dir=root,
                         callbacks=[record, ExactResume(seed=5), *callbacks])
    trainer.fit(Text2SQLModule(model, OPTIM), datamodule=dm, ckpt_path=ckpt_path)
    return record.rows


@pytest.mark.slow
@pytest.mark.parametrize("stop_step", [STEPS_PER_EPOCH, STEPS_PER_EPOCH + 2])  # an epoch end, mid-epoch 1
def test_resume_with_shuffling_and_dropout_equals_the_uninterrupted_run(setup, tmp_path, stop_step):
    full = fit_shuffled(setup, tmp_path / "a")
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0, every_n_train_steps=1)
    fit_shuffled(setup, tmp_path / "b", callbacks=[StopAtStep(stop_step), ckpt])
    resumed = fit_shuffled(setup, tmp_path / "c", ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert len(full) == 3 * STEPS_PER_EPOCH and [r[0] for r in resumed] == [r[0] for r in full[stop_step:]]
    assert resumed == full[stop_step:]  # the same steps, losses and learning rates, to the last bit
