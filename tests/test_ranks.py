"""Several ranks, the fast part: the length-grouped sampler under every strategy, lock-step generation shards.

The 2-process runs (DDP, DeepSpeed ZeRO-2/3, launched by Lightning and by torchrun) are in test_ranks_slow.py.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DistributedSampler

from text2sql.data.datamodule import LengthGroupedSampler, TextToSQLDataModule
from text2sql.eval.callback import lockstep_shard

LENGTHS = [(i * 37) % 50 + 1 for i in range(203)]


def shard(world: int, rank: int, drop_last: bool = False, epoch: int = 0) -> LengthGroupedSampler:
    s = LengthGroupedSampler(LENGTHS, 8, seed=1, sampler=DistributedSampler(range(len(LENGTHS)), world, rank),
                             drop_last=drop_last)
    s.set_epoch(epoch)
    return s


@pytest.mark.parametrize("world", [2, 3])
def test_each_rank_gets_its_share_of_the_same_length_grouped_batches(world):
    one = shard(1, 0, epoch=2)
    everything = list(one)
    parts = [list(shard(world, r, epoch=2)) for r in range(world)]
    assert len({len(p) for p in parts}) == 1 and all(len(p) == len(shard(world, r)) for r, p in enumerate(parts))
    # rank r takes global batches r, r + world, ...: together the ranks see exactly the 1-rank batches
    interleaved = [b for step in zip(*parts) for b in step]
    assert interleaved[: len(everything)] == everything
    assert interleaved[len(everything):] == everything[: len(interleaved) - len(everything)]  # the wrap-around pad
    dropped = [list(shard(world, r, drop_last=True, epoch=2)) for r in range(world)]
    seen = [i for p in dropped for b in p for i in b]
    assert len(seen) == len(set(seen))  # drop_last: disjoint shards
    assert [b for step in zip(*dropped) for b in step] == everything[: len(everything) // world * world]


def test_the_order_is_a_function_of_seed_and_epoch_only():
    a, b = shard(2, 1, epoch=0), shard(2, 1, epoch=0)
    list(a)
    a.set_epoch(5)
    b.set_epoch(5)
    assert list(a) == list(b) and a.epoch == 5
    b.set_epoch(6)
    assert list(b) != list(a)


class _Recorder(pl.LightningModule):
    """Records the example ids of every training batch (each example's tokens are its id + 1)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: dict[int, list[list[int]]] = {}

    def training_step(self, batch, batch_idx):
        ids = batch["input_ids"][:, 0] - 1
        self.seen.setdefault(self.current_epoch, []).append(ids.tolist())
        return ((self.w - 1) ** 2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.fixture
def clean_dist_env():
    """A 1-process DDP run sets MASTER_PORT, LOCAL_RANK, ... and a process group: undo both for later tests."""
    saved = dict(os.environ)
    yield
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.parametrize("use_distributed_sampler", [True, False])
def test_length_grouped_batches_train_under_a_distributed_strategy(clean_dist_env, tmp_path, use_distributed_sampler):
    """Issue 13 item 2: under DDP/DeepSpeed (even on one device) Lightning injects a DistributedSampler into the
    train loader; the length-grouped batch sampler used to refuse it ("can't inject a (distributed) sampler"), and
    it never saw `set_epoch` either (every epoch had the same order)."""
    items = [{"input_ids": [i + 1] * n, "labels": [i + 1] * n} for i, n in enumerate(LENGTHS[:40])]
    dm = TextToSQLDataModule(None, SimpleNamespace(pad_token_id=0), batch_size=4, seed=1)
    dm.train_items, dm.val_items = items, items[:4]
    module = _Recorder()
    trainer = pl.Trainer(accelerator="cpu", devices=1, strategy="ddp", max_epochs=2, limit_val_batches=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path,
                         use_distributed_sampler=use_distributed_sampler)
    trainer.fit(module, datamodule=dm)
    reference = LengthGroupedSampler([len(it["input_ids"]) for it in items], 4, seed=1)
    for epoch in (0, 1):
        reference.set_epoch(epoch)
        assert module.seen[epoch] == list(reference)  # the length-grouped order of that epoch, not a plain shuffle
    assert module.seen[0] != module.seen[1]


@pytest.mark.parametrize("n,world", [(7, 2), (8, 2), (1, 2), (5, 3), (0, 2)])
def test_lockstep_shards_cover_every_example_once_with_equal_sizes(n, world):
    items = list(range(n))
    shards = [lockstep_shard(items, r, world) for r in range(world)]
    assert len({len(s) for s, _ in shards}) == 1  # the same number of prompts, hence generate calls, per rank
    real = sorted(x for s, k in shards for x in s[:k])
    assert real == items  # every example exactly once; the rest are padding copies
    assert all(len(s) >= 1 for s, _ in shards) or n == 0


def test_a_rank_lightning_starts_runs_exactly_rank_0s_job_in_its_dir(monkeypatch):
    """Lightning re-runs the whole argv for ranks > 0: under `-m` that child would run the whole sweep elsewhere."""
    import json

    from text2sql.job.ranks import JOB_ENV, rank_argv

    argv = ["train.py", "-m", "--config-name", "train", "peft.r=4,8", "hydra.run.dir=x", "hydra.job.name=train_ddp_process_1"]
    monkeypatch.setenv(JOB_ENV, json.dumps({"dir": "/runs/sweep/1", "overrides": ["peft.r=8", "debug=smoke"]}))
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert rank_argv(argv) == ["train.py", "--config-name", "train", "peft.r=8", "debug=smoke",
                               'hydra.run.dir="/runs/sweep/1"', "hydra.output_subdir=null", "hydra.job.name=train_rank1"]
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert rank_argv(argv) == argv  # rank 0 runs what the user typed


@pytest.mark.parametrize("multirun", [False, True])
def test_under_torchrun_ranks_above_0_wait_for_rank_0s_run_dir(monkeypatch, multirun):
    from datetime import timedelta

    from torch.distributed import TCPStore

    from text2sql.job.ranks import _store_key, rank_argv

    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=5))
    for key, value in {"TORCHELASTIC_RUN_ID": "t", "TORCHELASTIC_USE_AGENT_STORE": "True", "WORLD_SIZE": "2",
                       "RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(store.port)}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("TEXT2SQL_RANK_JOB", raising=False)
    kind = "sweep" if multirun else "run"
    store.set(_store_key(kind), "/abs/outputs/2026-11-25/23-00-00")  # what rank 0 composed
    argv = ["train.py", *(["-m"] if multirun else []), "peft.r=8", f"hydra.{kind}.dir=out/${{now:%H-%M-%S}}"]
    assert rank_argv(argv) == ["train.py", *(["-m"] if multirun else []), "peft.r=8", "hydra.output_subdir=null",
                               "hydra.job.name=train_rank1", f'hydra.{kind}.dir="/abs/outputs/2026-11-25/23-00-00"']
    monkeypatch.setenv("RANK", "0")
    assert rank_argv(argv) == argv


def test_a_failed_job_stops_its_launched_ranks_without_lightnings_observer_killing_the_sweep(monkeypatch, tmp_path):
    """A job fails on rank 0 in a Lightning-launched `-m` sweep: `one_job` kills that job's other ranks (they would
    wait in a collective), and Lightning's child-process observer, which SIGKILLs its main process when a child
    exits non-zero, must not take the sweep down with them (what hung the 2-rank sweep test after a W&B error)."""
    import subprocess
    import sys
    import time

    from hydra.core.hydra_config import HydraConfig
    from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver

    from text2sql.job import ranks

    sweep = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # stands in for rank 0
    children = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]) for _ in range(2)]
    try:
        procs = list(children)
        _ChildProcessObserver(main_pid=sweep.pid, child_processes=procs, sleep_period=0.05).start()
        trainer = SimpleNamespace(strategy=SimpleNamespace(launcher=SimpleNamespace(procs=procs)))
        hc = SimpleNamespace(runtime=SimpleNamespace(output_dir=str(tmp_path)), overrides=SimpleNamespace(task=[]))
        monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: hc))
        monkeypatch.setattr(ranks, "_publish_run_dir", lambda hc: None)
        monkeypatch.setenv(ranks.JOB_ENV, "{}")  # one_job sets it for the job's ranks: undone after this test
        with pytest.raises(RuntimeError, match="job failed"):
            with ranks.one_job(trainer):
                raise RuntimeError("job failed")
        assert all(c.returncode is not None and c.returncode < 0 for c in children)  # killed, waited for
        time.sleep(0.5)  # ten observer polls
        assert sweep.poll() is None  # the sweep process lives on to run the next job
    finally:
        for p in [sweep, *children]:
            p.kill()
            p.wait()
