"""peft=freeze / ptuning / dora and peft.use_rslora on the Qwen2 stand-in: what trains, what is exported and loads
back, what `merge` does with it, and (slow) that each trains, resumes exactly and predicts through train.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from conftest import REPO_ROOT
from text2sql.cli import main as cli
from text2sql.data.datasets import corpus
from text2sql.data.prompt import encode_record
from text2sql.model.load import load_model, load_tokenizer, resolve_model_path
from text2sql.training.module import Text2SQLModule
from text2sql.model.peft import apply_peft, count_parameters

CONF = REPO_ROOT / "conf"


def compose_cfg(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=[*overrides, "logger=none"])


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    cache = tmp_path_factory.mktemp("peft_qwen")
    cfg = compose_cfg(["model=tiny_qwen", f"paths.cache_dir={cache}", "dataset.n_train=60", "dataset.n_dev=8"])
    dataset = instantiate(cfg.dataset)
    path = resolve_model_path(cfg.model, corpus=lambda: corpus(dataset, "train"))
    tokenizer = load_tokenizer(cfg.model, path)
    record = dataset.records("train")[0]
    ex = encode_record(record, tokenizer, "chat", 2048, 512)
    batch = {"input_ids": torch.tensor([ex.input_ids]), "attention_mask": torch.ones(1, len(ex.input_ids), dtype=torch.long),
             "labels": torch.tensor([ex.labels])}
    return cfg, path, tokenizer, batch


def wrapped(qwen, peft, *extra):
    cfg, path, tokenizer, _ = qwen
    peft_cfg = compose_cfg(["model=tiny_qwen", f"peft={peft}", *extra]).peft
    torch.manual_seed(0)
    return apply_peft(load_model(cfg.model, path, tokenizer), peft_cfg)


def one_step(model, batch):
    """A loss and backward through the training module's own loss path; the names of parameters that got a grad."""
    module = Text2SQLModule(model, compose_cfg([]).optim)
    loss_sum, n = module.target_loss(batch)
    (loss_sum / n).backward()
    return float((loss_sum / n).detach()), {k for k, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def logits(model, batch):
    with torch.no_grad():
        return model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_freeze_trains_the_last_layers_only_and_saves_a_whole_model(qwen, tmp_path, capsys):
    _, _, _, batch = qwen
    model = wrapped(qwen, "freeze", "peft.trainable_layers=1")
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(k.startswith("model.layers.2.") for k in trainable)  # 3 layers: the last one
    assert {"model.layers.2.self_attn.q_proj.bias", "model.layers.2.mlp.down_proj.weight"} <= trainable
    _, grads = one_step(model, batch)
    assert grads and grads <= trainable
    model.save_pretrained(tmp_path / "model")
    from transformers import AutoModelForCausalLM

    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(tmp_path / "model"), batch), logits(model, batch))
    only_mlp = wrapped(qwen, "freeze", "peft.trainable_layers=2", "peft.trainable_modules=[mlp]")
    names = {k for k, p in only_mlp.named_parameters() if p.requires_grad}
    assert names and all(".mlp." in k and k.split(".")[2] in ("1", "2") for k in names)
    from text2sql.errors import ConfigError

    with pytest.raises(ConfigError, match="peft.trainable_layers=9 must be in 1..3"):
        wrapped(qwen, "freeze", "peft.trainable_layers=9")
    capsys.readouterr()
    assert cli(["merge", "--adapter", str(tmp_path), "--out", str(tmp_path / "merged")]) != 0  # a run dir with model/
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing to merge" in err[0] and "from_pretrained" in err[0]


