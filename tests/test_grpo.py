"""GRPO (issue 28): the loss equals TRL's, rewards from the evaluator's guard, seeded rollouts, the train.py stage."""

from __future__ import annotations

import types
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from text2sql.objective.loss import LOSS_TYPES, group_advantages, grpo_loss, no_signal_share


def _batch(seed: int = 0, rows: int = 8, width: int = 6):
    g = torch.Generator().manual_seed(seed)
    logps = (-torch.rand(rows, width, generator=g) * 3).requires_grad_(True)
    old = logps.detach() + 0.3 * torch.randn(rows, width, generator=g)  # ratios far enough from 1 to clip
    ref = logps.detach() + 0.2 * torch.randn(rows, width, generator=g)
    mask = torch.ones(rows, width)
    mask[1, 4:] = 0
    mask[5, 2:] = 0
    rewards = torch.tensor([1.0, 0.1, 0.0, 0.1, 1.0, 1.0, 1.0, 1.0])[:rows]
    return logps, old, ref, mask, rewards


def _trl_loss(loss_type: str, logps, old, ref, mask, advantages, beta: float, eps: float, eps_high: float,
              max_len: int):
    """TRL 1.16's own `GRPOTrainer._compute_loss` on these tensors: an instance without __init__ whose model forward
    (`_get_per_token_logps_and_entropies`) returns `logps`, on one process without gradient accumulation."""
    trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer", reason="trl (test extra) is not installed")
    trainer = object.__new__(trl_grpo.GRPOTrainer)
    ident = lambda t, *a, **k: t  # noqa: E731  (one process: gathers and reductions are the identity)
    attrs = dict(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token", beta=beta,
        loss_type=loss_type, epsilon_low=eps, epsilon_high=eps_high, use_vllm=False,
        model=types.SimpleNamespace(training=True), current_gradient_accumulation_steps=1,
        max_completion_length=max_len, _entropy_bonus_enabled=False, aux_loss_enabled=False,
        _metrics=defaultdict(lambda: defaultdict(list)),
        accelerator=types.SimpleNamespace(num_processes=1, reduce=ident, gather=ident, gather_for_metrics=ident),
        args=types.SimpleNamespace(use_bias_correction_kl=True, delta=None, steps_per_generation=1),
    )
    for k, v in attrs.items():
        object.__setattr__(trainer, k, v)
    rows, width = logps.shape
    inputs = {"prompt_ids": torch.zeros(rows, 2, dtype=torch.long), "prompt_mask": torch.ones(rows, 2),
              "completion_ids": torch.zeros(rows, width, dtype=torch.long), "completion_mask": mask,
              "advantages": advantages, "old_per_token_logps": old, "ref_per_token_logps": ref,
              "num_items_in_batch": mask.sum()}
    return trl_grpo.GRPOTrainer._compute_loss(trainer, None, inputs), trainer._metrics["train"]


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_loss_equals_trl(loss_type, beta):
    logps, old, ref, mask, rewards = _batch()
    adv = group_advantages(rewards, 4, "none" if loss_type == "dr_grpo" else "group")
    ours = grpo_loss(logps, old, adv, mask, loss_type=loss_type, epsilon=0.2, epsilon_high=0.28, beta=beta,
                     ref_logps=ref, max_completion_length=10)
    (g_ours,) = torch.autograd.grad(ours.loss, logps)
    theirs, metrics = _trl_loss(loss_type, logps, old, ref, mask, adv, beta, 0.2, 0.28, 10)
    (g_theirs,) = torch.autograd.grad(theirs, logps)
    assert ours.loss.item() == pytest.approx(theirs.item(), rel=1e-6, abs=1e-7)
    assert torch.allclose(g_ours, g_theirs, rtol=1e-5, atol=1e-7)  # the same update, not only the same number
    assert ours.clip_fraction == pytest.approx(metrics["clip_ratio/region_mean"][0], abs=1e-6)
    assert 0 < ours.clip_fraction < 1  # the batch really clips
    if beta:
        assert ours.kl == pytest.approx(metrics["kl"][0], rel=1e-5)


