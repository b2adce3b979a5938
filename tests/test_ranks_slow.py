"""Two ranks on CPU (gloo), through `train.py` as a user launches it: by Lightning (`hardware.devices=2`) and by
torchrun, for DDP, DeepSpeed ZeRO-2 and ZeRO-3, as `-m` sweeps of 2-rank jobs and a single DDP run, and 2-rank
ZeRO-2 / ZeRO-3 resumes under torchrun from the Lightning-launched sweep's checkpoints.

The executing decoding strategies give under 2 ranks the predictions one process gives with the run's adapter:
execution_guided (greedy, then beam candidates) on the single DDP run, self_consistency (sampled candidates) on the
ZeRO-3 resume, whose sharded weights make every rank run each forward pass in lock-step (synced generation);
`bench/decoding.py` runs on the DDP run, smoke-sized. (Greedy under 2 ranks is checked on the sweeps' jobs: DDP and
ZeRO-2 under torchrun, ZeRO-2 and ZeRO-3 Lightning-launched. The decoding asserts ride on runs the launch asserts
need anyway: two 2-rank runs fewer than a run per strategy, ~90 s of CI on 2 cores.)

The sweeps and the DDP run are shared by all asserts (module-scoped fixtures); every launch is smoke-sized.
`rank_probe.RankProbe` (added with `+callbacks.probe`) makes rank 0's model stop at the first generated token in
epoch 0 and rank 1's never, and records what each rank saw.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow

EVAL_N = 7  # odd: the ranks' shards differ in size (4 and 3) and must still run the same generate calls
SMOKE = ["debug=smoke", "dataset.n_train=400", "dataset.n_dev=40", "trainer.limit_train_batches=2",
         "trainer.limit_val_batches=2", "data.val_loss_limit=8", f"eval.limit={EVAL_N}", "eval.batch_size=2",
         "eval.max_new_tokens=16", "hardware.devices=2",
         "+callbacks.probe._target_=rank_probe.RankProbe", "+callbacks.probe.output_dir=${hydra:runtime.output_dir}"]
STEPS_PER_EPOCH = 2  # limit_train_batches per rank, accumulate 1
DECODING = ["eval.decoding.num_beams=2", "eval.decoding.num_samples=3"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def launch(cmd: list[str], cache: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "TEXT2SQL_CACHE": str(cache),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")])}
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train.py", *args]


def run_dirs(proc) -> list[Path]:
    """The run dirs rank 0 printed, one per job: every rank prints nothing (so each appears once)."""
    return [Path(d) for d in re.findall(r"^run dir: (.+)$", proc.stdout, re.M)]


@pytest.fixture(scope="module")
def lightning_sweep(cache, tmp_path_factory):
    """Lightning launches rank 1 (per job) of a `-m` sweep: ZeRO-2 and ZeRO-3."""
    sweep = tmp_path_factory.mktemp("lightning") / "sweep"
    proc = launch([sys.executable, "train.py", "-m", *SMOKE, "hardware=deepspeed_zero2_cpu",
                   "hardware.zero_stage=2,3", "logger=wandb", f"hydra.sweep.dir={sweep}"], cache)
    return sweep, proc


@pytest.fixture(scope="module")
def torchrun_sweep(cache, tmp_path_factory, lightning_sweep):  # (after it: the tiny model is built once)
    """torchrun starts both ranks; each composes its config (the sweep dir holds ${now} down to microseconds)."""
    base = tmp_path_factory.mktemp("torchrun")
    proc = launch(torchrun("-m", *SMOKE, "hardware=cpu,deepspeed_zero2_cpu", "logger=csv",
                           f"hydra.sweep.dir={base}/" + "${now:%H-%M-%S-%f}"), cache)
    return base, proc


def probes(run_dir: Path) -> list[dict]:
    found = [json.loads((run_dir / f"probe_rank{r}.json").read_text()) for r in (0, 1)]
    assert [p["rank"] for p in found] == [0, 1] and all(p["world"] == 2 for p in found)
    return found


@pytest.fixture(scope="module")
def ddp_run(cache, tmp_path_factory) -> Path:
    """DDP (`hardware=cpu hardware.devices=2`, Lightning starts rank 1), a single run as the README types it, with
    the execution_guided strategy (beam candidates)."""
    run = tmp_path_factory.mktemp("ddp_run") / "ddp"
    proc = launch([sys.executable, "train.py", *SMOKE, "hardware=cpu", "eval.decoding.strategy=execution_guided",
                   *DECODING, "logger=csv", f"hydra.run.dir={run}"], cache)
    assert run_dirs(proc) == [run]
    return run


def predictions(run_dir: Path, epoch: int) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "predictions" / f"epoch_{epoch}.jsonl").read_text().splitlines()]


def assert_one_run_per_job(run_dir: Path) -> None:
    """Both ranks used rank 0's dir; rank 0 alone wrote the outputs."""
    assert (run_dir / "train.log").is_file() and (run_dir / "train_rank1.log").is_file()
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "ok" and [r["epoch"] for r in metrics["history"]] == [0, 1]
    assert not list(run_dir.glob("error*.txt"))
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    for epoch in (0, 1):  # every dev example generated once, in dev order
        rows = predictions(run_dir, epoch)
        assert len(rows) == EVAL_N and [r["index"] for r in rows] == sorted({r["index"] for r in rows})
    a, b = probes(run_dir)
    for key in ("val/loss", "train/loss_epoch", "val/execution_accuracy"):  # reduced over ranks: one value
        assert a["metrics"][key] == pytest.approx(b["metrics"][key], rel=1e-6)
    assert a["global_step"] == b["global_step"] == 2 * STEPS_PER_EPOCH


