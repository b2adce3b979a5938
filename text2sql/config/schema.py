"""Typed schemas for the config keys that are ours, and the range checks types cannot express.

Hydra merges every YAML into these dataclasses (ConfigStore entries `schema/*`, named in the defaults lists:
`schema/train` first in `conf/train.yaml`; `schema/lora`, `schema/qlora`, `schema/sample`, `schema/spider` in the
group files), so `optim.lr=abc` or `trainer.max_epochs=abc` fails while Hydra composes, and so does a key a YAML
file misspells. Interpolations such as `${model.recommended.lr}` are kept and converted to the field's type
when they resolve. `check_config` then checks ranges (lr > 0, r >= 1, ...) before torch is imported.

A new key under optim/data/eval/trainer (conf/train.yaml) or in a typed group file needs its field here;
`+trainer.KEY=V` on the command line adds any Lightning Trainer argument without one, `+callbacks.NAME...` a
callback. Any other key the config does not have is refused, with or without `+` (`check_added_keys`), and the
error names the closest known key (`optim.lrr=1e-3`: "did you mean optim.lr").
Registered on `import text2sql`, so every compose (train.py, `text2sql predict`, tests) sees the schemas.
"""

from __future__ import annotations

import difflib
import errno
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any, Dict, List, Optional, get_type_hints

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from text2sql.errors import ConfigError
from text2sql.config.decoding import FALLBACKS, STRATEGIES, Decoding

# --- schemas -----------------------------------------------------------------------------------------------
# Fields without a default are MISSING until a YAML sets them; `Any` where Lightning/PEFT accept several types.


@dataclass
class OptimSchema:
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    scheduler: str = "cosine"
    warmup_ratio: float = 0.0
    warmup_steps: Optional[int] = None


@dataclass
class DataSchema:
    _target_: str = "text2sql.data.datamodule.TextToSQLDataModule"
    template: str = "vanilla"
    system_prompt: Optional[str] = None
    max_source_length: int = 2048
    max_target_length: int = 512
    batch_size: int = 8
    eval_batch_size: int = 16
    num_workers: int = 0
    group_by_length: bool = True
    packing: bool = False
    prompts: bool = False  # objective=grpo: training batches hold prompts only
    train_limit: Optional[int] = None
    val_loss_limit: Optional[int] = None
    seed: int = 0


@dataclass
class ProgressSchema:
    every_s: Optional[float] = 30.0


# `eval.decoding`: the fields, types and defaults of `Decoding` (config/decoding.py, their one owner), as the mutable
# dataclass Hydra merges overrides into (a frozen one would make the node read-only). Ranges: RANGES below.
DecodingSchema = make_dataclass("DecodingSchema", [(f.name, get_type_hints(Decoding)[f.name], field(default=f.default))
                                                   for f in fields(Decoding)])
DecodingSchema.__module__ = __name__  # make_dataclass's own `module=` needs Python 3.12


@dataclass
class EvalSchema:
    before_training: bool = False
    every_n_epochs: int = 1
    limit: Optional[int] = None
    seed: int = 0
    batch_size: int = 32
    max_new_tokens: int = 128
    timeout: float = 30.0
    workers: Optional[int] = None
    exact_match: bool = True
    test_suite: Optional[str] = None
    decoding: DecodingSchema = field(default_factory=DecodingSchema)


@dataclass
class TrainerSchema:
    """The Trainer keys conf/train.yaml sets; any other Trainer argument can be added with `+trainer.KEY=V`."""

    _target_: str = "lightning.pytorch.Trainer"
    max_epochs: int = 1
    accumulate_grad_batches: int = 1
    gradient_clip_val: Optional[float] = None
    log_every_n_steps: int = 50
    num_sanity_val_steps: int = 0
    check_val_every_n_epoch: Optional[int] = 1
    limit_train_batches: Any = None  # int: batches, float: fraction (Lightning reads the type)
    limit_val_batches: Any = None
    deterministic: Any = False  # bool or "warn"
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    precision: Any = "32-true"
    strategy: Any = "auto"


