"""`text2sql predict`: generate SQL for the dev split with a trained model and write DB-GPT-Hub's pred.sql.

The model is described by the same Hydra config as training (model, peft, dataset, data keys), either
composed from `conf/` with overrides or taken from a finished run dir (`--run`). Weights come from an
adapter dir (`--adapter`, what `PeftModel.from_pretrained` reads), a Lightning checkpoint (`--checkpoint`)
or, with `--run`, the run's saved adapter/model or its last checkpoint. Generation is the callback's:
batched decoding with left padding and the KV cache, with the strategy of `eval.decoding` (greedy by default).

A checkpoint or adapter inside a run dir brings that run's config along (no overrides to repeat), and the run's
relative paths (cache, dataset, model) are read from the directory training started in, so predict works from
anywhere; pred.sql then lands in the run dir.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from text2sql.atomic import atomic_path
from text2sql.config.paths import check_writable, conf_dir
from text2sql.errors import UserError
from text2sql.config.decoding import STRATEGIES
from text2sql.job.run_dir import RunDir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--run", type=Path, help="a training run dir: its config, and its adapter/model or last checkpoint")
    src.add_argument("--adapter", type=Path, help="a PEFT adapter dir (adapter_config.json) to load on the base model, "
                     "or a W&B artifact entity/project/name:alias (downloaded with W&B's API)")
    src.add_argument("--checkpoint", type=Path, help="a Lightning .ckpt written by train.py")
    add_weight_choice(parser)
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write one SQL per line (default: <run dir>/pred.sql, else ./pred.sql); with "
                        "--evaluate the gold of the same examples goes beside it as <OUT stem>.gold.sql")
    parser.add_argument("--split", default="dev", help="dataset split to predict (default dev)")
    parser.add_argument("--limit", type=int, default=None, help="only N examples: the fixed-seed subset (eval.seed) that training scores with "
                        "eval.limit=N (default all)")
    parser.add_argument("--batch-size", type=int, default=None, help="generation batch size (default eval.batch_size)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default eval.max_new_tokens")
    parser.add_argument("--evaluate", action="store_true", help="also score the predictions (execution accuracy)")
    parser.add_argument("--decoding", choices=STRATEGIES, default=None,
                        help="decoding strategy (default: the run's eval.decoding, greedy unless set; the same as "
                        "eval.decoding.strategy=...); execution_guided and self_consistency run their candidates on "
                        "the example's database")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="where generation runs (default auto: this process's GPU if torch sees one, else the CPU)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for train.py: model=... peft.r=8 dataset.root=...")


def add_weight_choice(parser: argparse.ArgumentParser) -> None:
    """`--best`, shared by `predict` and `ask`."""
    parser.add_argument("--best", action="store_true",
                        help="with --run: the weights of the run's best epoch (metrics.json's best: its "
                        "checkpoint, or adapter_best/) instead of the final ones (adapter/ or model/, the last "
                        "epoch's); the load line says which")


def compose_config(overrides: list[str], run_dir: Path | None = None) -> DictConfig:
    """The training config: a run's saved one (plus overrides) or a fresh compose of conf/ (plus overrides)."""
    if run_dir is not None:
        saved = run_dir / ".hydra" / "config.yaml"
        if not saved.is_file():
            raise UserError(f"{run_dir} is not a training run dir (no .hydra/config.yaml)")
        picked = _group_choices(overrides)
        if picked:
            raise UserError(f"{picked[0]} picks a config group, but a run's saved config takes key overrides only "
                            f"(e.g. model.path=..., eval.batch_size=...); drop --run to compose from conf/")
        cfg = localize(OmegaConf.load(saved), run_dir)
        if overrides:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
        return cfg
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return compose(config_name="train", overrides=overrides)
    except HydraException as err:
        from text2sql.config.schema import describe_compose_error

        raise UserError(describe_compose_error(err) or str(err).splitlines()[0]) from None


# Keys whose relative values are relative to the directory a run was started in (paths.cache_dir first: the
# sample's root and the tiny model's cache interpolate it).
RUN_RELATIVE_KEYS = ("paths.cache_dir", "dataset.root", "model.path")


