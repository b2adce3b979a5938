"""Typed config: wrong types and unknown keys fail at compose time in one line naming the key; ranges are
checked before torch is imported; interpolations such as ${model.recommended.lr} survive the schemas."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from conftest import REPO_ROOT
from text2sql.config.schema import (LoraSchema, OptimSchema, QLoraSchema, SampleDatasetSchema, TrainerSchema,
                                    check_added_keys, check_config, check_source_budget, describe_compose_error)
from text2sql.errors import ConfigError

CONF = REPO_ROOT / "conf"
ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}


def compose_cfg(overrides: list[str], conf: Path = CONF):
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def train(*overrides: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *overrides, "logger=none", f"hydra.run.dir={tmp_path}/run"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                          env={**ENV, "TEXT2SQL_CACHE": str(tmp_path / "cache")})


def test_our_sections_are_typed_and_keep_their_interpolations():
    cfg = compose_cfg([])
    assert OmegaConf.get_type(cfg.optim) is OptimSchema and OmegaConf.get_type(cfg.trainer) is TrainerSchema
    assert OmegaConf.get_type(cfg.peft) is LoraSchema and OmegaConf.get_type(cfg.dataset) is SampleDatasetSchema
    assert OmegaConf.get_type(compose_cfg(["peft=qlora4"]).peft) is QLoraSchema
    raw = OmegaConf.to_container(cfg, resolve=False)
    assert raw["optim"]["lr"] == "${model.recommended.lr}" and raw["peft"]["r"] == "${model.lora.r}"
    assert cfg.optim.lr == cfg.model.recommended.lr and cfg.trainer.max_epochs == cfg.model.recommended.epochs


@pytest.mark.parametrize("override,key,expected", [
    ("optim.lr=abc", "optim.lr", "Float"),
    ("trainer.max_epochs=abc", "trainer.max_epochs", "Integer"),
    ("peft.r=eight", "peft.r", "Integer"),
    ("eval.timeout=soon", "eval.timeout", "Float"),
    ("dataset.max_source_length=long", "dataset.max_source_length", "Integer"),
    ("data.group_by_length=maybe", "data.group_by_length", "bool"),
])
def test_wrong_type_fails_at_compose_naming_key_and_type(override, key, expected):
    with pytest.raises(ConfigCompositionException) as info:
        compose_cfg([override])
    line = describe_compose_error(info.value)
    assert "\n" not in line and line.startswith(f"{key}:") and expected in line


def test_unknown_key_in_a_yaml_file_fails_at_compose(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    (conf / "experiment" / "typo.yaml").write_text("# @package _global_\noptim:\n  lrr: 1.0e-3\n")
    with pytest.raises(ConfigCompositionException) as info:
        compose_cfg(["experiment=typo"], conf)
    line = describe_compose_error(info.value)
    assert "optim.lrr" in line and "OptimSchema" in line and "\n" not in line


def test_compose_errors_are_one_line_from_train_py(tmp_path):
    """Before: a traceback from inside the optimizer after ~15 s (optim.lr) or Lightning (max_epochs)."""
    for override, key in (("optim.lr=abc", "optim.lr"), ("trainer.max_epochs=abc", "trainer.max_epochs"),
                          ("optim.lrr=1", "optim.lrr")):
        proc = train(override, tmp_path=tmp_path)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 1 and len(lines) == 1, proc.stderr
        assert lines[0].startswith(f"error: {key}:") and "Traceback" not in proc.stderr
        if "lrr" in override:
            assert lines[0] == "error: optim.lrr: no such key; did you mean optim.lr?", lines


def test_a_config_error_before_any_work_leaves_no_run_dir(tmp_path):
    """Issue 29: `+optim.lrr=1e-3` ran with rc 0 and lr unchanged (as Hydra's advice said), and every config error
    left a `failed` run dir under outputs/ (10 after ten typos). A dir named with hydra.run.dir keeps its record."""
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), "+optim.lrr=1e-3", "logger=none"],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 1 and lines == ["error: optim.lrr: no such key; did you mean optim.lr?"], proc.stderr
    assert [p for p in (tmp_path / "outputs").glob("*/*")] == []


def test_unknown_keys_are_refused_with_or_without_plus_naming_the_key_meant():
    with pytest.raises(ConfigCompositionException) as info:
        compose_cfg(["optim.lrr=1e-3"])
    assert describe_compose_error(info.value) == "optim.lrr: no such key; did you mean optim.lr?"
    for overrides, said in ((["+optim.lrr=1e-3"], "optim.lrr: no such key; did you mean optim.lr?"),
                            (["++optim.lrr=1e-3"], "optim.lrr: no such key; did you mean optim.lr?"),
                            (["+hardware.spincount=3"], "hardware.spincount: no such key; did you mean "
                                                        "hardware.spin_count?"),
                            (["+lrr=1"], "lrr: no such key; did you mean optim.lr?"),
                            (["+peft.r=4"], "peft.r: not a key of the chosen config (other presets have it; this one "
                                             "would never read it)")):  # peft=full has no r
        with pytest.raises(ConfigError) as info:
            check_added_keys(overrides)
        assert str(info.value) == said
    check_added_keys(["optim.lr=1", "++optim.lr=2", "+launcher=slurm", "+trainer.fast_dev_run=1",
                      "+callbacks.probe._target_=x.Y"])  # Trainer arguments, callbacks and groups may be added
    with pytest.raises(ConfigCompositionException) as info:
        compose_cfg(["trainer.fast_dev_run=1"])
    assert describe_compose_error(info.value) == ("trainer.fast_dev_run: no such key (a Lightning Trainer argument "
                                                  "the config does not set: +trainer.fast_dev_run=1)")


@pytest.mark.parametrize("override,key", [
    ("optim.lr=-1", "optim.lr"), ("optim.lr=0", "optim.lr"), ("peft.r=0", "peft.r"),
    ("peft.dropout=1.0", "peft.dropout"), ("peft.alpha=0", "peft.alpha"), ("eval.timeout=0", "eval.timeout"),
    ("data.batch_size=0", "data.batch_size"), ("trainer.max_epochs=0", "trainer.max_epochs"),
    ("optim.warmup_ratio=1.5", "optim.warmup_ratio"), ("eval.every_n_epochs=0", "eval.every_n_epochs"),
    ("dataset.max_source_length=8", "dataset.max_source_length"), ("optim.betas=[0.9,1.2]", "optim.betas"),
    ("model.recommended.lr=-0.1", "optim.lr"),
])
def test_out_of_range_values_are_one_config_error(override, key):
    cfg = compose_cfg([override])
    with pytest.raises(ConfigError) as info:
        check_config(cfg)
    assert str(info.value).startswith(key) and "\n" not in str(info.value)


def test_interpolated_value_of_the_wrong_type_names_the_typed_key():
    cfg = compose_cfg(["model.recommended.lr=abc"])  # composes: the model group is not typed
    with pytest.raises(ConfigError, match=r"^optim\.lr: .*could not be converted to Float"):
        check_config(cfg)


@pytest.mark.parametrize("overrides", [[], ["debug=smoke"], ["peft=qlora4"], ["peft=qlora8"], ["peft=full"],
                                       ["dataset=spider"], ["experiment=dbgpt_hub_codellama13b_lora"],
                                       ["experiment=dbgpt_hub_codellama13b_qlora4"], ["model=codellama34b"],
                                       ["hardware=deepspeed_zero3_offload"], ["hardware=multinode"],
                                       ["hardware=deepspeed_zero2_cpu", "sweep=lora_grid"]])
def test_shipped_configs_pass_the_checks(overrides):
    check_config(compose_cfg(overrides))


def test_user_errors_are_caught_before_torch_is_imported(tmp_path):
    """A bad Spider path or a bad range needs no torch: it fails in about a second (before: ~15 s)."""
    probe = ("import runpy, sys\n"
             "sys.argv = ['train.py', *sys.argv[1:]]\n"
             "try:\n    runpy.run_path('train.py', run_name='__main__')\n"
             "except SystemExit as e:\n    print('exit', e.code)\n"
             "print('torch imported:', 'torch' in sys.modules, 'lightning' in sys.modules)\n")
    for overrides, needle in ((["dataset=spider", f"dataset.root={tmp_path}/nope"], "Spider directory not found"),
                              (["peft.r=0"], "peft.r=0 must be >= 1"),
                              (["model.recommended.lr=abc"], "optim.lr:")):
        proc = subprocess.run([sys.executable, "-c", probe, *overrides, "logger=none", "hardware=cpu", f"hydra.run.dir={tmp_path}/r"],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                              env={**ENV, "TEXT2SQL_CACHE": str(tmp_path / "cache")})
        assert "torch imported: False False" in proc.stdout, proc.stdout + proc.stderr
        assert needle in proc.stdout + proc.stderr and "Traceback" not in proc.stderr


class CharTokenizer:
    """One token per character: the tokenizer interface prompt.py documents, without training a BPE."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [3 + (ord(c) % 200) for c in text]}


@pytest.mark.slow  # imports Lightning and tokenises a generated sample (~15 s on 2 shared cores)
def test_source_budget_that_cannot_hold_the_question_is_an_error(tmp_path):
    from text2sql.data.datamodule import TextToSQLDataModule
    from text2sql.data.datasets import sample

    dataset = sample(str(tmp_path / "data"), seed=0, n_train=40, n_dev=8)
    ok = TextToSQLDataModule(dataset, CharTokenizer(), max_source_length=4096, max_target_length=512)
    ok.setup("fit")
    check_source_budget(ok.stats, 4096)
    tight = TextToSQLDataModule(dataset, CharTokenizer(), max_source_length=64, max_target_length=512)
    tight.setup("fit")
    with pytest.raises(ConfigError, match=r"^dataset.max_source_length=64 cannot hold the question of \d+ of 40"):
        check_source_budget(tight.stats, 64)
