"""A training run's machine set-up, in the order it must happen.

`set_up_machine(cfg)` is the first thing a run does after the config check (`check_config`, which checks the
`hardware.*` values read here):

1. OpenMP waiting (threads.py): libgomp reads `OMP_WAIT_POLICY` / `GOMP_SPINCOUNT` once, when torch loads it, so
   they are set before anything imports torch.
2. `hardware=auto` (auto.py): the preset this machine and its launcher call for; imports torch to count the GPUs.
3. A GPU preset where torch sees no (or too few) CUDA GPUs: one HardwareError line before any data is read or
   generated (torch is imported for GPU presets only).
4. DeepSpeed's accelerator for CPU runs (`DS_ACCELERATOR=cpu`, before DeepSpeed is imported: it would probe for a
   GPU and warn that it found none).

and then, once the dataset is read (so that a bad dataset path under an explicit CPU preset fails before torch
loads, in about a second), right before the heavy imports:

5. `set_torch_threads(cfg.hardware)` (threads.py): at most the CPUs this process may use, shared by the node's
   processes; returns the line train.py logs.

A dry run sizes a run for hardware it need not have: steps 1 and 2 only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from omegaconf import DictConfig

from text2sql.errors import HardwareError
from text2sql.machine.auto import resolve_hardware
from text2sql.machine.threads import set_wait_policy

GPU_ACCELERATORS = ("gpu", "cuda")
DS_ACCELERATOR = "DS_ACCELERATOR"


def set_up_machine(cfg: DictConfig, dry_run: bool = False) -> None:
    """Steps 1-4 above on `cfg` (its `hardware` node is replaced when it is `auto`)."""
    set_wait_policy(cfg.hardware)  # before torch loads OpenMP, which reads it once: shared cores stay usable
    resolve_hardware(cfg)  # hardware=auto -> the preset this machine (and its launcher) calls for; logs why
    if dry_run:
        return
    check_gpus(cfg.hardware)  # GPU presets without a GPU: one line before any data loads
    set_deepspeed_accelerator(cfg.hardware.get("accelerator"))


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_gpus(hw: Mapping) -> None:
    """Raise a one-line HardwareError when `hw` needs GPUs this machine lacks (imports torch only then)."""
    name = hw.get("name", "?")
    accelerator = str(hw.get("accelerator", "cpu"))
    if accelerator not in GPU_ACCELERATORS and not (accelerator == "auto" and hw.get("requires_cuda")):
        return
    have = _cuda_count()
    if have == 0:
        import torch

        build = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a CPU-only build")
        raise HardwareError(
            f"hardware={name} needs a CUDA GPU but none is available here ({build}); "
            "use hardware=cpu, or hardware=deepspeed_zero2_cpu to run DeepSpeed ZeRO on CPU")
    devices = hw.get("devices", 1)
    if isinstance(devices, int) and devices > have:
        raise HardwareError(f"hardware={name} asks for hardware.devices={devices} GPUs per node but this machine "
                            f"has {have}; set hardware.devices={have} (or -1 for all)")


def set_deepspeed_accelerator(accelerator: str | None) -> None:
    """A CPU run uses DeepSpeed's CPU accelerator (unless `DS_ACCELERATOR` is set): before DeepSpeed is imported."""
    if accelerator == "cpu":
        os.environ.setdefault(DS_ACCELERATOR, "cpu")
