"""`hardware=auto`: pick the hardware preset from what this machine (and its launcher) has.

`choose(facts)` is a pure function of injected facts (CUDA device count, bf16 support, the environment), so
every branch is testable on a CPU box; `gather_facts()` reads the real ones and `resolve_hardware(cfg)` swaps
the `hardware: auto` node for the chosen preset, composed by Hydra exactly as `hardware=<preset>` would be:

- under torchrun (`TORCHELASTIC_RUN_ID`) or SLURM's srun (`SLURM_NTASKS`, as Lightning detects them), the
  launcher started the processes: devices per node and nodes come from its environment (Lightning would stop on
  a mismatch), then GPUs -> `deepspeed_zero2` (one process: `gpu`), no CUDA -> `cpu` (DDP over gloo);
- otherwise no CUDA -> `cpu`, one GPU -> `gpu`, several -> `deepspeed_zero2` over all of them;
- GPU precision is bf16-mixed where the card supports bf16, else 16-mixed.

An explicit `hardware=<preset>` never reaches this module. `hardware.<key>=...` given along with `auto` is
applied on top of the choice.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from omegaconf import DictConfig, open_dict

from text2sql.config.paths import conf_dir

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Facts:
    """What the choice depends on; injected in tests."""

    cuda_count: int = 0
    bf16: bool = False
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Choice:
    preset: str
    devices: int
    num_nodes: int
    precision: str | None  # None: the preset's own
    reason: str

    def overrides(self) -> list[str]:
        out = [f"hardware={self.preset}", f"hardware.devices={self.devices}", f"hardware.num_nodes={self.num_nodes}"]
        return out + ([f"hardware.precision={self.precision}"] if self.precision else [])


def gather_facts(env: Mapping[str, str] | None = None) -> Facts:
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    bf16 = bool(count and torch.cuda.is_bf16_supported())
    return Facts(cuda_count=count, bf16=bf16, env=dict(os.environ if env is None else env))


def _int(env: Mapping[str, str], *keys: str) -> int | None:
    for key in keys:
        value = str(env.get(key, "")).strip()
        if value:
            try:  # SLURM_NTASKS_PER_NODE may read "8(x2)" or "8,8": the first count is this node's
                return int(value.split("(")[0].split(",")[0])
            except ValueError:
                continue
    return None


def launcher(env: Mapping[str, str]) -> tuple[str, int, int] | None:
    """(name, processes per node, nodes) when torchrun or srun started this process, else None."""
    if env.get("TORCHELASTIC_RUN_ID") is not None:
        local = _int(env, "LOCAL_WORLD_SIZE") or 1
        world = _int(env, "WORLD_SIZE") or local
        return "torchrun", local, max(1, world // local)
    if "SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        nodes = _int(env, "SLURM_NNODES", "SLURM_JOB_NUM_NODES") or 1
        per_node = _int(env, "SLURM_NTASKS_PER_NODE") or max(1, (_int(env, "SLURM_NTASKS") or 1) // nodes)
        return "SLURM", per_node, nodes
    return None


def choose(facts: Facts) -> Choice:
    """The preset for these facts, with the reason in words (logged)."""
    gpus = facts.cuda_count
    precision = ("bf16-mixed" if facts.bf16 else "16-mixed") if gpus else None
    prec_why = "" if not gpus else (", bf16 supported" if facts.bf16 else ", no bf16 on this GPU: 16-mixed")
    started = launcher(facts.env)
    if started is not None:
        name, per_node, nodes = started
        where = f"{name} started {per_node} process(es) per node on {nodes} node(s)"
        if not gpus:
            return Choice("cpu", per_node, nodes, None, f"{where}, no CUDA: CPU processes (DDP over gloo when > 1)")
        if per_node * nodes == 1:
            return Choice("gpu", 1, 1, precision, f"{where}, one process with {gpus} CUDA GPU(s) visible{prec_why}")
        return Choice("deepspeed_zero2", per_node, nodes, precision,
                      f"{where}, {gpus} CUDA GPU(s) visible: DeepSpeed ZeRO-2 over all ranks{prec_why}")
    if not gpus:
        return Choice("cpu", 1, 1, None, "no CUDA GPU visible: one CPU process")
    if gpus == 1:
        return Choice("gpu", 1, 1, precision, f"one CUDA GPU{prec_why}")
    return Choice("deepspeed_zero2", gpus, 1, precision,
                  f"{gpus} CUDA GPUs: DeepSpeed ZeRO-2 over all of them{prec_why}")


def _hardware_overrides(task_overrides: Sequence[str]) -> list[str]:
    """The user's `hardware.<key>=value` overrides (applied after the choice); `hardware=` itself is dropped."""
    return [o for o in task_overrides if o.lstrip("+~").startswith("hardware.")]


def compose_preset(overrides: Sequence[str], config_name: str = "train") -> DictConfig:
    """The `hardware` node Hydra composes for `overrides` (works inside a running app and outside one)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name=config_name, overrides=list(overrides)).hardware
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides)).hardware


def _task_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:  # no running Hydra app (tests composing by hand)
        return []


def resolve_hardware(cfg: DictConfig, facts: Facts | None = None,
                     task_overrides: Sequence[str] | None = None) -> Choice | None:
    """Replace `cfg.hardware` (in place) when it is `auto`; return the choice (None when a preset was named)."""
    if cfg.hardware.get("name") != "auto":
        return None
    choice = choose(facts or gather_facts())
    user = _hardware_overrides(_task_overrides() if task_overrides is None else task_overrides)
    node = compose_preset([*choice.overrides(), *user])
    with open_dict(cfg):
        cfg.hardware = node
    extra = f"; then {' '.join(user)}" if user else ""
    log.info("hardware=auto chose %s (devices=%s, num_nodes=%s, precision=%s): %s%s", choice.preset,
             cfg.hardware.devices, cfg.hardware.num_nodes, cfg.hardware.precision, choice.reason, extra)
    return choice