@dataclass
class DatasetSchema:
    _target_: str = "text2sql.data.datasets.spider"
    name: str = "spider"
    root: Optional[str] = None
    fingerprint: str = "spider"
    max_source_length: int = 2048
    max_target_length: int = 512
    prompt: str = "zero_shot"  # text2sql.data.forms.PROMPT_FORMS


@dataclass
class MultiTurnDatasetSchema(DatasetSchema):
    layout: str = "sparc"  # text2sql.data.multiturn.LAYOUTS
    history: str = "earlier"  # earlier | dbgpt_hub (text2sql.data.prompt.add_history)


@dataclass
class SampleDatasetSchema(DatasetSchema):
    seed: int = 0
    n_train: int = 3000
    n_dev: int = 200


@dataclass
class BirdDatasetSchema(DatasetSchema):
    evidence: bool = True


@dataclass
class LoraSchema:
    method: str = "lora"
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: Any = None  # a list, "all-linear" or "q_proj,v_proj"
    modules_to_save: Any = None
    use_rslora: bool = False


@dataclass
class PtuningSchema:
    method: str = "ptuning"
    num_virtual_tokens: int = 32
    prefix_projection: bool = False
    encoder_hidden_size: Optional[int] = None


@dataclass
class FreezeSchema:
    method: str = "freeze"
    trainable_layers: int = 2
    trainable_modules: Any = None


@dataclass
class QLoraSchema(LoraSchema):
    gradient_checkpointing: bool = True
    quantization: Dict[str, Any] = field(default_factory=dict)


