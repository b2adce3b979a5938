"""Load a causal LM and its tokenizer through `from_pretrained`, for CodeLlama and for the tiny model alike.

The tiny model (`model=tiny`) is a Llama built from a config with random weights and a BPE tokenizer trained
on the dataset's own text. It is saved once into a cache dir and then loaded by exactly the same
`from_pretrained` call a real checkpoint goes through, so CPU runs exercise the real loading path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}


def _fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def build_tiny_model(out_dir: Path, arch: dict, texts: Iterable[str], vocab_size: int, seed: int,
                     merge_across_words: bool = True) -> Path:
    """Train a BPE tokenizer on `texts`, build a random-init Llama of `arch`, save both (atomically).

    With `merge_across_words`, BPE merges may span spaces, so the instruction and schema text repeated in
    every record compress to a handful of tokens: ~20 tokens per sample record instead of ~180, which is
    what lets a CPU epoch take seconds. Real checkpoints bring their own tokenizer; this only shapes the toy.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        bpe = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=not merge_across_words)
        bpe.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIAL_TOKENS.values()),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        bpe.train_from_iterator(texts, trainer=trainer)
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, **SPECIAL_TOKENS)
        tokenizer.save_pretrained(tmp)

        config = LlamaConfig(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **arch,
        )
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        model.save_pretrained(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    n_params = sum(p.numel() for p in model.parameters())
    log.info("built tiny Llama (%s params, vocab %d) at %s", f"{n_params:,}", len(tokenizer), out_dir)
    return out_dir


def resolve_model_path(model_cfg: DictConfig, corpus: Callable[[], Iterable[str]] | None = None) -> str:
    """Where `from_pretrained` should load from; builds the tiny model on first use.

    `corpus` yields the dataset text the tiny tokenizer is trained on; it is only called when building.
    """
    build = model_cfg.get("build")
    if not build:
        return str(model_cfg.path)
    arch = OmegaConf.to_container(model_cfg.architecture, resolve=True)
    merge = bool(build.get("merge_across_words", True))
    key = _fingerprint({"arch": arch, "vocab": build.vocab_size, "seed": build.seed, "data": build.data_key,
                        "merge": merge})
    out_dir = Path(build.cache_dir) / f"{model_cfg.name}-{key}"
    if not (out_dir / "config.json").is_file():
        if corpus is None:
            raise ValueError(f"tiny model not built yet at {out_dir} and no dataset text given to build it")
        build_tiny_model(out_dir, arch, corpus(), build.vocab_size, build.seed, merge)
    return str(out_dir)


def load_tokenizer(model_cfg: DictConfig, path: str):
    """Tokenizer with a pad token and the padding side generation needs (left)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **dict(model_cfg.get("tokenizer_kwargs") or {}))
    except OSError as err:
        raise FileNotFoundError(
            f"could not load a tokenizer from '{path}' ({str(err).splitlines()[0]}); "
            "set model.path=<local dir or hub id>"
        ) from None
    if tokenizer.pad_token is None:
        # Llama tokenizers have no pad token; unk is the DB-GPT-Hub choice and never appears in targets.
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_model(model_cfg: DictConfig, path: str, tokenizer=None):
    """The base causal LM in the configured dtype (quantisation is added by the peft presets)."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, model_cfg.get("dtype") or "float32")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **dict(model_cfg.get("model_kwargs") or {}))
    except OSError as err:
        raise FileNotFoundError(
            f"could not load model weights from '{path}' ({str(err).splitlines()[0]}); "
            "set model.path=<local dir or hub id>"
        ) from None
    if tokenizer is not None and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model