def test_first_iteration_ratio_is_one():
    """num_iterations == 1: the old policy is this one, the ratio 1, the gradient -A * grad(logp) per token."""
    logps, _, _, mask, rewards = _batch()
    adv = group_advantages(rewards, 4)
    out = grpo_loss(logps, None, adv, mask, loss_type="bnpo")
    (grad,) = torch.autograd.grad(out.loss, logps)
    assert torch.allclose(grad, -adv[:, None] * mask / mask.sum())
    assert out.clip_fraction == 0


def test_advantages_as_trl_writes_them():
    """TRL 1.16 grpo_trainer.py `_generate_and_score_completions` (sum_then_normalize, one reward function):
    A = r - mean_group(r), divided by (std_group(r) + 1e-4) unless scale_rewards == "none"."""
    rewards = torch.tensor([1.0, 0.1, 0.0, 0.1, 1.0, 1.0, 1.0, 1.0])
    grouped = rewards.view(-1, 4)
    mean = grouped.mean(1).repeat_interleave(4)
    std = grouped.std(1).repeat_interleave(4)
    assert torch.allclose(group_advantages(rewards, 4, "group"), (rewards - mean) / (std + 1e-4))
    assert torch.allclose(group_advantages(rewards, 4, "none"), rewards - mean)
    assert torch.allclose(group_advantages(rewards, 4, "batch"), (rewards - mean) / (rewards.std() + 1e-4))
    assert torch.all(group_advantages(rewards, 4)[4:] == 0)  # a group that agrees teaches nothing
    assert no_signal_share(rewards, 4) == 0.5


def test_bad_loss_type_is_one_line():
    logps, old, _, mask, rewards = _batch()
    with pytest.raises(ValueError, match="loss_type must be one of"):
        grpo_loss(logps, old, rewards, mask, loss_type="ppo")


# -- reward: real SQL on the generated sample's databases ------------------------------------------------------------
def _db_bytes(db_dir):
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(db_dir.rglob("*.sqlite"))}


def test_reward_values_on_real_sql(tiny_default):
    from text2sql.eval.execute import ExecutionEvaluator
    from text2sql.objective.reward import ExecutionReward, Sample, execute_samples

    dataset = tiny_default[0]
    record = dataset.records("train")[0]
    db_dir = dataset.db_dir("train")
    before = _db_bytes(db_dir)
    table = record["output"].split(" FROM ", 1)[1].split()[0] if " FROM " in record["output"] else "sqlite_master"
    sqls = {"gold": record["output"], "runs_wrong": "SELECT 12345, 'not the answer'", "syntax": "SELEC nothing",
            "write": f"DROP TABLE {table}", "empty": "", "missing_column": "SELECT no_such_column FROM sqlite_master"}
    samples = [Sample(record["db_id"], record["output"], sql, sql) for sql in sqls.values()]
    with ExecutionEvaluator(db_dir, timeout=5, workers=0, style=dataset.eval_style) as ev:
        verdicts = execute_samples(ev, samples)
        rewards = ExecutionReward(executes=0.1)(samples, verdicts)
        assert ev.gold_cache_size() == 1  # one gold result, run once for six samples
    assert dict(zip(sqls, rewards)) == {"gold": 1.0, "runs_wrong": 0.1, "syntax": 0.0, "write": 0.0, "empty": 0.0,
                                        "missing_column": 0.0}
    assert verdicts[3].status == "write_refused"
    assert ExecutionReward(executes=0.25)(samples, verdicts)[1] == 0.25
    assert _db_bytes(db_dir) == before