def register() -> None:
    """Store the schemas where the defaults lists of conf/ name them."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(group="schema", name="train", node={"optim": OptimSchema, "data": DataSchema, "eval": EvalSchema,
                                                 "progress": ProgressSchema,
                                                 "trainer": TrainerSchema})
    cs.store(group="schema", name="spider", node=DatasetSchema)
    cs.store(group="schema", name="sample", node=SampleDatasetSchema)
    cs.store(group="schema", name="bird", node=BirdDatasetSchema)
    cs.store(group="schema", name="multiturn", node=MultiTurnDatasetSchema)
    cs.store(group="schema", name="lora", node=LoraSchema)
    cs.store(group="schema", name="qlora", node=QLoraSchema)
    cs.store(group="schema", name="ptuning", node=PtuningSchema)
    cs.store(group="schema", name="freeze", node=FreezeSchema)


# --- range checks ------------------------------------------------------------------------------------------


def _at_least(low, *, allow_none: bool = False, inclusive: bool = True, also: tuple = ()):
    def check(value) -> str | None:
        if value is None and allow_none:
            return None
        if value in also:
            return None
        ok = value is not None and (value >= low if inclusive else value > low)
        return None if ok else f"must be {'>=' if inclusive else '>'} {low}" + (" or null" if allow_none else "")
    return check


def _fraction(upper_open: bool):
    def check(value) -> str | None:
        ok = 0 <= value < 1 if upper_open else 0 <= value <= 1
        return None if ok else f"must be in [0, 1{')' if upper_open else ']'}"
    return check


def _one_of(*choices: str):
    return lambda value: None if value in choices else f"is not one of {', '.join(choices)}"


RANGES: dict[str, Any] = {  # dataset budgets first: the key users set (data.* interpolates them)
    "dataset.max_source_length": _at_least(16),
    "dataset.max_target_length": _at_least(2),
    "optim.lr": _at_least(0, inclusive=False),
    "optim.weight_decay": _at_least(0),
    "optim.warmup_ratio": _fraction(upper_open=False),
    "optim.warmup_steps": _at_least(0, allow_none=True),
    "data.max_source_length": _at_least(16),
    "data.max_target_length": _at_least(2),
    "data.batch_size": _at_least(1),
    "data.eval_batch_size": _at_least(1),
    "data.num_workers": _at_least(0),
    "data.train_limit": _at_least(1, allow_none=True),
    "data.val_loss_limit": _at_least(1, allow_none=True),
    "eval.every_n_epochs": _at_least(1),
    "eval.limit": _at_least(1, allow_none=True),
    "eval.batch_size": _at_least(1),
    "eval.max_new_tokens": _at_least(1),
    "eval.timeout": _at_least(0, inclusive=False),
    "eval.workers": _at_least(1, allow_none=True),
    "progress.every_s": _at_least(0, inclusive=False, allow_none=True),
    "eval.decoding.strategy": _one_of(*STRATEGIES),
    "eval.decoding.num_beams": _at_least(1),
    "eval.decoding.num_samples": _at_least(1),
    "eval.decoding.temperature": _at_least(0, inclusive=False),
    "eval.decoding.top_p": lambda v: None if 0 < v <= 1 else "must be in (0, 1]",
    "eval.decoding.fallback": _one_of(*FALLBACKS),
    "trainer.max_epochs": _at_least(1, also=(-1,)),
    "trainer.accumulate_grad_batches": _at_least(1),
    "trainer.log_every_n_steps": _at_least(1),
    "peft.r": _at_least(1),
    "peft.alpha": _at_least(0, inclusive=False),
    "peft.dropout": _fraction(upper_open=True),
    "peft.num_virtual_tokens": _at_least(1),
    "peft.trainable_layers": _at_least(1),
}


def _value(cfg: DictConfig, key: str):
    """The resolved value at `key` (None when absent); an interpolation of the wrong type is a ConfigError."""
    try:
        return OmegaConf.select(cfg, key, throw_on_missing=True)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{key}: {one_line(err)}") from None


def check_config(cfg: DictConfig) -> None:
    """Resolve the typed keys and check their ranges; the first problem is one ConfigError line naming the key.

    Needs no torch: train.py calls it first, before the machine set-up and the heavy imports, so a bad value fails in
    about a second. Under Hydra, a `+KEY=V` override that adds a key nothing reads is refused too (`check_added_keys`).
    """
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        check_added_keys(HydraConfig.get().overrides.task)
    for section in ("optim", "data", "eval", "progress", "trainer", "dataset", "peft"):
        node = cfg.get(section)
        if isinstance(node, DictConfig):
            for key in node:
                if not str(key).startswith("_"):
                    _value(cfg, f"{section}.{key}")  # interpolated values get their field's type here
    betas = _value(cfg, "optim.betas")
    if betas is not None and (len(betas) != 2 or not all(0 <= b < 1 for b in betas)):
        raise ConfigError(f"optim.betas={list(betas)} must be two numbers in [0, 1)")
    for key, check in RANGES.items():
        if OmegaConf.select(cfg, key, default="__absent__") == "__absent__":
            continue
        value = _value(cfg, key)
        problem = check(value)
        if problem:
            raise ConfigError(f"{key}={value} {problem}")
    check_openmp_keys(cfg)


WAIT_POLICIES = ("PASSIVE", "ACTIVE")  # OMP_WAIT_POLICY's values (text2sql/machine/threads.py sets it)
AUTO_SPINS = "auto"  # hardware.spin_count: chosen at start from what the machine is doing (machine/threads.py)


def check_openmp_keys(cfg: DictConfig) -> None:
    """`hardware.wait_policy` and `hardware.spin_count`, which the machine set-up puts in the environment before torch
    loads OpenMP: one ConfigError line naming the key and what it takes."""
    check_openmp(_value(cfg, "hardware.wait_policy"), _value(cfg, "hardware.spin_count"))


def check_openmp(policy, spins) -> None:
    """The one check of the two OpenMP keys: the config check's and the verbs' (which apply a preset's keys)."""
    if policy is not None and str(policy).upper() not in WAIT_POLICIES:
        raise ConfigError(f"hardware.wait_policy={policy}: choose PASSIVE, ACTIVE or null (libgomp's default)")
    if spins is not None and spins != AUTO_SPINS and (isinstance(spins, bool) or not isinstance(spins, int)
                                                      or spins < 0):
        raise ConfigError(f"hardware.spin_count={spins}: a whole number of spins >= 0, auto (chosen at start from "
                          "the busy CPUs) or null (libgomp's default)")


# `+trainer.KEY=V`: a Trainer argument; `+callbacks.NAME`; `+objective.reward.KEY=V`: an argument of a reward
# `_target_` of the user's own (docs/grpo.md)
EXTENSIBLE = ("trainer.", "callbacks.", "hydra.", "objective.reward.")


def known_keys() -> set[str]:
    """Every key some YAML under conf/ (train.yaml, each group's files under its group name) or a schema gives."""
    from text2sql.config.paths import conf_dir

    def flat(node, prefix: str) -> Iterable[str]:
        for key, value in (node.items() if isinstance(node, dict) else ()):
            if key not in ("defaults", "hydra"):
                yield f"{prefix}{key}"
                yield from flat(value, f"{prefix}{key}.")

    root = conf_dir()
    keys = set(flat(OmegaConf.to_container(OmegaConf.load(root / "train.yaml")), ""))
    for path in root.glob("*/*.yaml"):
        if "@package" not in path.read_text(encoding="utf-8").split("\n", 1)[0]:  # _global_ files: no new keys
            keys |= set(flat(OmegaConf.to_container(OmegaConf.load(path)), f"{path.parent.name}."))
    for section, schemas in (("optim", [OptimSchema]), ("data", [DataSchema]), ("eval", [EvalSchema]),
                             ("eval.decoding", [DecodingSchema]), ("progress", [ProgressSchema]),
                             ("trainer", [TrainerSchema]),
                             ("dataset", [MultiTurnDatasetSchema, SampleDatasetSchema, BirdDatasetSchema]),
                             ("peft", [QLoraSchema, PtuningSchema, FreezeSchema])):
        keys |= {f"{section}.{f.name}" for schema in schemas for f in fields(schema)}
    return keys


def unknown_key(key: str, value: str | None = None) -> str:
    """One line for a key no config has: the closest known key (same section first) and, under `trainer.`, how
    to pass a Lightning Trainer argument the config does not set."""
    if key in known_keys():  # `+peft.r=4` with peft=full: Hydra let it add a key another preset has
        return f"{key}: not a key of the chosen config (other presets have it; this one would never read it)"
    section, _, leaf = key.rpartition(".")
    by_leaf: dict[str, list[str]] = {}
    for known in sorted(known_keys()):
        by_leaf.setdefault(known.rpartition(".")[2], []).append(known)
    siblings = {known.rpartition(".")[2]: known for known in sorted(known_keys())
                if known.rpartition(".")[0] == section}
    close = difflib.get_close_matches(leaf, list(siblings), n=1, cutoff=0.6)
    if close:
        meant = siblings[close[0]]
    else:  # another section's key of that name (`lrr=1` -> optim.lr)
        close = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.75)
        meant = min(by_leaf[close[0]], key=len) if close else None
    hint = f"; did you mean {meant}?" if meant else ""
    if key.startswith("trainer."):
        hint += f" (a Lightning Trainer argument the config does not set: +{key}={value if value else 'V'})"
    return f"{key}: no such key{hint}"


