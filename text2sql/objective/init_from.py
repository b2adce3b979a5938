"""`init_from=RUN`: start training from a finished run's weights (its best epoch's checkpoint, or the checkpoint
named), with its model, dataset and PEFT settings unless this command line overrides them; and the one-line checks
of `objective=grpo`. Used by train.py before anything heavy loads."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from text2sql.errors import ConfigError, UserError
from text2sql.job.run_dir import CHECKPOINTS, RunDir, best_row

log = logging.getLogger(__name__)

TAKEN = ("model", "dataset", "peft")  # what a run started from another takes from it (the weights need them)
RECORDED = {"model": "model.path", "dataset": "dataset.root"}  # absolute paths the earlier run resolved


def _key(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")


def command_line_overrides() -> list[str]:
    """This job's overrides as typed (Hydra's record); [] outside a Hydra job."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return []


def start_checkpoint(init_from: str) -> tuple[RunDir, Path]:
    """The run `init_from` names and the checkpoint to start from: the one named, else the run's best epoch's
    (metrics.json), else its last. One line when `init_from` is not a run or has no checkpoint."""
    path = Path(init_from).expanduser()
    run = RunDir.find(path) if path.exists() else None
    if run is None:
        raise UserError(f"init_from={init_from} is not a training run dir (no .hydra/config.yaml in it or above); "
                        "give a train.py output dir such as outputs/<date>/<time>")
    if path.suffix == ".ckpt" or (path.is_dir() and path.parent.name == CHECKPOINTS):
        return run, path
    metrics = run.read_metrics() or {}
    best = (metrics.get("best") or {}).get("epoch")
    if best is None:
        metric = next(iter(k for r in metrics.get("history") or [] for k in r if k.startswith("val/execution")), None)
        best = (best_row(metrics.get("history") or [], metric) or {}).get("epoch") if metric else None
    candidates = sorted(run.checkpoints.glob(f"epoch{best:02d}*.ckpt")) if best is not None else []
    candidates.append(run.last_checkpoint)
    found = next((c for c in candidates if c.exists()), None)
    if found is None:
        raise UserError(f"init_from={init_from}: the run has no checkpoint under {run.checkpoints}")
    return run, found


def prepare_objective(cfg: DictConfig, overrides: list[str] | None = None) -> Path | None:
    """Check the objective's settings and apply `init_from` to `cfg` (in place); the checkpoint to start from."""
    overrides = command_line_overrides() if overrides is None else overrides
    start = None
    if cfg.get("init_from"):
        run, start = start_checkpoint(str(cfg.init_from))
        _take_settings(cfg, run, {_key(o) for o in overrides})
        log.info("init_from: %s (model %s, dataset %s)", start, cfg.model.name, cfg.dataset.get("name", "?"))
    objective = cfg.get("objective") or {}
    if "num_generations" in objective:  # objective=grpo
        if objective.num_generations < 2:
            raise ConfigError(f"objective.num_generations={objective.num_generations} must be >= 2: GRPO compares "
                              "the samples of a prompt with each other")
        if cfg.peft.get("method") == "ptuning":
            raise ConfigError("objective=grpo samples completions, which peft=ptuning models cannot (their prefixes "
                              "apply in greedy decoding only); use peft=lora")
        accumulate, clip = cfg.trainer.get("accumulate_grad_batches", 1), cfg.trainer.get("gradient_clip_val")
        if accumulate != 1 or clip:
            raise ConfigError(f"objective=grpo steps the optimizer itself (num_iterations per batch of rollouts): "
                              f"trainer.accumulate_grad_batches={accumulate} and trainer.gradient_clip_val={clip} "
                              "must be 1 and null (objective.max_grad_norm clips); data.batch_size sets the prompts")
        if objective.num_iterations < 1:
            raise ConfigError(f"objective.num_iterations={objective.num_iterations} must be >= 1")
    return start


def _take_settings(cfg: DictConfig, run: RunDir, given: set[str]) -> None:
    saved = OmegaConf.load(run.hydra_dir / "config.yaml")
    recorded = run.resolved_paths()
    for group in TAKEN:
        if group in given:  # a preset picked on this command line wins, but the weights must fit the model
            if group == "model" and cfg.model.get("name") != saved.model.get("name"):
                raise ConfigError(f"init_from={cfg.init_from} trained model {saved.model.get('name')}, but "
                                  f"model={cfg.model.get('name')} was asked; drop model= to start from that run")
            continue
        mine = {k: OmegaConf.select(cfg, k) for k in given if k.startswith(group + ".")}
        with open_dict(cfg):
            cfg[group] = saved[group]
        if recorded.get(RECORDED.get(group, "")) and RECORDED[group] not in mine:
            OmegaConf.update(cfg, RECORDED[group], recorded[RECORDED[group]], force_add=True)
        for key, value in mine.items():  # key overrides given now win over the run's values
            OmegaConf.update(cfg, key, value, force_add=True)


def save_config(cfg: DictConfig, run_dir: Path) -> None:
    """Rewrite this run's `.hydra/config.yaml` with the settings `init_from` took, so `text2sql predict --run`,
    `merge` and a resume read the model and adapter this run really trains."""
    target = RunDir(run_dir).hydra_dir / "config.yaml"
    if not target.parent.is_dir():
        return
    tmp = target.with_name(f"config.yaml.{os.getpid()}.tmp")
    OmegaConf.save(cfg, tmp)
    tmp.replace(target)


def load_start_weights(model, checkpoint: Path) -> None:
    """Load the trainable weights of a train.py checkpoint into `model` (a PEFT or full model); one line when they
    do not fit it."""
    import torch

    if checkpoint.is_dir():
        raise UserError(f"init_from={checkpoint}: DeepSpeed checkpoint directories are not supported as a start; "
                        "give the run's adapter-only .ckpt (train it with hardware=gpu or cpu)")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False).get("state_dict") or {}
    weights = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    missing = [n for n in trainable if n not in weights]
    if missing:
        raise UserError(f"init_from checkpoint {checkpoint} lacks {len(missing)} trainable weights of this model "
                        f"(e.g. {missing[0]}); was it trained with other model/peft settings?")
    try:
        model.load_state_dict(weights, strict=False)
    except RuntimeError as err:
        first = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err)[:200])
        raise UserError(f"init_from checkpoint {checkpoint} does not fit this model: {first}") from None
