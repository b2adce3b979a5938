"""Hardware presets compose, derive batch sizes in one place, and fail fast (one line) without their GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import REPO_ROOT
from text2sql.machine import setup as machine_setup
from text2sql.errors import HardwareError
from text2sql.machine.setup import check_gpus
from text2sql.training.strategy import deepspeed_config

CONF = REPO_ROOT / "conf"
PRESETS = sorted(p.stem for p in (CONF / "hardware").glob("*.yaml") if p.stem != "auto")  # auto: test_auto.py
GPU_PRESETS = ["gpu", "deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero3_offload", "multinode"]


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def test_auto_is_the_default():
    assert compose_cfg([]).hardware.name == "auto"


def test_presets_exist():
    assert set(GPU_PRESETS) | {"cpu", "deepspeed_zero2_cpu"} <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_exposes_sizing_keys_and_feeds_the_trainer(preset):
    cfg = compose_cfg([f"hardware={preset}"])
    hw = OmegaConf.to_container(cfg.hardware, resolve=True)
    assert hw["name"] == preset
    assert {"accelerator", "devices", "num_nodes", "precision", "zero_stage", "offload_optimizer",
            "offload_parameters", "strategy"} <= set(hw)
    assert isinstance(hw["devices"], int) and isinstance(hw["num_nodes"], int)
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert (trainer["devices"], trainer["num_nodes"], trainer["precision"]) == (
        hw["devices"], hw["num_nodes"], hw["precision"])
    if hw["zero_stage"]:
        ds = hw["strategy"]
        assert ds["_target_"] == "text2sql.training.strategy.deepspeed_strategy"
        # batch sizes: one source each (data.batch_size; accumulation/clipping filled by Lightning from trainer.*)
        assert ds["config"]["train_micro_batch_size_per_gpu"] == cfg.data.batch_size
        assert "gradient_accumulation_steps" not in ds["config"] and "gradient_clipping" not in ds["config"]
        built = deepspeed_config(ds["config"], hw["zero_stage"], hw["offload_optimizer"], hw["offload_parameters"])
        assert built["zero_optimization"]["stage"] == hw["zero_stage"]
        assert ("offload_optimizer" in built["zero_optimization"]) == hw["offload_optimizer"]
        assert ("offload_param" in built["zero_optimization"]) == hw["offload_parameters"]
    else:
        assert hw["strategy"] == "auto"


def test_batch_size_override_reaches_deepspeed():
    cfg = compose_cfg(["hardware=deepspeed_zero3", "data.batch_size=3", "trainer.accumulate_grad_batches=7"])
    assert cfg.hardware.strategy.config.train_micro_batch_size_per_gpu == 3


def test_expected_stages_and_offload():
    stages = {p: compose_cfg([f"hardware={p}"]).hardware for p in PRESETS}
    assert stages["deepspeed_zero2"].zero_stage == 2 and stages["deepspeed_zero3"].zero_stage == 3
    assert stages["deepspeed_zero3_offload"].offload_optimizer and stages["deepspeed_zero3_offload"].offload_parameters
    assert stages["multinode"].num_nodes > 1 and stages["gpu"].precision == "bf16-mixed"
    assert stages["deepspeed_zero2_cpu"].accelerator == "cpu"


def test_cpu_deepspeed_preset_instantiates_the_cpu_strategy():
    cfg = compose_cfg(["hardware=deepspeed_zero2_cpu", "data.batch_size=4"])
    strategy = instantiate(cfg.hardware.strategy)
    assert type(strategy).__name__ == "CPUDeepSpeedStrategy"
    assert strategy.config["train_micro_batch_size_per_gpu"] == 4
    assert strategy.config["zero_optimization"]["stage"] == 2
    assert strategy.exclude_frozen_parameters and strategy.config["zero_allow_untested_optimizer"]


def test_deepspeed_config_refuses_duplicated_keys():
    with pytest.raises(ValueError, match="accumulate_grad_batches"):
        deepspeed_config({"gradient_accumulation_steps": 4}, 2)
    with pytest.raises(ValueError, match="zero_stage"):
        deepspeed_config({"zero_optimization": {"stage": 3}}, 2)
    with pytest.raises(ValueError, match="stage 3"):
        deepspeed_config({}, 2, offload_parameters=True)


@pytest.mark.parametrize("preset", GPU_PRESETS)
def test_gpu_presets_refused_without_cuda(preset, monkeypatch):
    monkeypatch.setattr(machine_setup, "_cuda_count", lambda: 0)
    with pytest.raises(HardwareError) as err:
        check_gpus(compose_cfg([f"hardware={preset}"]).hardware)
    assert "\n" not in str(err.value) and f"hardware={preset}" in str(err.value)


def test_cpu_presets_pass_and_too_many_gpus_refused(monkeypatch):
    monkeypatch.setattr(machine_setup, "_cuda_count", lambda: 0)
    for preset in ("cpu", "deepspeed_zero2_cpu"):
        check_gpus(compose_cfg([f"hardware={preset}"]).hardware)
    monkeypatch.setattr(machine_setup, "_cuda_count", lambda: 2)
    check_gpus(compose_cfg(["hardware=gpu", "hardware.devices=2"]).hardware)
    with pytest.raises(HardwareError, match="hardware.devices=2"):
        check_gpus(compose_cfg(["hardware=deepspeed_zero2", "hardware.devices=4"]).hardware)


def test_machine_set_up_checks_gpus_except_for_a_dry_run(monkeypatch):
    """set_up_machine: a GPU preset without a GPU is one line (a dry run only sizes it); a CPU run gets DeepSpeed's
    CPU accelerator and its OpenMP waiting (the user's variables win)."""
    from text2sql.machine.setup import set_up_machine

    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items()
                                        if k not in ("DS_ACCELERATOR", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")})
    monkeypatch.setattr(machine_setup, "_cuda_count", lambda: 0)
    from text2sql.machine import threads

    monkeypatch.setattr(threads, "busy_cpus", lambda: (1.0, 2))  # spin_count=auto beside one busy CPU: 100 spins
    with pytest.raises(HardwareError, match="hardware=gpu needs a CUDA GPU"):
        set_up_machine(compose_cfg(["hardware=gpu"]))
    set_up_machine(compose_cfg(["hardware=gpu"]), dry_run=True)
    assert "DS_ACCELERATOR" not in os.environ and "GOMP_SPINCOUNT" not in os.environ  # a GPU run: untouched
    set_up_machine(compose_cfg(["hardware=deepspeed_zero2_cpu"]))
    assert os.environ["DS_ACCELERATOR"] == "cpu" and os.environ["GOMP_SPINCOUNT"] == "100"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("preset", ["gpu", "deepspeed_zero2"])
def test_train_py_fails_in_one_line_before_loading_anything(preset, tmp_path):
    cache = tmp_path / "cache"
    proc = subprocess.run([sys.executable, "train.py", f"hardware={preset}", "logger=none",
                           f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TEXT2SQL_CACHE": str(cache)})
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and f"hardware={preset}" in lines[0] and "CUDA" in lines[0]
    assert not Path(cache).exists()  # no sample data generated, no model built or loaded