def check_added_keys(overrides: Iterable[str]) -> None:
    """`+KEY=V` adds KEY (Hydra refuses a key the config has), so outside `EXTENSIBLE` it is a key nothing reads:
    a ConfigError naming the closest known key. `++KEY=V` likewise when no config knows KEY. `+GROUP=OPTION`
    (`+launcher=slurm`) picks a config group and passes."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from text2sql.config.paths import conf_dir

    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.key_or_group
        if not (override.is_add() or override.is_force_add()) or key.startswith(EXTENSIBLE):
            continue
        if (conf_dir() / key).is_dir() or (override.is_force_add() and key in known_keys()):
            continue
        raise ConfigError(unknown_key(key, override.value()))


def check_source_budget(stats: dict, max_source_length: int, needed: int | None = None) -> None:
    """A budget that cannot hold a question even with the whole schema cut is an error, not a silent mid-cut.

    `stats` is the datamodule's per-split statistics (`truncated_hard` counts prompts cut inside the question).
    """
    for split, st in stats.items():
        hard = st.get("truncated_hard", 0)
        if hard:
            need = f"; the longest needs {needed} tokens" if needed else ""
            raise ConfigError(
                f"dataset.max_source_length={max_source_length} cannot hold the question of {hard} of "
                f"{st.get('count', '?')} {split} examples even with the schema cut away{need}: raise it")


# --- one-line compose errors -------------------------------------------------------------------------------


def one_line(err: BaseException) -> str:
    """OmegaConf's message without its `full_key:` / `object_type=` detail lines, as one line."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    keep = [ln for ln in lines if not ln.startswith(("full_key:", "object_type=", "reference_type=", "key:"))]
    return " ".join(keep or lines or [type(err).__name__])


