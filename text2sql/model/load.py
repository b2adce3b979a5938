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
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from text2sql.data.cache import atomic_dir, build_lock
from text2sql.model.chat_tokenizers import STYLES, train_chat_tokenizer

log = logging.getLogger(__name__)

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}


def _fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


# GPT-2's word pattern with single digits (as Llama's tokenizer splits numbers), plus one alternative that keeps DB-GPT-Hub's whole instruction block (the fixed
# preamble and the schema text, everything before "###Input:") as a single pre-token.
_WORDS = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_PREAMBLE = r"""I want you to act as a SQL terminal[\s\S]*?(?=\n###Input:|\n*\z)"""


def architecture_config(arch: dict):
    """A transformers config for a preset's `architecture` block; `model_type` (default llama) picks the family."""
    from transformers import AutoConfig

    arch = dict(arch)
    return AutoConfig.for_model(str(arch.pop("model_type", None) or "llama"), **arch)


def build_tiny_model(out_dir: Path, arch: dict, texts: Iterable[str], vocab_size: int, seed: int,
                     merge_preamble: bool = True, tokenizer_kind: str = "bpe") -> Path:
    """Train a BPE tokenizer on `texts`, build a random-init model of `arch` (its `model_type`: Llama by default,
    Qwen2 for tiny_qwen), save both (atomically). `tokenizer_kind`: bpe (plain), qwen / llama3 (a chat model's
    specials and chat template, text2sql.model.chat_tokenizers), llama (CodeLlama-style, `build_tiny_codellama`).

    Questions and SQL are split into words as GPT-2 does, and numbers into digits as Llama does, so the
    model sees `minimum`, `Japan` or `FROM` as the same tokens wherever they occur and copies numbers digit
    by digit. With `merge_preamble`, the instruction block repeated in
    every record (fixed preamble + the database's schema text) is one pre-token that BPE compresses to a
    handful of tokens: ~40 tokens per sample record instead of ~180, which is what makes a CPU epoch take
    seconds. Real checkpoints bring their own tokenizer; this only shapes the CPU toy.
    """
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    if tokenizer_kind == "llama":
        return build_tiny_codellama(out_dir, arch, texts, vocab_size, seed)
    if merge_preamble:
        pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(f"{_PREAMBLE}|{_WORDS}"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
        pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    with atomic_dir(out_dir) as tmp:
        if tokenizer_kind in STYLES:  # a chat model's specials and chat template (text2sql.model.chat_tokenizers)
            tokenizer = train_chat_tokenizer(tokenizer_kind, texts, vocab_size, pre_tokenizer)
        else:
            bpe = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
            bpe.pre_tokenizer = pre_tokenizer
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

        config = architecture_config({
            **arch, "vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id})
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
        model.save_pretrained(tmp)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("built tiny %s (%s params, vocab %d) at %s", type(model).__name__, f"{n_params:,}", len(tokenizer),
             out_dir)
    return out_dir


def build_tiny_codellama(out_dir: Path, arch: dict, texts: Iterable[str], vocab_size: int, seed: int) -> Path:
    """`model=tiny_codellama`: a random-init Llama of `arch` with a CodeLlama-style tokenizer learned from `texts`
    (`text2sql.model.llama_tokenizer`: `▁` word starts, byte fallback, single digits, `<unk>`/`<s>`/`</s>` and
    no pad token), so CPU runs go through what a real CodeLlama run does: unk as pad, full-length prompts."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from text2sql.model.llama_tokenizer import train_llama_tokenizer

    with atomic_dir(out_dir) as tmp:
        tokenizer = train_llama_tokenizer(texts, vocab_size)
        tokenizer.save_pretrained(tmp)
        config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=None, **arch)
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        model.save_pretrained(tmp)
    log.info("built tiny CodeLlama-style Llama (%s params, vocab %d) at %s",
             f"{sum(p.numel() for p in model.parameters()):,}", len(tokenizer), out_dir)
    return out_dir


def resolve_model_path(model_cfg: DictConfig, corpus: Callable[[], Iterable[str]] | None = None) -> str:
    """Where `from_pretrained` should load from; builds the tiny model on first use.

    `corpus` yields the dataset text the tiny tokenizer is trained on; it is only called when building.
    """
    build = model_cfg.get("build")
    if not build or model_cfg.get("path"):  # a given path wins over building (model=tiny model.path=<dir>)
        return check_model_path(model_cfg.get("path"), model_cfg.get("name"))
    arch = OmegaConf.to_container(model_cfg.architecture, resolve=True)
    merge = bool(build.get("merge_preamble", True))
    kind = str(build.get("tokenizer") or "bpe")
    facts = {"arch": arch, "vocab": build.vocab_size, "seed": build.seed, "data": build.data_key, "merge": merge}
    key = _fingerprint(facts if kind == "bpe" else {**facts, "tokenizer": kind})
    # readable: which model on which data (e.g. tiny-llama-sample-v2-seed0-3000-200-<hash>); the hash decides
    data = re.sub(r"[^A-Za-z0-9.]+", "-", str(build.data_key or "")).strip("-")[:60]
    out_dir = Path(build.cache_dir).expanduser().resolve() / "-".join(p for p in (model_cfg.name, data, key) if p)
    if not (out_dir / "config.json").is_file():
        with build_lock(out_dir):  # two runs on a cold cache: one builds, the other waits and loads it
            if not (out_dir / "config.json").is_file():
                if corpus is None:
                    raise ValueError(f"tiny model not built yet at {out_dir} and no dataset text given to build it")
                build_tiny_model(out_dir, arch, corpus(), build.vocab_size, build.seed, merge, tokenizer_kind=kind)
    return str(out_dir)


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# Offline mode, the cache dir and the endpoint as huggingface_hub (and so transformers) sees them: its constants,
# read from HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, HF_HUB_CACHE / HF_HOME and HF_ENDPOINT when it is imported.


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _hub_cache() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                "pytorch_model.bin")


def cached_snapshot(repo_id: str, cache_dir: str | None = None) -> str | None:
    """The local snapshot dir of `repo_id` when the HF cache holds its config.json and weights, else None."""
    from huggingface_hub import try_to_load_from_cache

    cache_dir = cache_dir or _hub_cache()
    config = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir)
    if not isinstance(config, str):
        return None
    if any(isinstance(try_to_load_from_cache(repo_id, f, cache_dir=cache_dir), str) for f in WEIGHT_FILES):
        return str(Path(config).parent)
    return None


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def hub_reachable(endpoint: str | None = None, timeout: float = 3.0) -> tuple[bool, str]:
    """(reachable, why not): a TCP connect to the hub (or the https proxy) bounded by `timeout`, DNS included.

    transformers would otherwise spend about a minute in retries before saying the hub is out of reach.
    """
    import socket
    import threading
    from urllib.parse import urlsplit

    url = urlsplit(endpoint or hub_endpoint())
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") if url.scheme == "https" else None
    target = urlsplit(proxy if "://" in (proxy or "") else f"http://{proxy}") if proxy else url
    host, port = target.hostname, target.port or (443 if target.scheme == "https" else 80)
    if not host:
        return False, f"no host in {url.geturl()!r}"

    outcome: list[BaseException | None] = []

    def connect():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except BaseException as err:  # noqa: BLE001 - reported below
            outcome.append(err)

    worker = threading.Thread(target=connect, daemon=True)  # daemon: a hung DNS lookup never blocks exit
    worker.start()
    worker.join(timeout + 0.5)
    if not outcome:
        return False, f"no answer from {host}:{port} within {timeout:g} s"
    err = outcome[0]
    if err is None:
        return True, ""
    return False, f"{host}:{port}: {getattr(err, 'strerror', None) or err}"


def check_model_path(path, name=None, hint: str | None = None) -> str:
    """`model.path` as `from_pretrained` takes it, or a one-line FileNotFoundError saying where we looked.

    A local dir must hold a `config.json`. A hub id (`owner/name`) is looked up in the Hugging Face cache
    first. Offline (`HF_HUB_OFFLINE=1` / `TRANSFORMERS_OFFLINE=1`) it must be there; online, a hub that does not
    answer a short connect probe means the cached snapshot dir is used, or one line when nothing is cached.
    Checked before any weights load, so a wrong path or a dead network costs seconds, not a minute of retries.
    """
    how = hint or "set model.path=<local dir with config.json> or a hub id, e.g. codellama/CodeLlama-13b-Instruct-hf"
    if path is None or not str(path).strip():
        raise FileNotFoundError(f"model {name or '?'} has no model.path; {how}")
    path = str(path)
    local = Path(path).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise FileNotFoundError(f"model weights not found: '{local}' has no config.json; {how}")
        return str(local.resolve())  # absolute: adapters record it as their base, usable from any directory
    looks_local = path.startswith(("/", ".", "~")) or os.sep in path.replace("/", "", 1) or not _HUB_ID.match(path)
    if looks_local:
        raise FileNotFoundError(f"model weights not found: no directory '{local}'; {how}")
    snapshot = cached_snapshot(path)
    if _offline():
        if snapshot is None:
            raise FileNotFoundError(
                f"model '{path}' is not in the Hugging Face cache ({_hub_cache()}) and HF_HUB_OFFLINE=1 forbids "
                f"downloading; fetch it where there is network (`hf download {path}`) or {how}")
        return path
    reachable, why = hub_reachable()
    if reachable:
        return path
    if snapshot is None:
        raise FileNotFoundError(
            f"model '{path}' is not in the Hugging Face cache ({_hub_cache()}) and the hub {hub_endpoint()} is "
            f"unreachable ({why}); fetch it where there is network (`hf download {path}`) or {how}")
    log.warning("hub %s unreachable (%s): loading %s from the cache, %s", hub_endpoint(), why, path, snapshot)
    return snapshot


def check_architecture(model_cfg: DictConfig, hf_config) -> list[str]:
    """Warn where the YAML's `architecture` disagrees with the loaded checkpoint's config (the checkpoint wins)."""
    arch = model_cfg.get("architecture")
    if not arch:
        return []
    mismatches = []
    for key, want in OmegaConf.to_container(arch, resolve=True).items():
        have = getattr(hf_config, key, None)
        if key == "rope_theta" and have is None:  # transformers 5 keeps it in rope_parameters
            have = (getattr(hf_config, "rope_parameters", None) or {}).get("rope_theta")
        if have is None or want is None:
            continue
        same = abs(float(have) - float(want)) < 1e-6 * max(1.0, abs(float(want))) \
            if isinstance(want, float) else have == want
        if not same:
            mismatches.append(f"{key}: yaml {want} != checkpoint {have}")
    if mismatches:
        log.warning("model %s: the checkpoint's config wins over conf/model (%s)", model_cfg.get("name"),
                    "; ".join(mismatches))
    return mismatches


def quantization_config(peft_cfg: DictConfig | None):
    """A transformers `BitsAndBytesConfig` for `peft.quantization` (qlora4 / qlora8), else None."""
    quant = (peft_cfg or {}).get("quantization") if peft_cfg is not None else None
    if not quant:
        return None
    import torch
    from transformers import BitsAndBytesConfig

    bits = int(quant.get("bits", 4))
    if bits == 4:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=str(quant.get("quant_type", "nf4")),
            bnb_4bit_use_double_quant=bool(quant.get("double_quant", True)),
            bnb_4bit_compute_dtype=getattr(torch, str(quant.get("compute_dtype") or "bfloat16")),
            # bfloat16 storage lets DeepSpeed ZeRO-3 / FSDP shard the packed 4-bit weights like any float tensor
            bnb_4bit_quant_storage=getattr(torch, str(quant.get("quant_storage") or "uint8")),
        )
    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=float(quant.get("int8_threshold", 6.0)))
    raise ValueError(f"peft.quantization.bits must be 4 or 8, got {bits}")


def disable_cpu_weight_repacking(model) -> int:
    """Keep bitsandbytes 4-bit layers trainable on CPU after an inference pass.

    On CPUs with AVX512-BF16, bitsandbytes 0.50's `Linear4bit.forward` repacks its weight into a CPU
    inference layout the first time it runs in eval mode under `no_grad` (a validation or generation pass);
    that layout has no autograd path, so LoRA gradients are silently None afterwards and the loss stops
    moving. Turning the repacking off on every 4-bit layer keeps training and inference on one layout.
    Returns how many layers were changed.
    """
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    n = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


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


def load_model(model_cfg: DictConfig, path: str, tokenizer=None, peft_cfg: DictConfig | None = None):
    """The base causal LM in `model.dtype`, quantised by bitsandbytes when `peft.quantization` asks for it.

    4-/8-bit weights are quantised while loading (`quantization_config`), placed on this process's GPU
    (`LOCAL_RANK`) when there is one, else on the CPU. The checkpoint's own config wins over the YAML's
    `architecture`; a mismatch is logged as a warning.
    """
    import torch
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, model_cfg.get("dtype") or "float32")
    kwargs = dict(model_cfg.get("model_kwargs") or {})
    quant = quantization_config(peft_cfg)
    if quant is not None:
        if peft_cfg.get("method") == "full":
            raise ValueError("peft.method=full cannot train quantised weights; use peft=lora, qlora4 or qlora8")
        kwargs["quantization_config"] = quant
        if torch.cuda.is_available():
            kwargs.setdefault("device_map", {"": int(os.environ.get("LOCAL_RANK", 0))})
        else:
            kwargs.setdefault("device_map", {"": "cpu"})
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
    except OSError as err:
        raise FileNotFoundError(
            f"could not load model weights from '{path}' ({str(err).splitlines()[0]}); "
            "set model.path=<local dir or hub id>"
        ) from None
    if quant is not None:
        disable_cpu_weight_repacking(model)
    check_architecture(model_cfg, model.config)
    if tokenizer is not None and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model
