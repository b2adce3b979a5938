"""The design-card command picks by itself: `hardware=auto` from the machine's facts, Spider for a real model,
and a missing Spider dir or an unreachable hub is one line within seconds, before any weights load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import REPO_ROOT
from text2sql.model import load as load_mod
from text2sql.machine.auto import Facts, choose, launcher, resolve_hardware
from text2sql.model.load import cached_snapshot, check_model_path, hub_reachable

CONF = REPO_ROOT / "conf"
DEAD_HUB = "http://127.0.0.1:9"  # loopback discard port: refused at once, no network touched


def compose_cfg(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=[*overrides, "logger=none"])


# ---- 1. hardware=auto: the choice from injected facts -------------------------------------------------------

TORCHRUN_2x4 = {"TORCHELASTIC_RUN_ID": "abc", "LOCAL_WORLD_SIZE": "4", "WORLD_SIZE": "8", "LOCAL_RANK": "0"}
SRUN_2x8 = {"SLURM_NTASKS": "16", "SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "8(x2)", "SLURM_JOB_NAME": "t2s"}


@pytest.mark.parametrize("facts,want", [
    (Facts(0, False, {}), ("cpu", 1, 1, None)),
    (Facts(1, True, {}), ("gpu", 1, 1, "bf16-mixed")),
    (Facts(1, False, {}), ("gpu", 1, 1, "16-mixed")),  # e.g. a V100 / T4: no bf16
    (Facts(8, True, {}), ("deepspeed_zero2", 8, 1, "bf16-mixed")),
    (Facts(2, False, {}), ("deepspeed_zero2", 2, 1, "16-mixed")),
    (Facts(4, True, TORCHRUN_2x4), ("deepspeed_zero2", 4, 2, "bf16-mixed")),  # torchrun: env, not the count
    (Facts(8, True, {"TORCHELASTIC_RUN_ID": "x", "LOCAL_WORLD_SIZE": "1", "WORLD_SIZE": "1"}),
     ("gpu", 1, 1, "bf16-mixed")),
    (Facts(0, False, {"TORCHELASTIC_RUN_ID": "x", "LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "2"}), ("cpu", 2, 1, None)),
    (Facts(8, True, SRUN_2x8), ("deepspeed_zero2", 8, 2, "bf16-mixed")),
    (Facts(8, True, {"SLURM_NTASKS": "4", "SLURM_NNODES": "1"}), ("deepspeed_zero2", 4, 1, "bf16-mixed")),
    # an interactive allocation (salloc; bash) is not an srun launch: Lightning does not treat it as one either
    (Facts(2, True, {"SLURM_NTASKS": "16", "SLURM_NNODES": "2", "SLURM_JOB_NAME": "bash"}),
     ("deepspeed_zero2", 2, 1, "bf16-mixed")),
    # a rank that Lightning's own launcher spawned (LOCAL_RANK/WORLD_SIZE, no torchrun id): same choice as rank 0
    (Facts(4, True, {"LOCAL_RANK": "1", "WORLD_SIZE": "4", "NODE_RANK": "0"}), ("deepspeed_zero2", 4, 1, "bf16-mixed")),
])
def test_choice_from_facts(facts, want):
    choice = choose(facts)
    assert (choice.preset, choice.devices, choice.num_nodes, choice.precision) == want
    assert choice.reason and "\n" not in choice.reason


def test_launcher_detection():
    assert launcher({}) is None
    assert launcher(TORCHRUN_2x4) == ("torchrun", 4, 2)
    assert launcher(SRUN_2x8) == ("SLURM", 8, 2)
    assert launcher({"SLURM_NTASKS": "6", "SLURM_JOB_NUM_NODES": "3"}) == ("SLURM", 2, 3)


def test_resolve_composes_the_chosen_preset_and_user_keys_win(caplog):
    cfg = compose_cfg(["data.batch_size=3"])
    assert cfg.hardware.name == "auto"
    with caplog.at_level("INFO", logger="text2sql.machine.auto"):
        choice = resolve_hardware(cfg, facts=Facts(4, True, {}), task_overrides=["data.batch_size=3"])
    assert choice.preset == "deepspeed_zero2"
    hw = OmegaConf.to_container(cfg.hardware, resolve=True)
    assert (hw["name"], hw["devices"], hw["num_nodes"], hw["precision"], hw["zero_stage"]) == (
        "deepspeed_zero2", 4, 1, "bf16-mixed", 2)
    # the preset's interpolations now resolve against this run's config
    assert hw["strategy"]["config"]["train_micro_batch_size_per_gpu"] == 3
    assert OmegaConf.to_container(cfg.trainer, resolve=True)["devices"] == 4
    lines = [r.getMessage() for r in caplog.records if "hardware=auto" in r.getMessage()]
    assert len(lines) == 1 and "deepspeed_zero2" in lines[0] and "4 CUDA GPUs" in lines[0]

    cfg = compose_cfg(["hardware.devices=2"])
    resolve_hardware(cfg, facts=Facts(4, False, {}), task_overrides=["hardware.devices=2"])
    assert (cfg.hardware.name, cfg.hardware.devices, cfg.hardware.precision) == ("deepspeed_zero2", 2, "16-mixed")

    cfg = compose_cfg([])
    resolve_hardware(cfg, facts=Facts(0, False, {}), task_overrides=[])
    assert (cfg.hardware.name, cfg.hardware.accelerator, cfg.hardware.precision) == ("cpu", "cpu", "32-true")


def test_an_explicit_preset_always_wins():
    for preset in ("cpu", "gpu", "deepspeed_zero3"):
        cfg = compose_cfg([f"hardware={preset}"])
        before = OmegaConf.to_container(cfg.hardware)
        assert resolve_hardware(cfg, facts=Facts(8, True, TORCHRUN_2x4), task_overrides=[]) is None
        assert OmegaConf.to_container(cfg.hardware) == before


# ---- 2. a real model trains on real data ----------------------------------------------------------------------

def test_real_models_default_to_spider_and_tiny_keeps_the_sample():
    for model in ("codellama7b", "codellama13b", "codellama34b"):
        assert compose_cfg([f"model={model}"]).dataset.name == "spider", model
        assert compose_cfg([f"model={model}", "dataset=sample"]).dataset.name == "sample", model
    assert compose_cfg([]).dataset.name == "sample"
    assert compose_cfg(["model=tiny"]).dataset.name == "sample"
    assert compose_cfg(["experiment=dbgpt_hub_codellama13b_lora", "model=codellama7b"]).dataset.name == "spider"


def _env(tmp_path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("SPIDER_DIR", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT")}
    env.update(TEXT2SQL_CACHE=str(tmp_path / "cache"), HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=DEAD_HUB)
    env.update(extra)
    return env


def _train(tmp_path, *overrides, **env):
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), *overrides], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env=_env(tmp_path, **env))
    return proc, time.monotonic() - start


def test_design_card_command_shows_auto_and_spider(tmp_path, monkeypatch):
    """`python train.py model=codellama13b peft=qlora4 --cfg job` with SPIDER_DIR set: no other override."""
    spider = tmp_path / "my_spider"
    spider.mkdir()
    proc, _ = _train(tmp_path, "model=codellama13b", "peft=qlora4", "--cfg", "job",
                     SPIDER_DIR=str(spider))
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["hardware"]["name"] == "auto" and cfg["dataset"]["name"] == "spider"
    assert cfg["model"]["name"] == "codellama-13b-instruct" and cfg["peft"]["quantization"]["bits"] == 4
    monkeypatch.setenv("SPIDER_DIR", str(spider))  # the root is resolved where the run reads it
    resolved = OmegaConf.to_container(OmegaConf.create(cfg).dataset, resolve=True)  # ${oc.env:SPIDER_DIR,...}
    assert resolved["root"] == str(spider)


def test_design_card_without_spider_stops_in_one_line(tmp_path):
    # cwd = tmp_path: no data/spider there, and SPIDER_DIR is unset
    proc, _ = _train(tmp_path, "model=codellama13b", "peft=qlora4", "logger=none", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "Spider directory not found" in lines[0] and "SPIDER_DIR" in lines[0] and "dataset.root" in lines[0]
    assert not (tmp_path / "cache").exists() and not (tmp_path / "hf").exists()  # nothing generated or fetched
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "failed"


# ---- 3. offline fails fast ---------------------------------------------------------------------------------------

def test_unreachable_hub_without_cache_is_one_line_in_seconds(tmp_path):
    # a small generated dataset (data is checked first, before torch); then the model check must stop the run
    proc, _ = _train(tmp_path, "model=codellama7b", "dataset=sample", "dataset.n_train=40", "dataset.n_dev=8",
                     f"paths.cache_dir={tmp_path / 'cache'}", "logger=none",
                     f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "codellama/CodeLlama-7b-Instruct-hf" in lines[0] and DEAD_HUB in lines[0] and "unreachable" in lines[0]
    assert str(tmp_path / "hf") in lines[0] and "model.path" in lines[0]
    # not a timing assertion on the whole process (imports vary on a shared box): the probe itself is bounded
    start = time.monotonic()
    assert hub_reachable(DEAD_HUB, timeout=2)[0] is False
    assert time.monotonic() - start < 5


def test_hub_probe_has_a_hard_timeout(monkeypatch):
    import socket

    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: time.sleep(30))  # a hub that never answers
    start = time.monotonic()
    ok, why = hub_reachable("https://huggingface.co", timeout=0.5)
    assert not ok and "no answer" in why and time.monotonic() - start < 3


def _fake_cache(root: Path, repo_id: str, files: list[str]) -> Path:
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    for f in files:
        (snap / f).write_text("{}")
    return snap


def test_cache_first_then_probe(tmp_path, monkeypatch):
    """huggingface_hub's constants (its reading of HF_HUB_CACHE, HF_ENDPOINT, HF_HUB_OFFLINE at import) decide."""
    from huggingface_hub import constants

    repo_id = "codellama/CodeLlama-7b-Instruct-hf"
    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "ENDPOINT", DEAD_HUB)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    _fake_cache(cache, repo_id, ["config.json"])  # config without weights: not usable
    assert cached_snapshot(repo_id) is None
    with pytest.raises(FileNotFoundError, match="unreachable"):
        check_model_path(repo_id)
    snap = _fake_cache(tmp_path / "hub2", repo_id, ["config.json", "model.safetensors.index.json"])
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub2"))
    assert cached_snapshot(repo_id) == str(snap)
    assert check_model_path(repo_id) == str(snap)  # dead hub, cached weights: load the snapshot dir directly
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert check_model_path(repo_id) == repo_id  # offline mode: transformers reads the cache itself
    probes = []
    monkeypatch.setattr(load_mod, "hub_reachable", lambda *a, **k: probes.append(1) or (True, ""))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert check_model_path(repo_id) == repo_id and probes == [1]  # reachable hub: the hub id as given


def test_offline_mode_and_cache_dir_are_the_hubs(tmp_path):
    """As a run sees them: the variables set before it starts, read by huggingface_hub itself (TRANSFORMERS_OFFLINE
    counts as HF_HUB_OFFLINE; HF_HOME -> its hub/ when HF_HUB_CACHE is not set)."""
    code = "from text2sql.model.load import _hub_cache, _offline; print(_offline(), _hub_cache())"
    base = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT,
                          env={**base, "TRANSFORMERS_OFFLINE": "yes", "HF_HOME": str(tmp_path),
                               "PYTHONPATH": str(REPO_ROOT)})
    assert proc.stdout.split() == ["True", str(tmp_path / "hub")]
