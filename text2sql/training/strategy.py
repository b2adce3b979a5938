"""Lightning strategies for the `hardware` presets: DeepSpeed ZeRO on GPU and CPU (the GPU check before a run:
text2sql/machine/setup.py).

`conf/hardware/*.yaml` hold the DeepSpeed config as YAML under `strategy.config`; `deepspeed_strategy` (the
`_target_` Hydra instantiates) adds the ZeRO stage and offload blocks from the flat `hardware.zero_stage` /
`hardware.offload_optimizer` / `hardware.offload_parameters` keys, so those keys are the single source that the
dry-run sizing and the engine both read. Batch sizes are never written twice: the config's
`train_micro_batch_size_per_gpu` interpolates `data.batch_size`, and Lightning fills `gradient_accumulation_steps`
and `gradient_clipping` from `trainer.accumulate_grad_batches` / `trainer.gradient_clip_val`.

Lightning refuses DeepSpeed without CUDA. DeepSpeed itself runs ZeRO-2/3 on CPU (its CPU accelerator, gloo), so
`CPUDeepSpeedStrategy` lifts that one check: CI trains the tiny model under the real DeepSpeed engine.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf


def deepspeed_config(config: dict | DictConfig | None, zero_stage: int, offload_optimizer: bool = False,
                     offload_parameters: bool = False) -> dict[str, Any]:
    """The DeepSpeed config dict: the YAML's `config` plus the ZeRO stage/offload blocks from the flat keys."""
    cfg = OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else dict(config or {})
    zero = dict(cfg.get("zero_optimization") or {})
    for key in ("stage", "offload_optimizer", "offload_param"):
        if key in zero:
            raise ValueError(f"set hardware.zero_stage / hardware.offload_* instead of zero_optimization.{key} "
                             "in the DeepSpeed config")
    zero["stage"] = int(zero_stage)
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if offload_parameters:
        if int(zero_stage) != 3:
            raise ValueError(f"hardware.offload_parameters needs ZeRO stage 3 (hardware.zero_stage={zero_stage})")
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    cfg["zero_optimization"] = zero
    if "gradient_accumulation_steps" in cfg:
        raise ValueError("gradient_accumulation_steps comes from trainer.accumulate_grad_batches; "
                         "remove it from the DeepSpeed config")
    cfg.setdefault("zero_allow_untested_optimizer", True)  # our AdamW comes from configure_optimizers
    return cfg


def deepspeed_strategy(config: dict | DictConfig | None = None, zero_stage: int = 2, offload_optimizer: bool = False,
                       offload_parameters: bool = False, accelerator: str = "gpu",
                       exclude_frozen_parameters: bool = True, **kwargs):
    """Hydra `_target_` of `hardware.strategy` in the DeepSpeed presets.

    `exclude_frozen_parameters`: DeepSpeed checkpoints hold only the trainable weights (the adapter for PEFT runs;
    everything for peft=full, where nothing is frozen) plus the optimizer/scheduler state.
    """
    ds_config = deepspeed_config(config, zero_stage, offload_optimizer, offload_parameters)
    cls = _cpu_cls() if accelerator == "cpu" else _deepspeed_cls()
    return cls(config=ds_config, exclude_frozen_parameters=exclude_frozen_parameters, **kwargs)


def _deepspeed_cls():
    from lightning.pytorch.strategies import DeepSpeedStrategy

    return DeepSpeedStrategy


def _make_cpu_strategy_class():
    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

    class CPUDeepSpeedStrategy(DeepSpeedStrategy):
        """DeepSpeedStrategy on CPU processes: DeepSpeed's CPU accelerator, gloo, Lightning's CPU accelerator.

        Lightning's only objection is an explicit CUDA check in `setup_environment`; the engine, ZeRO partitioning,
        checkpointing and the optimizer step all work on CPU. For CI and laptops, not for speed.
        """

        def __init__(self, *args, **kwargs):
            from text2sql.machine.setup import set_deepspeed_accelerator

            set_deepspeed_accelerator("cpu")  # before DeepSpeed first picks its accelerator
            kwargs.setdefault("process_group_backend", "gloo")
            super().__init__(*args, **kwargs)

        def setup_environment(self) -> None:
            DDPStrategy.setup_environment(self)  # skips DeepSpeedStrategy's "only supported on CUDA GPUs"

        def setup_distributed(self) -> None:
            # as DeepSpeedStrategy's, minus the CUDA device-index check (CPU devices carry no index)
            from lightning.fabric.utilities.seed import reset_seed

            reset_seed()
            self.set_world_ranks()
            self._init_deepspeed_distributed()

        # Private API of DeepSpeedStrategy: the one place Lightning calls `deepspeed.initialize`, and it passes a
        # CUDA device index. Checked against lightning 2.6.6 and deepspeed 0.19.8; pyproject caps lightning below
        # 2.7 and deepspeed below 0.20. Only this CPU variant overrides it; GPU presets use Lightning's own class.
        def _setup_model_and_optimizer(self, model, optimizer, lr_scheduler=None):
            # as Lightning's, but DeepSpeed's device rank is the local rank (a CPU device has no index)
            import argparse

            import deepspeed

            engine, ds_optimizer, _, _ = deepspeed.initialize(
                args=argparse.Namespace(device_rank=self.local_rank), config=self.config, model=model,
                model_parameters=filter(lambda p: p.requires_grad, model.parameters()), optimizer=optimizer,
                lr_scheduler=lr_scheduler, dist_init_required=False)
            return engine, ds_optimizer

    return CPUDeepSpeedStrategy


def _cpu_cls():
    if "CPUDeepSpeedStrategy" not in globals():
        globals()["CPUDeepSpeedStrategy"] = _make_cpu_strategy_class()
    return globals()["CPUDeepSpeedStrategy"]


def __getattr__(name: str):  # lazy: importing this module must not import lightning/deepspeed
    if name == "CPUDeepSpeedStrategy":
        return _cpu_cls()
    raise AttributeError(name)
