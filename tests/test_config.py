"""Every config choice composes; bad choices fail with Hydra's list of valid options."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from conftest import REPO_ROOT

CONF = REPO_ROOT / "conf"


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


def resolve_all(cfg) -> dict:
    from hydra.core.hydra_config import HydraConfig

    with open_dict(cfg):
        OmegaConf.set_readonly(cfg.hydra, False)
        cfg.hydra.runtime.output_dir = "/tmp/out"  # what Hydra sets at run time
    HydraConfig.instance().set_config(cfg)
    return {k: _resolve(cfg, k) for k in cfg if k != "hydra"}


def _resolve(cfg, key):
    node = cfg[key]
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def test_default_config_composes_and_resolves():
    cfg = compose_cfg([])
    resolved = resolve_all(cfg)
    assert resolved["model"]["name"] == "tiny-llama"
    assert resolved["dataset"]["name"] == "sample"
    assert resolved["peft"]["method"] == "lora"
    assert resolved["optimized_metric"] == "val/execution_accuracy"
    # keys that sweeps override exist at these paths
    assert {"r", "alpha"} <= set(resolved["peft"]) and "lr" in resolved["optim"]


@pytest.mark.parametrize("group", ["model", "dataset", "peft", "hardware", "logger", "debug"])
def test_every_option_of_a_group_composes(group):
    for option in group_options(group):
        cfg = compose_cfg([f"{group}={option}"])
        resolve_all(cfg)


def test_sweep_keys_override():
    cfg = compose_cfg(["peft.r=8", "peft.alpha=16", "optim.lr=1e-4"])
    assert (cfg.peft.r, cfg.peft.alpha, cfg.optim.lr) == (8, 16, 1e-4)


def test_unknown_choice_lists_valid_options():
    proc = subprocess.run([sys.executable, "train.py", "model=nope"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert "Could not find 'model/nope'" in proc.stderr
    assert "tiny" in proc.stderr  # Hydra lists the available options


def test_missing_dataset_dir_is_one_line(tmp_path):
    missing = tmp_path / "no_such_spider"
    proc = subprocess.run([sys.executable, "train.py", "dataset=spider", f"dataset.root={missing}", "logger=none"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "TEXT2SQL_CACHE": str(tmp_path / "cache")})
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert str(missing) in lines[0] and "dataset.root" in lines[0]
    assert "Traceback" not in proc.stderr


def test_train_help_is_written_for_people():
    """`python train.py --help` (conf/hydra/help/text2sql.yaml): every config group under conf/ with all of
    its options, resume, sweeps, every verb and the README, within 80 columns; not the internal `schema` group
    nor the config dump (that is `--cfg job`)."""
    import re

    from text2sql.cli import VERBS

    out = subprocess.run([sys.executable, "train.py", "--help"], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "schema" not in text and "_target_" not in text and "powered by Hydra" not in text
    groups = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")
    for group in groups:
        line = re.search(rf"^  {group} +(.*(?:\n {{14}}.*)*)", text, re.M)
        assert line, f"group {group} missing from --help"
        listed = set(re.findall(r"[a-z0-9_]+", line.group(1).split(":")[0].split("(")[0]))
        assert listed >= set(group_options(group)), (group, listed)
    for word in ("ckpt_path=", "resume=auto hydra.run.dir=DIR", "-m sweep=", "text2sql report", "README.md",
                 "--cfg job"):
        assert word in text
    assert all(re.search(rf"\b{verb}\b", text) for verb in VERBS)
