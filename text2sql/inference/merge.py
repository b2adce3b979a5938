"""`text2sql merge --adapter DIR --out OUT [--base PATH_OR_ID] [--dtype ...]`: fold a LoRA adapter into its base.

The result is a plain Hugging Face model dir (config, safetensors weights, tokenizer) that
`AutoModelForCausalLM.from_pretrained` loads without PEFT — what serving stacks (vLLM, TGI) want.
The base is loaded unquantised even for a QLoRA adapter: merging into 4-bit weights would round the update
away, so the adapter is added to the `--dtype` weights (default: the base checkpoint's own dtype).
The output appears atomically: written to a temp dir beside OUT, then renamed.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from text2sql.atomic import atomic_path
from text2sql.config.paths import check_writable
from text2sql.errors import UserError
from text2sql.job.run_dir import RunDir

log = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "bfloat16", "float16")


def add_arguments(parser) -> None:
    parser.add_argument("--adapter", type=Path, required=True,
                        help="a PEFT adapter dir (adapter_config.json), or a run dir holding adapter/")
    parser.add_argument("--out", type=Path, required=True, help="where to write the merged model dir")
    parser.add_argument("--base", default=None,
                        help="base model: local dir or hub id (default: the adapter's base_model_name_or_path)")
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="dtype of the merged weights (auto: the base checkpoint's dtype, else float32)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


# PEFT adapter types that are not weight deltas: one line each on why `merge` cannot fold them into the base
NOT_MERGEABLE = {
    "PREFIX_TUNING": "a peft=ptuning adapter is trained key/value prefixes (virtual tokens), not a weight delta",
    "P_TUNING": "a P-tuning adapter is a trained prompt encoder (virtual tokens), not a weight delta",
    "PROMPT_TUNING": "a prompt-tuning adapter is trained virtual-token embeddings, not a weight delta",
}


def adapter_dir(path: Path) -> Path:
    """The adapter dir itself, or `<run dir>/adapter`; a one-line error otherwise (also for a run that saved a
    whole model, peft=freeze or full, and for adapters that are not weight deltas, peft=ptuning)."""
    path = Path(path).expanduser()
    for candidate in (path, path / "adapter"):
        if (candidate / "adapter_config.json").is_file():
            kind = json.loads((candidate / "adapter_config.json").read_text()).get("peft_type")
            if kind in NOT_MERGEABLE:
                raise UserError(f"cannot merge {candidate}: {NOT_MERGEABLE[kind]}; load it as it is with "
                                "PeftModel.from_pretrained (text2sql predict does)")
            return candidate
    if not path.exists():
        raise FileNotFoundError(f"adapter dir not found: {path}")
    for candidate in (path, path / "model"):
        if (candidate / "config.json").is_file() and path.name != "adapter":
            raise UserError(f"nothing to merge: {candidate} is a whole model (peft=freeze or full saves no adapter); "
                            "load it with AutoModelForCausalLM.from_pretrained")
    raise UserError(f"{path} holds no adapter_config.json (not a PEFT adapter dir, nor a run dir with adapter/)")


def _dtype(name: str, base: str):
    import torch

    if name != "auto":
        return getattr(torch, name)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(base)
    found = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(found, str):
        found = getattr(torch, found, None)
    return found if isinstance(found, torch.dtype) else torch.float32


def merge(base: str, adapter: Path, out: Path, dtype: str = "auto", overwrite: bool = False) -> Path:
    """Load base (unquantised) + adapter, `merge_and_unload`, save model + tokenizer to `out` atomically."""
    from text2sql.job.console import quiet_libraries, quiet_model_bars

    quiet_libraries()  # before peft imports bitsandbytes
    quiet_model_bars(local_model=False)  # the load/save bars stay on a terminal only
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(out).expanduser().resolve()
    empty_dir = out.is_dir() and not any(out.iterdir())
    if out.exists() and not empty_dir and not overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to replace it")
    check_writable(out)  # before the model loads
    torch_dtype = _dtype(dtype, base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype)
    model = PeftModel.from_pretrained(model, str(adapter))
    merged = model.merge_and_unload()
    tok_src = adapter if (adapter / "tokenizer_config.json").is_file() else base
    tokenizer = AutoTokenizer.from_pretrained(tok_src)

    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:  # an existing `out` is replaced whole, and only once the new one is complete
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "merge_info.json").write_text(json.dumps(
            {"base": str(base), "adapter": str(adapter), "dtype": str(torch_dtype).removeprefix("torch.")},
            indent=2) + "\n", encoding="utf-8")
    return out


def _from_run_start(base: str, adapter: Path) -> str:
    """A relative base path (adapters saved before paths were absolute) read from the dir its run started in."""
    if os.path.isabs(base) or Path(base).is_dir():
        return base
    found = RunDir.find(adapter)
    start = found.start_dir() if found is not None else None
    candidate = start / base if start is not None else None
    return str(candidate) if candidate is not None and candidate.is_dir() else base


def run(args) -> int:
    from text2sql.model.load import check_model_path

    adapter = adapter_dir(args.adapter)
    base = args.base
    if base is None:
        base = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base:
            raise UserError(f"{adapter}/adapter_config.json names no base model; pass --base PATH_OR_ID")
        base = _from_run_start(base, adapter)
    base = check_model_path(base, "--base", hint="pass --base <local dir with config.json> or a hub id")
    out = merge(base, adapter, args.out, dtype=args.dtype, overwrite=args.overwrite)
    print(f"merged {adapter} into {base} -> {out}")
    return 0