def one_rank_predictions(run_dir: Path, cache: Path, monkeypatch, decoding=None, epoch: int = 1) -> list[str]:
    """The last epoch's (`epoch`'s) dev examples generated again in this one process with the run's exported adapter
    (greedy, or with `decoding`: a text2sql.config.decoding.Decoding, candidates run on the dataset's databases)."""
    from text2sql.data.prompt import encode_source
    from text2sql.eval.generate import generate_sql
    from text2sql.inference.predict import resolve_subtree, compose_config, load_for_inference

    from hydra.utils import instantiate

    monkeypatch.setenv("TEXT2SQL_CACHE", str(cache))
    monkeypatch.chdir(REPO_ROOT)
    cfg = compose_config([], run_dir)
    dataset = instantiate(resolve_subtree(cfg, "dataset"))
    model, tokenizer, _ = load_for_inference(cfg, dataset, ("adapter", run_dir / "adapter"))
    data = resolve_subtree(cfg, "data")
    records = dataset.records("dev")
    sources = [encode_source(records[r["index"]], tokenizer, data.template, data.max_source_length,
                             system_prompt=data.system_prompt)[0] for r in predictions(run_dir, epoch)]
    if decoding is None:
        return generate_sql(model, tokenizer, sources, batch_size=2, max_new_tokens=16)
    from text2sql.eval.candidates import decode_local
    from text2sql.eval.execute import ExecutionEvaluator

    db_ids = [r["db_id"] for r in predictions(run_dir, epoch)]
    with ExecutionEvaluator(dataset.root / "database", workers=1) as evaluator:
        return [p.sql for p in decode_local(model, tokenizer, sources, [evaluator.db_file(d) for d in db_ids], decoding,
                                            evaluator=evaluator, batch_size=2, max_new_tokens=16)]


