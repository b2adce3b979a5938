"""Fine-tune a code LLM on text-to-SQL: `python train.py [model=...] [peft=...] [hardware=...] [key=value ...]`.

Reads top to bottom as the program: `main` (the command line) -> `job` (one composed config; a sweep runs one per
point) -> `train`: config check -> machine set-up -> data -> tokenizer/model -> PEFT -> Lightning module ->
trainer -> fit. `job` returns `val/execution_accuracy` (the config's `optimized_metric`) so Hydra sweepers can
optimise it.
"""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

log = logging.getLogger("text2sql.train")


def main() -> None:
    """The whole program: the command line, then Hydra composes conf/ with it and runs `job`."""
    from text2sql.config.schema import compact_hydra_errors
    from text2sql.job.ranks import rank_argv
    from text2sql.job.resume import continue_run_argv

    compact_hydra_errors()  # a wrong type or unknown key at compose time: one `error:` line naming the key
    sys.argv[1:] = continue_run_argv(sys.argv[1:])  # ckpt_path=RUN continues RUN in its own dir
    sys.argv = rank_argv(sys.argv)  # ranks > 0 (torchrun, or started by Lightning) join rank 0's job and run dir
    job()  # Hydra: the composed config, once (a sweep: once per point, each job in its own dir)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def job(cfg: DictConfig) -> float | None:
    """One run of `cfg`: a dry run sizes it; otherwise `train` inside `run_job`, which always leaves metrics.json
    (a failed sweep job is recorded and the sweep goes on) and returns the metric for sweepers."""
    from text2sql.errors import ConfigError
    from text2sql.machine.threads import set_wait_policy

    try:  # OpenMP reads its waiting variables once, when torch loads: before anything below imports torch
        set_wait_policy(cfg.hardware)  # (the run's record is a Lightning callback); the machine set-up finds them set
    except ConfigError:
        pass  # a bad hardware.* value: the config check inside run_job says so and records the failed run
    from text2sql.job.lifecycle import job_dir, run_job

    if cfg.dry_run:  # size the run from the YAML's architecture: no data, no weights, no download
        from text2sql.config.schema import check_config
        from text2sql.machine.setup import set_up_machine
        from text2sql.model.sizing import dry_run

        try:
            check_config(cfg)
            set_up_machine(cfg, dry_run=True)  # OpenMP waiting and hardware=auto: the preset that would run
        except ConfigError as err:
            raise SystemExit(f"error: {err}") from None
        dry_run(cfg, job_dir())
        return None
    return run_job(cfg, train)


def train(cfg: DictConfig, record) -> None:
    from text2sql.config.schema import check_config, check_source_budget
    from text2sql.job.console import quiet_after_imports, quiet_libraries, quiet_resume
    from text2sql.data.datasets import corpus
    from text2sql.machine.setup import set_up_machine
    from text2sql.machine.threads import set_torch_threads
    from text2sql.job.lifecycle import job_dir
    from text2sql.job.resume import RunFinished, check_not_finished, checkpoint_to_resume
    from text2sql.job.run_dir import RunDir
    from text2sql.objective.init_from import load_start_weights, prepare_objective, save_config

    start = prepare_objective(cfg)  # objective checks; init_from=RUN: its model/dataset/peft and checkpoint
    if start is not None:
        save_config(cfg, job_dir())  # predict / merge / resume read what this run really trains
    check_config(cfg)  # types and ranges (hardware.* too): a bad value fails in about a second, before torch loads
    set_up_machine(cfg)  # OpenMP waiting, hardware=auto, GPU check, DeepSpeed's accelerator: before any data
    ckpt_path = checkpoint_to_resume(cfg.ckpt_path, cfg.get("resume"), job_dir())
    if ckpt_path is not None:  # the same run goes on: its earlier epochs stay in metrics.json
        record.resume()
        try:
            check_not_finished(ckpt_path, cfg.trainer.max_epochs, cfg.trainer.get("max_steps", -1))
        except RunFinished as done:
            log.info("%s", done)
            return
    dataset = instantiate(cfg.dataset)  # a SpiderDataset (the sample is generated on first use); bad paths fail here

    quiet_libraries()  # before the heavy imports: bitsandbytes logs at import
    log.info("%s", set_torch_threads(cfg.hardware))  # the set-up's last step: at most the CPUs this process may use
    import lightning.pytorch as pl

    from text2sql.training.checkpoint import AtomicCheckpointIO
    from text2sql.model.load import load_model, load_tokenizer, resolve_model_path
    from text2sql.model.peft import apply_peft, count_parameters
    from text2sql.job.ranks import one_job
    from text2sql.job.lifecycle import flat_hparams
    from text2sql.tracking.logger import make_loggers, wandb_identity
    from text2sql.job.progress import TrainingProgress
    from text2sql.job.stop_callback import StopOnSignal
    from text2sql.job.record_callback import RecordEpochs

    quiet_after_imports(local_model=bool(cfg.model.get("build")))
    if ckpt_path is not None:
        quiet_resume()

    model_path = resolve_model_path(cfg.model, corpus=lambda: corpus(dataset, "train"))
    RunDir(job_dir()).record_resolved_paths({"paths.cache_dir": cfg.paths.cache_dir, "dataset.root": str(dataset.root),
                                      "model.path": model_path})  # predict/merge work from any directory
    tokenizer = load_tokenizer(cfg.model, model_path)
    datamodule = instantiate(cfg.data, dataset=dataset, tokenizer=tokenizer)
    datamodule.setup("fit")  # tokenise now: length/truncation statistics are logged with the config
    check_source_budget(datamodule.stats, cfg.data.max_source_length)  # no question cut in the middle

    pl.seed_everything(cfg.seed, workers=True)  # adapter init, dropout, data order
    model = apply_peft(load_model(cfg.model, model_path, tokenizer, peft_cfg=cfg.peft), cfg.peft)
    if start is not None:
        load_start_weights(model, start)
    trainable, total = count_parameters(model)
    log.info("model %s: %s trainable of %s parameters", cfg.model.name, f"{trainable:,}", f"{total:,}")
    module = instantiate(cfg.objective, _partial_=True)(model, cfg.optim)  # sft: Text2SQLModule; grpo: GRPOModule

    loggers = make_loggers(cfg, job_dir(), wandb_identity(cfg))  # W&B: the run dir's id, offline if unreachable
    callbacks = [instantiate(c, **({"record": record} if "record" in c else {})) for c in cfg.callbacks.values()
                 if loggers or "LearningRateMonitor" not in c._target_]  # LR monitor needs a logger; `record: null`
    progress = TrainingProgress(cfg.progress.every_s)  # plain lines when stdout is a file; per-epoch throughput
    record.throughput = progress.epoch_throughput  # the record closes each epoch's row (metrics.json) itself
    callbacks += [progress, StopOnSignal(RunDir(job_dir()).last_checkpoint),  # Ctrl-C / SIGTERM: checkpoint, stop
                  RecordEpochs(record)]  # closes each epoch's row in the record
    for lg in loggers:
        lg.log_hyperparams({**flat_hparams(cfg), "data_stats": datamodule.stats})
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                      default_root_dir=str(job_dir()), plugins=[AtomicCheckpointIO()])
    with one_job(trainer):  # all ranks in one run dir; a sweep's next job launches its own ranks
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)


if __name__ == "__main__":
    main()