def describe_compose_error(ex: BaseException) -> str | None:
    """One line for a Hydra compose error (naming the key and what it expected) or an output dir that
    cannot be written; None for other errors."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    if isinstance(ex, (PermissionError, NotADirectoryError, FileExistsError, IsADirectoryError, FileNotFoundError)) or (
            isinstance(ex, OSError) and ex.errno in (errno.EROFS, errno.ENOSPC)):
        return f"cannot write {ex.filename}: {ex.strerror} (check hydra.run.dir / hydra.sweep.dir)"
    if isinstance(ex, MissingConfigException):  # Hydra's list of valid choices, without the search path
        return " ".join(ln.strip() for ln in str(ex).split("Config search path")[0].splitlines() if ln.strip())
    if not isinstance(ex, (ConfigCompositionException, OverrideParseException)):
        return None
    cause = ex.__cause__
    head = one_line(ex)
    missing = re.search(r"Could not override '([^']+)'", head)
    if missing:  # Hydra's advice (`+KEY=V`) would add a key nothing reads: name the key meant instead
        value = re.search(r"use \+\S+?=(\S+)$", head)
        return unknown_key(missing[1], value[1] if value else None)
    if isinstance(cause, OmegaConfBaseException):
        key = getattr(cause, "full_key", None)
        detail = one_line(cause)
        return f"{key}: {detail} ({head})" if key else f"{head}: {detail}"
    key = re.search(r"^\s*full_key: (\S+)", str(ex), re.M)  # a YAML file's bad key: the detail is in the text
    return f"{key[1]}: {head}" if key else head


def compact_hydra_errors() -> None:
    """Print Hydra's compose errors (wrong type, unknown key, bad override) as one `error:` line.

    Hydra prints them over several lines plus a HYDRA_FULL_ERROR hint; everything else (and HYDRA_FULL_ERROR=1)
    keeps Hydra's own reporting. Patches `hydra._internal.utils.run_and_report`, which `hydra.main` calls: Hydra
    has no public hook for how compose errors are printed. Checked against hydra-core 1.3.2-1.3.8; pyproject
    caps hydra-core below 1.4.
    """
    import hydra._internal.utils as hydra_utils

    original = hydra_utils.run_and_report
    if getattr(original, "_text2sql", False):
        return

    def run_and_report(func):
        import os

        try:
            return func()
        except Exception as ex:  # noqa: BLE001 - compose errors become one line, others go to Hydra
            line = None if os.environ.get("HYDRA_FULL_ERROR") == "1" else describe_compose_error(ex)
            if line is None:
                def again():
                    raise ex
                return original(again)
            sys.stderr.write(f"error: {line}\n")
            sys.exit(1)

    run_and_report._text2sql = True  # type: ignore[attr-defined]
    hydra_utils.run_and_report = run_and_report
