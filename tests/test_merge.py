"""`text2sql merge`: base + LoRA adapter -> a plain HF model dir whose logits equal the PEFT model's."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from text2sql.cli import main as cli
from tiny import tiny_setup


@pytest.fixture(scope="module")
def trained_adapter(tmp_path_factory):
    """The tiny base and an adapter with non-zero LoRA weights (and a saved head) like a trained one."""
    root = tmp_path_factory.mktemp("merge")
    _, _, base, tokenizer = tiny_setup(root, n_train=40, n_dev=4)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                        modules_to_save=["lm_head"], init_lora_weights=False)  # random A and B: a non-zero update
    torch.manual_seed(0)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        peft_model.base_model.model.lm_head.modules_to_save["default"].weight.mul_(1.5)
    adapter = root / "run" / "adapter"
    peft_model.save_pretrained(adapter)
    tokenizer.save_pretrained(adapter)
    return base, adapter, tokenizer


def logits(model, tokenizer, text="SELECT name FROM singer WHERE age > 3"):
    ids = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


def test_merged_model_matches_the_peft_model(trained_adapter, tmp_path, capsys):
    base, adapter, tokenizer = trained_adapter
    out = tmp_path / "merged"
    assert cli(["merge", "--base", base, "--adapter", str(adapter), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left behind

    merged = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, no PEFT
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert (out / "tokenizer_config.json").is_file()
    assert AutoTokenizer.from_pretrained(out)("SELECT 1")["input_ids"] == tokenizer("SELECT 1")["input_ids"]
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
    plain_base = AutoModelForCausalLM.from_pretrained(base).eval()
    want, got = logits(peft_model, tokenizer), logits(merged.eval(), tokenizer)
    assert not torch.allclose(want, logits(plain_base, tokenizer), atol=1e-3)  # the adapter does something
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert json.loads((out / "merge_info.json").read_text())["dtype"] == "float32"


def test_run_dir_default_base_dtype_and_overwrite(trained_adapter, tmp_path):
    base, adapter, _ = trained_adapter
    out = tmp_path / "merged"
    # a run dir (holding adapter/), the base from adapter_config.json, bf16 weights
    assert cli(["merge", "--adapter", str(adapter.parent), "--out", str(out), "--dtype", "bfloat16"]) == 0
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16
    assert cli(["merge", "--adapter", str(adapter), "--out", str(out)]) == 2  # exists: refuses
    assert cli(["merge", "--adapter", str(adapter), "--out", str(out), "--overwrite", "--dtype", "float32"]) == 0
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.float32


def test_user_errors_are_one_line(trained_adapter, tmp_path, capsys):
    base, adapter, _ = trained_adapter
    assert cli(["merge", "--adapter", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert cli(["merge", "--adapter", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert cli(["merge", "--base", str(tmp_path / "nobase"), "--adapter", str(adapter),
                "--out", str(tmp_path / "o")]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 3 and all(line.startswith("text2sql merge: error:") for line in lines), lines
    assert "--base" in lines[2] and not (tmp_path / "o").exists()


def test_adapter_with_a_relative_base_merges_from_another_dir(trained_adapter, tmp_path, monkeypatch):
    """Adapters saved before paths were absolute name their base relative to the run's start dir (issue 13.7)."""
    import shutil
    from pathlib import Path

    base, adapter, _ = trained_adapter
    start, run = Path(base).parent, tmp_path / "run"
    shutil.copytree(adapter, run / "adapter")
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = Path(base).name  # relative to `start`
    (run / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text("{}\n")
    (run / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  runtime:\n    cwd: {start}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert cli(["merge", "--adapter", str(run), "--out", str(tmp_path / "merged")]) == 0
    assert json.loads((tmp_path / "merged" / "merge_info.json").read_text())["base"] == base