def test_ptuning_trains_prefixes_through_the_peft_forward_and_cannot_be_merged(qwen, tmp_path, capsys):
    cfg, path, tokenizer, batch = qwen
    model = wrapped(qwen, "ptuning", "peft.num_virtual_tokens=4")
    trainable, _ = count_parameters(model)
    kv = 2 * 192 // 6  # 2 key/value heads of 32
    assert trainable == 4 * 3 * 2 * kv  # a key and a value prefix per layer
    loss, grads = one_step(model, batch)
    assert grads == {"prompt_encoder.default.embedding.weight"}  # the prefixes get gradients: they reach the loss
    model.save_pretrained(tmp_path / "adapter")
    from peft import PeftModel

    torch.manual_seed(0)
    again = PeftModel.from_pretrained(load_model(cfg.model, path, tokenizer), tmp_path / "adapter")
    torch.testing.assert_close(logits(again, batch), logits(model, batch))
    # generation applies the prefixes (PEFT's own generate drops them under transformers 5): greedy by hand with
    # the full forward, batched with left padding, equals one by one, and differs from the base model's output
    from text2sql.eval.generate import generate_sql

    with torch.no_grad():
        again.prompt_encoder.default.embedding.weight.mul_(50)  # make the prefixes decide the output
    prompts = [batch["input_ids"][0, :n].tolist() for n in (30, 45)]
    by_hand = []
    for p in prompts:
        cur = torch.tensor([p])
        for _ in range(6):
            with torch.no_grad():
                cur = torch.cat([cur, again(input_ids=cur).logits[:, -1].argmax(-1, keepdim=True)], 1)
        by_hand.append(cur[0, len(p):].tolist())
    got = generate_sql(again, tokenizer, prompts, batch_size=2, max_new_tokens=6)
    from text2sql.eval.generate import extract_sql

    assert got == [extract_sql(tokenizer.decode(t, skip_special_tokens=True)) for t in by_hand]
    base = generate_sql(load_model(cfg.model, path, tokenizer), tokenizer, prompts, batch_size=2, max_new_tokens=6)
    assert got != base
    from text2sql.errors import UserError
    from text2sql.eval.candidates import generate_candidates
    from text2sql.config.decoding import Decoding

    with pytest.raises(UserError, match="peft=ptuning"):  # beam/sample would silently drop the prefixes
        generate_candidates(again, tokenizer, prompts, "beam", Decoding(strategy="beam"), max_new_tokens=6)
    capsys.readouterr()
    assert cli(["merge", "--adapter", str(tmp_path / "adapter"), "--out", str(tmp_path / "merged")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot merge" in err[0] and "not a weight delta" in err[0]
    assert not (tmp_path / "merged").exists()


@pytest.mark.parametrize("peft,extra", [("dora", ()), ("lora", ("peft.use_rslora=true",))])
def test_dora_and_rslora_train_export_and_merge(qwen, tmp_path, peft, extra):
    cfg, path, tokenizer, batch = qwen
    model = wrapped(qwen, peft, *extra)
    config = model.peft_config["default"]
    assert config.use_dora == (peft == "dora") and config.use_rslora == bool(extra)
    if peft == "dora":
        assert any("lora_magnitude_vector" in k for k, p in model.named_parameters() if p.requires_grad)
    else:  # rsLoRA scales by alpha / sqrt(r)
        assert model.base_model.model.model.layers[0].self_attn.q_proj.scaling["default"] == pytest.approx(32 / 16 ** 0.5)
    _, grads = one_step(model, batch)
    assert grads
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5).step()  # a non-zero update
    model.save_pretrained(tmp_path / "adapter")
    want = logits(model, batch)
    assert cli(["merge", "--base", path, "--adapter", str(tmp_path / "adapter"), "--out", str(tmp_path / "merged")]) == 0
    from transformers import AutoModelForCausalLM

    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(tmp_path / "merged"), batch), want,
                               atol=1e-4, rtol=1e-4)


# a constant LR: the schedule of a 1-epoch run then equals the first epoch of a 2-epoch run
SMALL = ["model=tiny_qwen", "debug=smoke", "logger=none", "seed=3", "optim.scheduler=constant", "optim.warmup_ratio=0",
         "trainer.limit_train_batches=3", "data.batch_size=4", "data.train_limit=64", "dataset.n_train=64",
         "dataset.n_dev=8", "eval.limit=4", "eval.max_new_tokens=12"]
METHODS = {"freeze": "model", "ptuning": "adapter", "dora": "adapter"}  # method -> what its run exports


def _launch(root: Path, *args: str) -> subprocess.Popen:
    """`python train.py ARGS` started in the background (one torch thread), its output in a file under root."""
    env = {**os.environ, "TEXT2SQL_CACHE": str(root / "cache"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    log = root / f"train-{len(list(root.glob('train-*.log')))}.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=REPO_ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    proc.log = log
    return proc


def _wait(*procs: subprocess.Popen) -> None:
    for proc in procs:
        assert proc.wait(timeout=900) == 0, proc.log.read_text()[-3000:]


@pytest.fixture(scope="module")
def method_runs(tmp_path_factory) -> Path:
    """Every method through train.py, as a job of two `-m` sweeps started side by side: `whole` trains 2 epochs,
    `split` 1 epoch; then each split job is resumed to 2 epochs in its own dir with `ckpt_path=` (side by side too)."""
    root = tmp_path_factory.mktemp("peft_methods")
    methods = ",".join(METHODS)
    _wait(_launch(root, "-m", *SMALL, f"peft={methods}", "trainer.max_epochs=2", f"hydra.sweep.dir={root / 'whole'}"),
          _launch(root, "-m", *SMALL, f"peft={methods}", "trainer.max_epochs=1", f"hydra.sweep.dir={root / 'split'}"))
    _wait(*[_launch(root, f"ckpt_path={root / 'split' / str(job)}", "trainer.max_epochs=2")
            for job in range(len(METHODS))])
    return root


@pytest.mark.slow
@pytest.mark.parametrize("job,peft", list(enumerate(METHODS)))
def test_each_method_trains_resumes_exactly_and_predicts_through_train_py(method_runs, tmp_path, job, peft):
    whole, split = method_runs / "whole" / str(job), method_runs / "split" / str(job)
    for run in (whole, split):  # the sweeps' job of this method
        assert yaml.safe_load((run / ".hydra" / "config.yaml").read_text())["peft"]["method"] == peft
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (whole, split))
    assert [r["epoch"] for r in b["history"]] == [0, 1] and b["status"] == "ok"
    assert _untimed(b["history"]) == _untimed(a["history"])  # the resumed run is the uninterrupted one
    assert _untimed([b["final"]]) == _untimed([a["final"]])
    export = METHODS[peft]
    assert (whole / export / "config.json" if export == "model" else whole / export / "adapter_config.json").is_file()
    out = tmp_path / "pred.sql"
    assert cli(["predict", "--run", str(whole), "--out", str(out), "--limit", "3"]) == 0
    assert len(out.read_text().splitlines()) == 3


def _untimed(rows: list[dict]) -> list[dict]:
    """Metric rows without the wall-clock throughput (perf/*), which no two runs share."""
    return [{k: v for k, v in row.items() if not k.startswith("perf/")} for row in rows]