def test_lightning_launched_sweep_of_2_rank_zero2_and_zero3_jobs(lightning_sweep, cache, monkeypatch):
    sweep, proc = lightning_sweep
    assert run_dirs(proc) == [sweep / "0", sweep / "1"]  # the summary once per job, by rank 0
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "multirun.yaml"]  # no dir of rank 1's own
    for job in ("0", "1"):
        run_dir = sweep / job
        assert_one_run_per_job(run_dir)
        assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1  # W&B from rank 0 only
        # epoch 0: rank 0 (examples 0, 2, 4, 6 of the subset) stopped at once, rank 1 generated on
        rows = predictions(run_dir, 0)
        assert all(r["prediction"] == "" for r in rows[0::2]) and any(r["prediction"] for r in rows[1::2])
        # the same weights on one rank generate the same SQL: 2-rank EX = 1-rank EX
        assert one_rank_predictions(run_dir, cache, monkeypatch) == [r["prediction"] for r in predictions(run_dir, 1)]
    zero2, zero3 = probes(sweep / "0"), probes(sweep / "1")
    assert zero2[0]["forwards"] < zero2[1]["forwards"]  # the probe made the ranks stop at different steps
    assert zero3[0]["forwards"] == zero3[1]["forwards"]  # ZeRO-3: lock-step until every rank is done


def test_torchrun_sweep_of_2_rank_ddp_and_zero2_jobs_shares_one_dir_per_job(torchrun_sweep, cache, monkeypatch):
    base, proc = torchrun_sweep
    (sweep,) = [p for p in base.iterdir()]  # both ranks used rank 0's sweep dir
    assert run_dirs(proc) == [sweep / "0", sweep / "1"]
    for job in ("0", "1"):
        assert_one_run_per_job(sweep / job)
    assert one_rank_predictions(sweep / "0", cache, monkeypatch) == [r["prediction"] for r in predictions(sweep / "0", 1)]


@pytest.mark.parametrize("job, stage, shard_glob, strategy", [
    ("0", 2, "zero_pp_rank_*_mp_rank_00_optim_states.pt", "greedy"),  # ZeRO-2: one model file, the optimizer sharded
    ("1", 3, "zero_pp_rank_*_model_states.pt", "self_consistency"),  # ZeRO-3: parameters sharded too
])
def test_a_2_rank_zero_checkpoint_resumes_on_2_ranks_under_torchrun(lightning_sweep, cache, tmp_path, monkeypatch, job,
                                                                     stage, shard_glob, strategy):
    """... and (ZeRO-3) its resumed epochs decode with self_consistency under 2 ranks as one process does."""
    from text2sql.config.decoding import Decoding

    sweep, _ = lightning_sweep
    import torch

    ckpt = sweep / job / "checkpoints" / "last.ckpt"
    shards = sorted((ckpt / "checkpoint").glob(shard_glob))
    assert len(shards) == 2  # DeepSpeed's checkpoint dir: both ranks' shards
    # (Lightning 2.6 refreshes last.ckpt only on epochs that also save a top-k checkpoint: read its step)
    model_states = sorted((ckpt / "checkpoint").glob("*model_states.pt"))[0]
    saved_step = torch.load(model_states, map_location="cpu", weights_only=False)["global_step"]
    assert saved_step in (STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH)
    proc = launch(torchrun(*SMOKE, "hardware=deepspeed_zero2_cpu", f"hardware.zero_stage={stage}", "logger=csv",
                           "trainer.max_epochs=3", f"ckpt_path={ckpt}",
                           *([] if strategy == "greedy" else [f"eval.decoding.strategy={strategy}", *DECODING]),
                           f"hydra.run.dir={tmp_path}/" + "${now:%H-%M-%S-%f}"), cache)
    (run_dir,) = run_dirs(proc)
    a, b = probes(run_dir)
    assert a["start_step"] == b["start_step"] == saved_step  # both ranks restored the step
    assert a["global_step"] == b["global_step"] == 3 * STEPS_PER_EPOCH
    assert a["metrics"]["val/loss"] == pytest.approx(b["metrics"]["val/loss"], rel=1e-6)
    rows = predictions(run_dir, 2)
    assert len(rows) == EVAL_N
    assert (run_dir / "adapter" / "adapter_config.json").is_file()  # exported once more after the resumed epoch
    if strategy != "greedy":  # sampled candidates under ZeRO-3's synced generation: the one-process predictions
        assert {r["decoding"] for r in rows} == {strategy} and all(r["candidates"] >= 1 for r in rows)
        decoding = Decoding(strategy=strategy, num_beams=2, num_samples=3)
        assert one_rank_predictions(run_dir, cache, monkeypatch, decoding, epoch=2) == [r["prediction"] for r in rows]