def localize(cfg: DictConfig, run_dir: Path) -> DictConfig:
    """Make a saved run config's paths absolute: those training recorded (`.hydra/resolved_paths.json`), else
    relative ones against the run's start dir (`.hydra/hydra.yaml`).

    Otherwise `predict` from another directory would silently rebuild the sample and the tiny model there.
    """
    recorded = RunDir(run_dir).resolved_paths()  # what training resolved (absolute), when it recorded it
    for key in RUN_RELATIVE_KEYS:
        if recorded.get(key):
            OmegaConf.update(cfg, key, recorded[key], force_add=True)
    start = RunDir(run_dir).start_dir()
    if start is None:
        return cfg
    for key in RUN_RELATIVE_KEYS:
        try:
            value = OmegaConf.select(cfg, key, default=None)
        except Exception:  # noqa: BLE001 - e.g. an env var the run had and this shell lacks: leave as is
            continue
        if isinstance(value, str) and value and not os.path.isabs(value):
            candidate = Path(start) / Path(value).expanduser()
            if key == "paths.cache_dir" or candidate.exists():  # a hub id such as owner/name stays a hub id
                OmegaConf.update(cfg, key, str(candidate), force_add=True)
    return cfg


def _group_choices(overrides: list[str]) -> list[str]:
    """Overrides that pick a config group option (`model=...`): a saved run config cannot take them."""
    return [o for o in overrides if "=" in o and "." not in o.split("=", 1)[0].lstrip("+~")
            and (conf_dir() / o.split("=", 1)[0].lstrip("+~")).is_dir()]


def resolve_subtree(cfg: DictConfig, key: str) -> DictConfig:
    """One subtree, resolved against the whole config (other subtrees may hold Hydra-runtime interpolations)."""
    return OmegaConf.create(OmegaConf.to_container(OmegaConf.select(cfg, key), resolve=True))


def find_weights(run_dir: Path) -> tuple[str, Path]:
    """('adapter'|'model'|'checkpoint', path) saved by a run, best first."""
    for kind, path in (("adapter", run_dir / "adapter"), ("model", run_dir / "model")):
        if path.is_dir():
            return kind, path
    ckpts = sorted((run_dir / "checkpoints").glob("last*.ckpt")) or sorted((run_dir / "checkpoints").glob("*.ckpt"))
    if ckpts:
        return "checkpoint", ckpts[-1]
    raise UserError(f"no adapter/, model/ or checkpoints/*.ckpt in {run_dir}")


def find_best_weights(run_dir: Path) -> tuple[tuple[str, Path], str]:
    """(weights of the run's best epoch, which epoch in words): adapter_best/ (model_best/) when the run exported
    them, else the best epoch's checkpoint (`epoch{NN}.ckpt`, kept by ModelCheckpoint), else the final weights
    when the best epoch is the last one."""
    record = RunDir(run_dir).read_metrics() or {}
    best = record.get("best")
    if not best:
        raise UserError(f"--best: {run_dir} records no best epoch (metrics.json: no epoch was scored)")
    epoch = int(best["epoch"])
    metric = next((f"{k} {v:.4f}" for k, v in best.items() if k != "epoch" and isinstance(v, (int, float))), "")
    said = f"the best epoch, {epoch}" + (f": {metric}" if metric else "")
    for kind, name in (("adapter", "adapter_best"), ("model", "model_best")):
        if (run_dir / name).is_dir():
            return (kind, run_dir / name), said
    ckpt = run_dir / "checkpoints" / f"epoch{epoch:02d}.ckpt"
    if ckpt.exists():
        return ("checkpoint", ckpt), said
    last = max((row.get("epoch", -1) for row in record.get("history", [])), default=None)
    if last == epoch:
        return find_weights(run_dir), f"{said}, also the last"
    raise UserError(f"--best: the best epoch is {epoch}, but {run_dir} keeps none of its weights "
                    f"(checkpoints/epoch{epoch:02d}.ckpt, adapter_best/)")


def weights_line(weights: tuple[str, Path] | None, which: str | None) -> str:
    """What the load line says about the weights: kind, path and which epoch they are."""
    if weights is None:
        return "none (the untrained base model)"
    return f"{weights[0]} {weights[1]}" + (f" ({which})" if which else "")