# -- rollouts: the same samples under any batching ---------------------------------------------------------------------
def test_rollouts_do_not_depend_on_batching(tiny_default):
    from text2sql.data.prompt import encode_source
    from text2sql.objective.rollout import sample_groups
    from tiny import tiny_model

    dataset, model_cfg, path, tokenizer = tiny_default
    model = tiny_model(model_cfg, path, tokenizer)
    sources = [encode_source(r, tokenizer, "vanilla", 512)[0] for r in dataset.records("train")[:5]]
    kw = dict(temperature=1.0, top_p=1.0, seed=3, max_new_tokens=12)
    whole = sample_groups(model, tokenizer, sources, 4, batch_size=64, **kw)
    small = sample_groups(model, tokenizer, sources, 4, batch_size=4, **kw)  # one prompt a call
    alone = sample_groups(model, tokenizer, sources[2:3], 4, batch_size=64, **kw)
    assert whole.completions == small.completions
    assert alone.completions == whole.completions[8:12]
    assert len(set(map(tuple, whole.completions[:4]))) > 1  # a group's samples differ
    other = sample_groups(model, tokenizer, sources, 4, batch_size=64, **{**kw, "seed": 4})
    assert other.completions != whole.completions
    assert all(0 < len(c) <= 12 for c in whole.completions)
    model.train()
    sample_groups(model, tokenizer, sources[:1], 2, batch_size=4, **kw)
    assert model.training  # generation ran in eval mode and handed the model back training


# -- bad settings: one line each, before anything heavy loads ----------------------------------------------------------
def _compose(*overrides):
    from hydra import compose, initialize_config_dir

    from conftest import REPO_ROOT

    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


@pytest.mark.parametrize("overrides, message", [
    (["objective.num_generations=1"], "objective.num_generations=1 must be >= 2"),
    (["peft=ptuning"], "cannot (their prefixes"),
    (["objective.num_iterations=0"], "objective.num_iterations=0 must be >= 1"),
])
def test_bad_grpo_settings_are_one_line(overrides, message):
    from text2sql.errors import UserError
    from text2sql.objective.init_from import prepare_objective

    args = ["objective=grpo", *overrides]
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        prepare_objective(_compose(*args), args)


def test_init_from_must_be_a_run_and_fit_the_model(smoke_run, tmp_path):
    from text2sql.errors import UserError
    from text2sql.objective.init_from import prepare_objective

    args = ["objective=grpo", f"init_from={tmp_path}"]
    with pytest.raises(UserError, match="is not a training run dir"):
        prepare_objective(_compose(*args), args)
    args = ["objective=grpo", f"init_from={smoke_run[0]}", "model=tiny_qwen"]
    with pytest.raises(UserError, match="trained model tiny-llama, but model=.* was asked"):
        prepare_objective(_compose(*args), args)
    args = ["objective=grpo", f"init_from={smoke_run[0]}", "peft.dropout=0.1"]
    cfg = _compose(*args)
    start = prepare_objective(cfg, args)
    assert start.parent.name == "checkpoints" and start.name.startswith("epoch")  # the best epoch's, not last
    assert cfg.peft.r == 4 and cfg.peft.dropout == 0.1  # the run's adapter size; the key given now wins
    assert cfg.dataset.max_source_length == 512  # the run's (debug=smoke) dataset settings, not the preset's


# -- train.py objective=grpo init_from=<smoke run>: end to end, SIGKILL + resume, databases untouched ----------------
GRPO = ["objective=grpo", "debug=smoke", "logger=csv", "seed=5", "data.batch_size=2", "objective.num_generations=4",
        "objective.num_iterations=2", "objective.beta=0.04", "trainer.limit_train_batches=2", "trainer.max_epochs=2",
        "trainer.log_every_n_steps=1", "eval.limit=8", "eval.max_new_tokens=24",
        "objective.reward._target_=grpo_rewards.DistinctWords"]