def test_lightning_launched_ddp_run_shares_one_dir_and_decodes_as_one_rank(ddp_run, cache, monkeypatch):
    from text2sql.config.decoding import Decoding

    run = ddp_run
    assert_one_run_per_job(run)
    assert sorted(p.name for p in run.parent.iterdir()) == ["ddp"]  # rank 1 made no dir of its own
    rows = predictions(run, 1)
    assert {r["decoding"] for r in rows} == {"execution_guided"} and all(r["candidates"] >= 1 for r in rows)
    decoding = Decoding(strategy="execution_guided", num_beams=2, num_samples=3)
    assert one_rank_predictions(run, cache, monkeypatch, decoding) == [r["prediction"] for r in rows]


def test_bench_decoding_prints_one_table_and_the_gain(ddp_run, cache):
    env = {"TEXT2SQL_CACHE": str(cache), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "bench/decoding.py", "--run", str(ddp_run), "--limit", "3", "--json", ""],
                          cwd=REPO_ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith("gain execution_guided-greedy: ")
    table = {ln.split()[0] for ln in lines[2:-1]}
    assert table == {"greedy", "beam", "sample", "execution_guided", "self_consistency"}


def test_sigterm_to_a_2_rank_run_stops_both_ranks_at_one_step_and_the_resume_finishes(cache, tmp_path):
    """SLURM's preemption of a 2-rank job (SIGTERM to every process of the step): both ranks stop after the same
    optimizer step (a signal may reach the ranks at different steps: they agree through the strategy), rank 0
    checkpoints it and records `preempted`; `ckpt_path=RUN` resumes both ranks to the end."""
    import signal
    import time

    import torch

    run = tmp_path / "ddp"
    # 4 steps an epoch, not SMOKE's 2: the signal goes out when step 5's progress line is read, and the ranks may
    # already be past step 5's check by then (seen on idle cores): they must still stop inside epoch 1.
    steps = 4
    smoke = [a for a in SMOKE if not a.startswith("trainer.limit_train_batches=")]
    cmd = [sys.executable, "train.py", *smoke, f"trainer.limit_train_batches={steps}", "hardware=cpu", "logger=csv",
           "progress.every_s=0.001", f"hydra.run.dir={run}"]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "TEXT2SQL_CACHE": str(cache),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")])}
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if f"epoch 1 of 2 batch 1/{steps}" in line:
            os.killpg(proc.pid, signal.SIGTERM)
            break
    lines += proc.stdout.readlines()
    output = "".join(lines)
    assert proc.wait(timeout=300) == 143, output[-3000:]
    record = json.loads((run / "metrics.json").read_text())
    assert record["status"] == "preempted" and steps < record["step"] < 2 * steps, output[-3000:]
    assert f"preempted at step {record['step']}; resume from a checkpoint at this step: " in output
    assert "Traceback" not in output, output[-3000:]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == record["step"]
    deadline = time.time() + 30
    while subprocess.run(["pgrep", "-f", str(run)], capture_output=True).returncode == 0 and time.time() < deadline:
        time.sleep(0.2)  # rank 1 is gone too (no orphan holding the port)
    assert time.time() < deadline

    launch([sys.executable, "train.py", f"ckpt_path={run}"], cache)
    done = json.loads((run / "metrics.json").read_text())
    assert done["status"] == "ok" and [r["epoch"] for r in done["history"]] == [0, 1]
    assert len(predictions(run, 1)) == EVAL_N