DEVICES = ("auto", "cpu", "cuda")


def place_model(model, device: str = "auto") -> str:
    """Put `model` where generation runs and say where. `auto`: this process's GPU (LOCAL_RANK) when torch sees
    one, else the CPU under the CPU thread policy train.py applies (text2sql/machine/threads.py). Weights that
    bitsandbytes placed while loading (load_model's device_map) stay where they are."""
    import torch

    from text2sql.machine.threads import set_torch_threads

    check_device(device)
    if getattr(model, "hf_device_map", None):
        return str(next(model.parameters()).device)
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        target = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        model.to(target)
        return str(target)
    model.to("cpu")
    return f"cpu; {set_torch_threads({'accelerator': 'cpu', 'devices': 1, 'threads': None})}"


def check_device(device: str) -> None:
    """A device that cannot be used is one line before any weights load."""
    import torch

    if device not in DEVICES:
        raise UserError(f"unknown --device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        build = "" if torch.version.cuda else " (a CPU-only build)"
        raise UserError(f"--device cuda: torch {torch.__version__}{build} sees no CUDA GPU; use --device cpu")


def load_for_inference(cfg: DictConfig, dataset, weights: tuple[str, Path] | None, device: str = "auto"):
    """(model, tokenizer, device line) ready for generation, through the training code's loaders; the model is
    on `device` (place_model)."""
    check_device(device)
    model, tokenizer = _load_weights(cfg, dataset, weights)
    return model, tokenizer, place_model(model, device)


def _load_weights(cfg: DictConfig, dataset, weights: tuple[str, Path] | None):
    from text2sql.job.console import quiet_libraries, quiet_model_bars

    quiet_libraries()  # before the imports: bitsandbytes logs its CPU kernel hint at import
    quiet_model_bars(local_model=bool(cfg.model.get("build")))  # the tiny model's "Loading weights" bar is noise
    import torch

    from text2sql.data.datasets import corpus
    from text2sql.model.load import load_model, load_tokenizer, resolve_model_path
    from text2sql.model.peft import apply_peft

    model_cfg, peft_cfg = resolve_subtree(cfg, "model"), resolve_subtree(cfg, "peft")
    kind, path = weights if weights else (None, None)
    if kind == "model":  # a full fine-tune saved with save_pretrained
        tokenizer = load_tokenizer(model_cfg, str(path))
        return load_model(model_cfg, str(path), tokenizer), tokenizer
    base_path = resolve_model_path(model_cfg, corpus=lambda: corpus(dataset, "train"))
    tok_path = path if kind == "adapter" and (path / "tokenizer_config.json").is_file() else base_path
    tokenizer = load_tokenizer(model_cfg, str(tok_path))
    model = load_model(model_cfg, base_path, tokenizer)
    if kind == "adapter":
        from peft import PeftModel

        if not (path / "adapter_config.json").is_file():
            raise UserError(f"{path} holds no adapter_config.json (not a PEFT adapter dir)")
        return PeftModel.from_pretrained(model, str(path)), tokenizer
    if kind == "checkpoint":
        from text2sql.training.module import Text2SQLModule

        quiet_libraries()  # again: Lightning's import puts its own warning filters in front
        module = Text2SQLModule(apply_peft(model, peft_cfg), resolve_subtree(cfg, "optim"))
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
        try:
            result = module.load_state_dict(state, strict=False)
        except RuntimeError as err:  # size mismatches: the config is not the one the checkpoint was trained with
            detail = next((ln.strip() for ln in str(err).splitlines() if "size mismatch" in ln), str(err)[:200])
            raise UserError(f"{path} does not fit this model/peft config ({detail}); pass --run RUN_DIR or "
                            f"the overrides it was trained with") from None
        if result.unexpected_keys:
            raise UserError(f"{path} does not fit this model/peft config: unexpected keys such as "
                           f"{result.unexpected_keys[0]}")
        return module.model, tokenizer
    return apply_peft(model, peft_cfg) if peft_cfg.method != "full" else model, tokenizer


def predict(cfg: DictConfig, weights, out: Path, split: str = "dev", limit: int | None = None,
            batch_size: int | None = None, max_new_tokens: int | None = None, progress: bool = True,
            device: str = "auto"):
    """Write `out` (one SQL per line, split order) and return (dataset, records, predictions, interaction ids,
    the records' positions in the split)."""
    from hydra.utils import instantiate

    from text2sql.data.datamodule import eval_subset
    from text2sql.data.prompt import encode_source
    from text2sql.config.decoding import Decoding
    from text2sql.eval.candidates import decode_local
    from text2sql.eval.progress import progress_bar
    from text2sql.eval.interaction import pred_lines

    dataset = instantiate(resolve_subtree(cfg, "dataset"))
    model, tokenizer, where = load_for_inference(cfg, dataset, weights, device)
    print(f"text2sql predict: generating on {where}", file=sys.stderr)
    data_cfg = resolve_subtree(cfg, "data")
    eval_cfg = resolve_subtree(cfg, "eval")
    records = dataset.records(split)
    all_ids = _interaction_ids(dataset, split)
    subset = eval_subset(len(records), limit, eval_cfg.seed, all_ids)  # = eval.limit's subset (whole interactions)
    records = [records[i] for i in subset]
    ids = [all_ids[i] for i in subset] if all_ids else None
    sources = [encode_source(r, tokenizer, data_cfg.template, data_cfg.max_source_length,
                             system_prompt=data_cfg.system_prompt)[0] for r in records]
    decoding = Decoding.from_config(eval_cfg.get("decoding"))
    evaluator, db_files = None, []
    if decoding.executes:  # candidates run on the example's database, as the evaluator runs predictions
        from text2sql.eval.execute import ExecutionEvaluator

        evaluator = ExecutionEvaluator(dataset.db_dir(split), timeout=eval_cfg.timeout, workers=eval_cfg.workers,
                                       style=dataset.eval_style)
        db_files = [evaluator.db_file(r["db_id"]) for r in records]
    try:
        with progress_bar("predicting", len(sources), progress) as advance:
            decoded = decode_local(model, tokenizer, sources, db_files, decoding, evaluator=evaluator,
                                   batch_size=batch_size or eval_cfg.batch_size,
                                   max_new_tokens=max_new_tokens or eval_cfg.max_new_tokens, progress=advance)
    finally:
        if evaluator is not None:
            evaluator.close()
    preds = [d.sql for d in decoded]
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_text(pred_lines(preds, ids) if ids else "".join(p + "\n" for p in preds), encoding="utf-8")
    return dataset, records, preds, ids, subset


def _interaction_ids(dataset, split: str) -> list[int] | None:
    """Multi-turn datasets (SParC, CoSQL): each example's interaction, for whole-interaction subsets and the
    blank-line layout of gold and prediction files that `text2sql evaluate` scores per interaction."""
    ids_of = getattr(dataset, "interaction_ids", None)
    return ids_of(split) if ids_of else None


def resolve_source(args: argparse.Namespace, overrides: list[str], verb: str = "predict"):
    """(config, weights, run dir, which epoch in words) from --run / --adapter / --checkpoint / --best and
    overrides; weights None: the base model. Shared by the verbs that load a trained model (`predict`, `ask`)."""
    run_dir = args.run
    if getattr(args, "best", False) and args.run is None:
        raise UserError("--best needs --run RUN_DIR (the run whose best epoch to load)")
    if run_dir is None and (args.checkpoint or args.adapter) is not None:
        found = RunDir.find(args.checkpoint or args.adapter)
        if found is not None and not _group_choices(overrides):
            run_dir = found.path
            print(f"text2sql {verb}: using the config of run {run_dir}", file=sys.stderr)
    cfg = compose_config(overrides, run_dir)
    weights, which = None, None
    if args.run is not None and getattr(args, "best", False):
        weights, which = find_best_weights(args.run)
    elif args.run is not None:
        weights = find_weights(args.run)
        which = "the final weights, the last epoch's; --best: the best epoch's"
    elif args.adapter is not None:
        from text2sql.tracking.artifacts import is_artifact_ref, resolve_artifact

        weights = (resolve_artifact(str(args.adapter), Path(cfg.paths.cache_dir) / "artifacts")
                   if is_artifact_ref(str(args.adapter)) else ("adapter", args.adapter))
    elif args.checkpoint is not None:
        if not args.checkpoint.is_file():
            raise UserError(f"checkpoint not found: {args.checkpoint}")
        weights = ("checkpoint", args.checkpoint)
    if weights and not weights[1].exists():
        raise UserError(f"{weights[0]} not found: {weights[1]}")
    return cfg, weights, run_dir, which


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides) + ([f"eval.decoding.strategy={args.decoding}"] if args.decoding else [])
    cfg, weights, run_dir, which = resolve_source(args, overrides)
    if weights is None:
        print("text2sql predict: no --run/--adapter/--checkpoint given: predicting with the untrained base model",
              file=sys.stderr)
    elif which:  # a run's final or best epoch: say which
        print(f"text2sql predict: weights: {weights_line(weights, which)}", file=sys.stderr)
    out = args.out if args.out is not None else (run_dir / "pred.sql" if run_dir is not None else Path("pred.sql"))
    check_writable(out)  # before the model loads
    dataset, records, preds, ids, subset = predict(cfg, weights, out, args.split, args.limit, args.batch_size,
                                      args.max_new_tokens, progress=not args.no_progress, device=args.device)
    print(f"wrote {len(preds)} predictions to {out} (decoding: {OmegaConf.select(cfg, 'eval.decoding.strategy')})")
    if args.evaluate:
        evaluate_predictions(cfg, dataset, records, out, args.split, subset, ids, progress=not args.no_progress)
    return 0