def _grpo_env(tmp_path):
    import os

    from conftest import REPO_ROOT

    return {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")])}


def _per_step(run_dir) -> dict[int, tuple[float, float]]:
    """{global step: (train/loss, grpo/reward_mean)} over every CSV log of the run (a resume adds a version)."""
    import csv

    out = {}
    for path in sorted((run_dir / "csv").glob("version_*/metrics.csv")):
        for row in csv.DictReader(path.open()):
            if row.get("train/loss"):
                out[int(row["step"])] = (float(row["train/loss"]), float(row["grpo/reward_mean"]))
    return out


@pytest.mark.slow
def test_grpo_end_to_end_and_sigkill_resume(smoke_run, tmp_path):
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO_ROOT
    from text2sql.job.run_dir import RunDir

    sft = smoke_run[0]
    db_dir = Path(RunDir(sft).resolved_paths()["dataset.root"]) / "database"
    before = _db_bytes(db_dir)
    env = _grpo_env(tmp_path)
    cmd = [sys.executable, str(REPO_ROOT / "train.py"), *GRPO, f"init_from={sft}"]
    whole = tmp_path / "whole"
    proc = subprocess.run([*cmd, f"hydra.run.dir={whole}"], cwd=smoke_run[1], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((whole / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["history"]] == [0, 1] and metrics["status"] == "ok"
    assert "val/execution_accuracy" in metrics["final"] and (whole / "adapter").is_dir()
    steps = _per_step(whole)
    assert sorted(steps) == [0, 1, 2, 3]  # one logged row per batch of rollouts (each made 2 optimizer steps)
    assert any(loss != 0 for loss, _ in steps.values())  # real gradients, not a batch of ties
    assert "init_from:" in proc.stdout + proc.stderr
    saved = (whole / ".hydra" / "config.yaml").read_text()
    assert "r: 4" in saved  # predict / merge read the adapter size this run really trained
    assert _db_bytes(db_dir) == before  # rollouts ran read-only

    killed = tmp_path / "killed"
    run = subprocess.Popen([*cmd, f"hydra.run.dir={killed}"], cwd=smoke_run[1], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while not (killed / "checkpoints" / "last.ckpt").exists() and run.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(run.pid, signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL and not (killed / "adapter").exists()
    resumed = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), f"ckpt_path={killed}"], cwd=smoke_run[1],
                             env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = _per_step(killed)
    assert set(after) >= {2, 3}  # epoch 1's steps, trained by the resumed process
    for step, values in after.items():
        assert values == steps[step], f"step {step}"
    assert json.loads((killed / "metrics.json").read_text())["history"][-1]["val/execution_accuracy"] == \
        metrics["history"][-1]["val/execution_accuracy"]
    assert _db_bytes(db_dir) == before


def test_grpo_preset_dry_run_counts_the_rollout_batch(tmp_path):
    from text2sql.model.sizing import dry_run

    preset = ["experiment=grpo_qwen25_coder_7b_bird"]
    record = dry_run(_compose(*preset), tmp_path / "preset")["memory"]
    grpo = record["assumptions"]["grpo"]
    assert grpo["rollout_rows"] == 16 * 16 and grpo["rows_per_generate"] == 64 and grpo["update_rows"] == 2
    assert record["assumptions"]["sequence_length"] == 2048 + 256
    assert record["fits_gib"]["80"] and not record["fits_gib"]["40"]
    huge = dry_run(_compose(*preset, "objective.rollout_batch_size=1024"), tmp_path / "huge")["memory"]
    kv = 256 * 2304 * 28 * 2 * 4 * 128 * 2 / 2**30  # rows x tokens x layers x (k, v) x kv heads x head dim x bf16
    assert huge["terms_gib"]["rollout_kv_cache"] == pytest.approx(kv - huge["terms_gib"]["activations_estimate"],
                                                                  abs=0.01)  # the peak is the larger of the two
    assert huge["per_device_gib"] == pytest.approx(record["per_device_gib"] - record["terms_gib"]["activations_estimate"]
                                                   + kv, abs=0.05)
    wider = dry_run(_compose(*preset, "objective.micro_batch_rows=4"), tmp_path / "wider")["memory"]
    assert wider["terms_gib"]["activations_estimate"] == pytest.approx(2 * record["terms_gib"]["activations_estimate"],
                                                                      rel=0.01)


@pytest.mark.slow
def test_grpo_on_two_ranks_gloo(smoke_run, tmp_path):
    """`hardware=cpu hardware.devices=2` (Lightning starts rank 1, DDP over gloo): each rank samples and scores its
    own prompts, gradients are averaged; one run dir, both ranks' steps logged by rank 0, an adapter at the end."""
    import json
    import subprocess
    import sys

    from conftest import REPO_ROOT

    run = tmp_path / "ranks"
    args = [a for a in GRPO if not a.startswith(("objective.num_iterations", "objective.beta", "trainer.max_epochs"))]
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), *args, f"init_from={smoke_run[0]}",
                           "hardware=cpu", "hardware.devices=2", "trainer.max_epochs=1", f"hydra.run.dir={run}"],
                          cwd=smoke_run[1], env=_grpo_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GLOBAL_RANK: 1" in proc.stdout + proc.stderr or "MEMBER: 2/2" in proc.stdout + proc.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "ok" and [r["epoch"] for r in metrics["history"]] == [0]
    assert sorted(_per_step(run)) == [0, 1] and (run / "adapter").is_dir()


@pytest.mark.parametrize("group", ["dataset=sparc", "dataset=bird", "peft=qlora4", "peft=dora", "model=tiny_qwen",
                                   "hardware=deepspeed_zero2", "hardware=deepspeed_zero3"])
def test_grpo_composes_with_every_group(group):
    """objective=grpo beside another group's option: the config composes, checks, and keeps GRPO's trainer keys."""
    from text2sql.config.schema import check_config
    from text2sql.objective.init_from import prepare_objective

    args = ["objective=grpo", group]
    cfg = _compose(*args)
    prepare_objective(cfg, args)
    check_config(cfg)
    assert cfg.objective.num_generations == 8 and cfg.data.prompts is True
    assert cfg.trainer.gradient_clip_val is None and cfg.trainer.accumulate_grad_batches == 1


def test_an_sft_recipe_with_accumulation_is_refused_in_one_line():
    from text2sql.errors import ConfigError
    from text2sql.objective.init_from import prepare_objective

    args = ["objective=grpo", "experiment=dbgpt_hub_codellama13b_lora"]  # accumulates 16 batches, clips at 1.0
    with pytest.raises(ConfigError, match="accumulate_grad_batches=16 and trainer.gradient_clip_val=1.0 must be"):
        prepare_objective(_compose(*args), args)


# -- what was scored against what: Recorded's rows (tests/grpo_rewards.py) checked against one process -----------------
def _logged(run_dir, key: str) -> dict[int, float]:
    """{global step: value} of one per-step key over the run's CSV logs."""
    import csv

    return {int(row["step"]): float(row[key]) for path in sorted((run_dir / "csv").glob("version_*/metrics.csv"))
            for row in csv.DictReader(path.open()) if row.get(key)}


def _scored(rewards_dir) -> list[list[dict]]:
    """Recorded's rows, one list per process (rank) in call order."""
    import json

    return [[json.loads(line) for line in p.read_text().splitlines()] for p in sorted(rewards_dir.glob("*.jsonl"))]


def _first_rollouts_as_one_process(run_dir, start, processes: list[list[dict]], monkeypatch):
    """Each process's first batch of rollouts (drawn with the starting weights) is what this one process draws from
    the starting checkpoint for a training prompt (as the run's datamodule cut it) whose example has the gold and
    database the samples were scored against, and each verdict is the evaluator's for that gold on that database.
    Returns (the starting model, the tokenizer, the dataset, the training item index of every group)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from conftest import REPO_ROOT
    from text2sql.eval.execute import ExecutionEvaluator
    from text2sql.inference.predict import compose_config, load_for_inference, resolve_subtree
    from text2sql.objective.reward import Sample, execute_samples
    from text2sql.objective.rollout import sample_groups

    monkeypatch.chdir(REPO_ROOT)
    cfg = compose_config([], run_dir)
    dataset = instantiate(resolve_subtree(cfg, "dataset"))
    model, tokenizer, _ = load_for_inference(cfg, dataset, ("checkpoint", start), device="cpu")
    data = instantiate(resolve_subtree(cfg, "data"), dataset=dataset, tokenizer=tokenizer)
    data.setup("fit")
    items = data.train_items
    n = int(OmegaConf.select(cfg, "objective.num_generations"))
    kw = dict(temperature=float(OmegaConf.select(cfg, "objective.temperature")),
              top_p=float(OmegaConf.select(cfg, "objective.top_p")), batch_size=64,
              seed=int(OmegaConf.select(cfg, "objective.seed")) * 100_003,  # GRPOModule's rollout seed at epoch 0
              max_new_tokens=int(OmegaConf.select(cfg, "objective.max_new_tokens")))
    first = [r for rows in processes for r in rows if r["call"] == 0]
    matched = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the runs (OMP_NUM_THREADS=1): a smoke model's flat next-token distributions let
    try:                      # another thread count's last-bit differences flip a sampled token
        for g in range(0, len(first), n):
            group = first[g: g + n]
            assert len({(r["db_id"], r["gold"]) for r in group}) == 1  # a group: one prompt's samples
            key = (group[0]["db_id"], group[0]["gold"])
            candidates = [i for i, it in enumerate(items) if (it["db_id"], it["gold"]) == key]
            drawn = sample_groups(model, tokenizer, [items[i]["input_ids"] for i in candidates], n, **kw).texts
            same = [i for k, i in enumerate(candidates)
                    if drawn[k * n: (k + 1) * n] == [r["completion"] for r in group]]
            assert same, f"group {g // n}: no training prompt with gold {key[1]!r} draws these samples"
            matched.append(same[0])
    finally:
        torch.set_num_threads(threads)
    with ExecutionEvaluator(dataset.db_dir("train"), timeout=5, workers=0, style=dataset.eval_style) as ev:
        verdicts = execute_samples(ev, [Sample(r["db_id"], r["gold"], r["sql"], r["completion"]) for r in first])
    assert [(v.status, bool(v.correct)) for v in verdicts] == [(r["status"], r["correct"]) for r in first]
    return model, tokenizer, dataset, matched


@pytest.mark.slow
def test_grpo_under_deepspeed_zero3_on_two_ranks(smoke_run, tmp_path, monkeypatch):
    """`hardware=deepspeed_zero2_cpu hardware.zero_stage=3 hardware.devices=2`: every weight is sharded, so ranks
    generate in lock-step (synced_gpus) and draw what one process draws; the reference weights (beta > 0) are
    written into the shards and back: the KL is 0 at the first update (the policy is still the start) and > 0
    after it; the exported adapter holds whole (gathered) trained weights."""
    import json
    import subprocess
    import sys
    import time

    import torch

    from conftest import REPO_ROOT
    from text2sql.inference.predict import compose_config, load_for_inference
    from text2sql.objective.init_from import start_checkpoint

    run = tmp_path / "zero3"
    args = [a for a in GRPO if not a.startswith(("objective.num_iterations", "trainer.max_epochs", "objective.reward"))]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), *args, f"init_from={smoke_run[0]}",
                           "hardware=deepspeed_zero2_cpu", "hardware.zero_stage=3", "hardware.devices=2",
                           "trainer.max_epochs=1", "objective.reward._target_=grpo_rewards.Recorded",
                           f"+objective.reward.out={run / 'rewards'}", f"hydra.run.dir={run}"],
                          cwd=smoke_run[1], env=_grpo_env(tmp_path), capture_output=True, text=True, timeout=900)
    print(f"zero3 GRPO run: {time.perf_counter() - t0:.0f} s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MEMBER: 2/2" in proc.stdout + proc.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "ok" and [r["epoch"] for r in metrics["history"]] == [0]
    assert sorted(_logged(run, "grpo/reward_mean")) == [0, 1]
    kl = _logged(run, "grpo/kl")
    assert kl[0] == pytest.approx(0.0, abs=1e-7) and kl[1] > 1e-6

    processes = _scored(run / "rewards")
    assert len(processes) == 2 and all(sorted({r["call"] for r in rows}) == [0, 1] for rows in processes)
    start = start_checkpoint(str(smoke_run[0]))[1]
    start_model, _, dataset, prompts = _first_rollouts_as_one_process(run, start, processes, monkeypatch)
    assert len(prompts) == 4 and len(set(prompts)) == 4  # 2 prompts per rank, none drawn twice

    trained, _, _ = load_for_inference(compose_config([], run), dataset, ("adapter", run / "adapter"), device="cpu")
    before = {n: p for n, p in start_model.named_parameters() if "lora_" in n}
    after = dict(trained.named_parameters())
    assert before and all(after[n].shape == p.shape and torch.isfinite(after[n]).all() for n, p in before.items())
    assert any(not torch.equal(after[n], p) for n, p in before.items())  # trained, not the start exported again


# -- train.py -m over objective.* keys, init_from relative to where train.py starts, multi-turn prompts --------------
@pytest.fixture(scope="module")
def sparc_sweep(smoke_run, tmp_path_factory):
    """`train.py -m objective=grpo init_from=../run dataset=sparc ... objective.temperature=0.7,1.0`, started in the
    smoke run's start dir (init_from is relative to it): GRPO from the smoke run's adapter on the generated SParC
    sample (one record per turn, the earlier turns in its prompt). (sweep dir, start checkpoint, seconds)."""
    import os
    import subprocess
    import sys
    import time

    from conftest import REPO_ROOT
    from text2sql.data.sample_multiturn import generate_multiturn_sample
    from text2sql.objective.init_from import start_checkpoint

    tmp = tmp_path_factory.mktemp("grpo_sweep")
    root = generate_multiturn_sample(tmp / "sparc", "sparc", seed=0, n_train=16, n_dev=4)
    sweep = tmp / "sweep"
    relative = os.path.relpath(smoke_run[0], smoke_run[1])
    args = [a for a in GRPO if not a.startswith(("objective.num_iterations", "objective.beta", "trainer.max_epochs",
                                                 "objective.reward", "eval.limit"))]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), "-m", *args, f"init_from={relative}",
                           "dataset=sparc", f"dataset.root={root}", "eval.limit=4", "trainer.max_epochs=1",
                           "objective.temperature=0.7,1.0", "objective.reward._target_=grpo_rewards.Recorded",
                           "+objective.reward.out=${hydra:runtime.output_dir}/rewards", f"hydra.sweep.dir={sweep}"],
                          cwd=smoke_run[1], env=_grpo_env(tmp), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep, start_checkpoint(str(smoke_run[0]))[1], proc, time.perf_counter() - t0


@pytest.mark.slow
def test_grpo_sweep_over_objective_keys(sparc_sweep):
    """Each job of the sweep: its own value in its saved config, a finished run, per-step rewards, started from the
    run init_from names (relative to where train.py started), and samples drawn at its own temperature."""
    import json

    from omegaconf import OmegaConf

    sweep, start, proc, seconds = sparc_sweep
    print(f"GRPO sweep (2 jobs): {seconds:.0f} s")
    jobs = [sweep / "0", sweep / "1"]
    for job, temperature in zip(jobs, (0.7, 1.0)):
        saved = OmegaConf.load(job / ".hydra" / "config.yaml")
        assert saved.objective.temperature == temperature and f"objective.temperature={temperature}" in \
            OmegaConf.load(job / ".hydra" / "overrides.yaml")
        assert saved.peft.r == 4 and saved.dataset.name == "sparc"  # the run's adapter; dataset= given now wins
        metrics = json.loads((job / "metrics.json").read_text())
        assert metrics["status"] == "ok" and [r["epoch"] for r in metrics["history"]] == [0]
        assert sorted(_logged(job, "grpo/reward_mean")) == [0, 1] and (job / "adapter").is_dir()
    assert (proc.stdout + proc.stderr).count(f"init_from: {start}") == 2
    first = [[r["completion"] for r in _scored(job / "rewards")[0] if r["call"] == 0] for job in jobs]
    assert first[0] != first[1]  # the same prompts (same seed), sampled at 0.7 and at 1.0


@pytest.mark.slow
def test_multi_turn_grpo_scores_each_turn_against_its_own_gold_and_database(sparc_sweep, monkeypatch):
    """On SParC each turn is a training prompt (its earlier turns in it): the samples scored against a turn's gold
    are those one process draws from that turn's prompt, executed on that turn's database; follow-up turns are
    among them."""
    sweep, start, _, _ = sparc_sweep
    for job in (sweep / "0", sweep / "1"):
        _, _, dataset, prompts = _first_rollouts_as_one_process(job, start, _scored(job / "rewards"), monkeypatch)
        ids = dataset.interaction_ids("train")
        turns = [i - ids.index(ids[i]) for i in prompts]  # 0: an interaction's first question
        assert len(prompts) == 2 and any(t > 0 for t in turns), turns