def gold_beside(pred: Path) -> Path:
    """Where `predict --evaluate` writes the gold of the predicted examples: `<pred stem>.gold.sql`, named after
    the predictions so it never replaces a dataset's own `dev_gold.sql` (or another run's) in that folder."""
    return pred.with_name(f"{pred.stem}.gold.sql")


def _one_line(sql: str) -> str:
    return sql.replace("\r", " ").replace("\n", " ").replace("\t", " ")


def evaluate_predictions(cfg: DictConfig, dataset, records: list[dict], pred: Path, split: str,
                         positions: list[int], ids: list[int] | None = None, progress: bool = True) -> None:
    """Score `pred` with `text2sql evaluate` itself: the same tables (per hardness, per status), and a gold
    file (`gold_beside(pred)`, Spider's `SQL<TAB>db_id`) to rerun the evaluation later. BIRD: the predicted
    examples' questions (`positions`: the records' places in the split) go beside the gold (`<stem>.questions.json`), so
    the per-difficulty table of a `--limit` subset is right here and on a rerun."""
    from text2sql.eval import evaluate
    from text2sql.eval.interaction import sessions_text

    gold = gold_beside(pred)
    lines = [f"{_one_line(r['output'])}\t{r['db_id']}" for r in records]
    with atomic_path(gold) as tmp:
        tmp.write_text(sessions_text(lines, ids) if ids else "".join(f"{line}\n" for line in lines), encoding="utf-8")
    eval_cfg = resolve_subtree(cfg, "eval")
    db_dir = dataset.db_dir(split)
    argv = ["--gold", str(gold), "--pred", str(pred), "--db", str(db_dir), "--style", dataset.eval_style,
            "--timeout", str(eval_cfg.timeout)]
    if dataset.eval_style == "bird":  # BIRD's difficulty per example, of exactly the predicted ones
        from text2sql.eval.questions import write_questions

        argv += ["--questions", str(write_questions(gold, dataset.split_files(split), positions))]
    if eval_cfg.workers is not None:
        argv += ["--workers", str(eval_cfg.workers)]
    if not progress:
        argv.append("--no-progress")
    parser = argparse.ArgumentParser(prog="text2sql evaluate")
    evaluate.add_arguments(parser)
    evaluate.run(parser.parse_args(argv))
    if eval_cfg.get("test_suite"):  # the same predictions on every database of the suite (docs/testsuite.md)
        from text2sql.eval.suite import suite_db_dir

        suite = suite_db_dir(eval_cfg.test_suite)
        print(f"test-suite accuracy on {suite}:")
        evaluate.run(parser.parse_args([*argv[:4], "--db", str(suite), *argv[6:], "--test-suite"]))
    print(f"gold written to {gold}: rerun with text2sql evaluate --gold {gold} --pred {pred} --db {db_dir}")
