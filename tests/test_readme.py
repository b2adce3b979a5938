"""Every command the READMEs and docs/*.md show works as typed: each one is run here, smoke-sized.

The commands are read from the documents themselves (fenced shell blocks and inline code that starts like a
command), so a new or changed example that is not in `EXAMPLES` fails `test_every_documented_command_is_known`,
and a documented example that breaks fails `test_readme_example`. Each entry says how the command is checked:

- `Run`: executed from the repo root as written, with placeholders (`outputs/<date>/<time>`, a sweep dir, ...)
  replaced by the dirs of earlier examples and smoke overrides appended (Hydra: a later override wins), so it
  does the same thing on a few batches. `fails=` expects a one-line error instead (GPU-only, missing weights).
- `Compose`: needs a cluster (SLURM): composed with `--cfg hydra` in place of `-m`, the launcher checked.
- `Ci`: an install or test command that `.ci/run` itself performs (checked: `.ci/run` contains it).
- `Synopsis`: a usage line with placeholders; every option it shows must exist in that verb's parser.
- `Covered`: a multi-process run or a benchmark that the named test already runs smoke-sized (checked: it exists).
- `Elsewhere`: needs what no CI machine has (a W&B account, a CUDA wheel index); the reason is required.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# every page under docs/ is read too: a new page's commands need EXAMPLES entries like the README's
DOCS = ("README.md", "multirun/README.md", "bench/README.md",
        *sorted(p.relative_to(REPO).as_posix() for p in (REPO / "docs").glob("*.md")))
STARTS = ("python ", "text2sql ", "torchrun ", "bash ", "wandb ", "pip ", "srun ", "WANDB_MODE=", "SPIDER_DIR=",
          "MODEL_PATH=", ". .venv")

# Appended to every train.py example: a run of a few batches, a tiny EX subset, short generations.
SMOKE = ("debug=smoke", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
         "data.train_limit=64", "data.val_loss_limit=8", "eval.limit=4", "eval.max_new_tokens=16")


@dataclass(frozen=True)
class Run:
    extra: tuple[str, ...] = SMOKE     # appended arguments
    env: tuple[tuple[str, str], ...] = ()
    fails: str | None = None           # regex the one-line error must match; None: must exit 0
    provides: str | None = None        # name under which later examples find this one's output dir
    needs: tuple[str, ...] = ()        # placeholders filled from earlier examples' dirs
    spider: bool = False               # needs ../shared/spider (or SPIDER_DIR)
    timeout: int = 600
    fresh: tuple[str, ...] = ()        # repo-relative output dirs removed first (commands that refuse to overwrite)


@dataclass(frozen=True)
class Compose:
    """A cluster-only multirun (SLURM): composed with `--cfg hydra` instead of `-m`; `expect` is in the output."""

    expect: str


@dataclass(frozen=True)
class Covered:
    """Too costly to run twice in CI (several processes, a benchmark): the named test runs it, smoke-sized."""

    test: str  # "tests/file.py::test_name"


@dataclass(frozen=True)
class Ci:
    pass


@dataclass(frozen=True)
class Synopsis:
    verb: str


@dataclass(frozen=True)
class Elsewhere:
    why: str


SWEEP_SMOKE = SMOKE + ("trainer.limit_val_batches=1",)

# command as documented -> how it is checked. Order matters: `provides` before `needs`. Grouped by the page that
# shows it; a new page appends its own block at the end (a command several pages show needs one entry only).
EXAMPLES: dict[str, object] = {
    # -- README.md: quick start / install (what .ci/run does itself); docs/run.md
    "python -m venv .venv": Ci(),
    ". .venv/bin/activate": Ci(),
    "pip install torch==2.13.0": Ci(),
    'pip install -e ".[dev,sweep]"': Ci(),
    'pip install -e ".[sweep]"': Ci(),
    'python -m pytest -m "not gpu"': Ci(),
    "python -m pytest": Ci(),
    "pip install torch --index-url https://download.pytorch.org/whl/cu124": Elsewhere(
        "installs a CUDA build of torch from another index; CPU CI pins the CPU wheel instead"),
    "python train.py": Run(provides="run"),
    "python train.py debug=smoke": Run(),
    "python train.py eval.before_training=true": Run(),
    "text2sql predict --limit 200 --evaluate": Run(extra=("--limit", "4", "--max-new-tokens", "8", "--no-progress")),
    "python train.py --help": Run(extra=()),
    # -- README.md: choosing what to run, resuming; docs/decoding.md, docs/models.md
    "python train.py optim.lr=1e-3 peft.r=8 trainer.max_epochs=3": Run(),
    "python train.py eval.decoding.strategy=execution_guided": Run(),
    "python train.py dataset=spider dataset.root=../shared/spider debug=smoke": Run(spider=True),
    "python train.py eval.limit=200 eval.every_n_epochs=2": Run(extra=SMOKE + ("trainer.max_epochs=2",)),
    "python train.py model=codellama13b peft=qlora4 dry_run=true": Run(extra=()),
    "python train.py model=qwen25_coder_7b peft=dora dry_run=true": Run(extra=()),
    "python train.py model=tiny_qwen": Run(),
    "python train.py experiment=dbgpt_hub_codellama13b_lora dataset.root=/data/spider": Run(
        extra=(), fails=r"(spider|Spider|/data/spider|model|weights|CUDA|GPU)"),
    "python train.py ckpt_path=outputs/<date>/<time>": Run(extra=SMOKE + ("trainer.max_epochs=2",), needs=("run",)),
    "python train.py ckpt_path=outputs/<date>/<time> trainer.max_epochs=12": Run(
        extra=SMOKE + ("trainer.max_epochs=3",), needs=("run",)),
    "python train.py ckpt_path=RUN_DIR": Synopsis("train"),
    "python train.py hydra.run.dir=outputs/<date>/<time> resume=auto": Run(needs=("run",)),
    "python train.py model=nope": Run(extra=(), fails=r"model"),
    "text2sql ask --run outputs/<date>/<time> --db ../shared/spider/database/concert_singer/concert_singer.sqlite "
    '"How many singers do we have?"': Covered("tests/test_ask.py::test_ask_answers_on_a_spider_dev_database"),
    # -- docs/datasets.md
    "text2sql prepare --from-sqlite DBDIR --pairs FILE --out DIR [--dev-fraction F] [--split-by random|database] "
    "[--seed N] [--drop-invalid] [--overwrite]": Synopsis("prepare"),
    "python train.py dataset=spider dataset.root=DIR": Covered(
        "tests/test_sqlite_schema.py::test_prepared_dir_trains_with_dataset_spider"),
    "python train.py --cfg job": Run(extra=()),
    # -- docs/datasets.md (the BIRD sample is written before the commands that read it)
    "python train.py dataset=bird dataset.root=/data/bird": Run(extra=(), fails=r"BIRD directory not found"),
    "text2sql sample --layout bird --out data/bird-sample": Run(extra=("--n-train", "60", "--n-dev", "16"),
                                                                fresh=("data/bird-sample",)),
    "python train.py dataset=bird dataset.root=data/bird-sample": Covered(
        "tests/test_bird.py::test_train_evaluate_resume_on_bird_layout"),
    "text2sql evaluate --gold data/bird-sample/dev/dev.sql --pred data/bird-sample/dev/dev.sql --db "
    "data/bird-sample/dev/dev_databases": Run(extra=("--workers", "0", "--no-progress")),
    # -- docs/wandb.md
    "wandb login": Elsewhere("needs a W&B account and network"),
    "WANDB_MODE=online python train.py logger.wandb.project=my-text2sql logger.wandb.entity=my-team": Elsewhere(
        "streams to a W&B server: needs an account and network"),
    "wandb sync": Elsewhere("uploads to a W&B server"),
    "text2sql sync": Run(extra=("--help",)),
    "text2sql ask": Run(extra=("--help",)),
    "text2sql sync multirun/<date>/<time>": Synopsis("sync"),
    "text2sql sync RUN_OR_MULTIRUN_DIR [--dry-run]": Synopsis("sync"),
    "text2sql sync multirun/2026-11-25/14-03-12 --dry-run": Run(extra=(), needs=("sweep",)),
    "text2sql sync multirun/2026-11-25/14-03-12 --entity my-team --project text2sql": Elsewhere(
        "uploads to a W&B server (the --dry-run form above runs here)"),
    "text2sql dashboard": Run(extra=("--help",)),
    "text2sql dashboard --entity E --project P [--sweep-dir DIR \\| --sweep-group G --swept KEY...] [--print [FILE]]":
        Synopsis("dashboard"),
    "text2sql dashboard --entity my-team --project text2sql": Run(extra=("--print", "/dev/null")),
    "text2sql dashboard --entity my-team --project text2sql --sweep-dir multirun/2026-11-25/14-03-12": Run(
        extra=("--print", "/dev/null"), needs=("sweep",)),
    "text2sql dashboard --entity my-team --project text2sql --sweep-group 2026-11-25_14-03-12 --swept peft.r optim.lr "
    "--print docs/wandb_workspace.json --sketch docs/wandb_workspace.png": Covered("tests/test_dashboard.py"),
    "text2sql predict --adapter my-team/text2sql/adapter-3rti8oze:best --evaluate": Elsewhere(
        "downloads a W&B artifact: needs an account (tests/test_wandb_run.py fakes the API)"),
    "python -c \"from text2sql.tracking.offline import read_run; print(read_run('DIR')['summary'])\"": Run(
        extra=(), needs=("run",)),
    # -- docs/sweeps.md; README.md and docs/gpu.md (GPU box: fails in one line without CUDA); docs/models.md (ranks)
    # its sweep dir feeds the report examples: 32 dev questions so every hardness level (val/ex_hard) is present
    "python train.py -m peft.r=8,16,64 optim.lr=1e-4,2e-4": Run(extra=SWEEP_SMOKE + ("eval.limit=32",),
                                                                  provides="sweep"),
    "python train.py -m sweep=lora_grid": Run(extra=SWEEP_SMOKE + ("peft.r=4", "peft.alpha=8", "optim.lr=2e-3")),
    "python train.py -m sweep=lora_grid peft.r=4,8 debug=smoke": Run(extra=SWEEP_SMOKE + ("peft.alpha=8",
                                                                                       "optim.lr=2e-3")),
    "python train.py -m sweep=optuna": Run(extra=SWEEP_SMOKE + ("hydra.sweeper.n_trials=2",)),
    "python train.py -m sweep=optuna hydra.sweeper.n_trials=50 'peft.r=choice(8,16)'": Run(
        extra=SWEEP_SMOKE + ("hydra.sweeper.n_trials=1",)),
    "SPIDER_DIR=/data/spider python train.py model=codellama13b peft=qlora4": Run(extra=(), fails=r"(Spider|spider)"),
    "SPIDER_DIR=/data/spider python train.py experiment=dbgpt_hub_codellama13b_lora": Run(
        extra=(), fails=r"(Spider|spider|CUDA|GPU)"),
    "SPIDER_DIR=/data/spider python train.py experiment=dbgpt_hub_codellama13b_qlora4": Run(
        extra=(), fails=r"(Spider|spider|CUDA|GPU)"),
    "python train.py experiment=dbgpt_hub_codellama13b_lora dry_run=true": Run(extra=()),
    "python train.py model=tiny_codellama dataset=spider dataset.root=../shared/spider debug=smoke": Covered(
        "tests/test_tiny_codellama.py"),
    # two ranks on the CPU, as typed (smoke-sized); tests/test_ranks_slow.py holds the asserts on what they share
    "python train.py hardware=deepspeed_zero2_cpu hardware.zero_stage=3 hardware.devices=2 debug=smoke": Run(),
    "torchrun --standalone --nproc_per_node 2 train.py hardware=cpu hardware.devices=2 debug=smoke": Run(),
    "bench/gpu_acceptance.sh": Covered("tests/test_auto_gpu_acceptance.py"),
    "bash bench/gpu_acceptance.sh": Covered("tests/test_auto_gpu_acceptance.py"),
    "bench/gpu_scale.sh": Covered("tests/test_gpu_scale.py"),
    "bash bench/gpu_scale.sh": Covered("tests/test_gpu_scale.py"),
    "python bench/gpu_scale.py --toy": Covered("tests/test_gpu_scale.py"),
    "python train.py -m +launcher=slurm sweep=lora_grid model=codellama7b hardware=gpu hydra.launcher.partition=gpu":
        Compose("submitit_slurm"),
    "python train.py -m +launcher=slurm sweep=optuna hydra.sweeper.n_jobs=8 hydra.launcher.timeout_min=720":
        Compose("timeout_min: 720"),
    "text2sql report multirun/2026-11-25/14-03-12": Run(extra=(), needs=("sweep",)),
    "text2sql report multirun/2026-11-25/14-03-12 --metric val/ex_hard --top 5": Run(extra=(), needs=("sweep",)),
    "python train.py -m peft.r=4,16 optim.lr=5e-4,2e-3 trainer.max_epochs=3": Run(extra=SWEEP_SMOKE),
    "text2sql report": Run(extra=("--help",)),
    "text2sql predict": Run(extra=("--help",)),
    # -- docs/cli.md
    "text2sql --help": Run(extra=()),
    "python -m text2sql --help": Run(extra=()),
    "text2sql prepare --spider DIR --out OUT [--tokenizer TOK]": Synopsis("prepare"),
    "text2sql prepare --from-sqlite DBDIR --pairs FILE --out DIR [--overwrite]": Synopsis("prepare"),
    "text2sql predict --run RUN_DIR [--out pred.sql] [--evaluate] [--decoding STRATEGY] [--best]": Synopsis("predict"),
    "text2sql ask --run RUN_DIR --db FILE.sqlite [\"question\"] [--best] [--interactive] [--decoding STRATEGY] "
    "[--json] [--rows N] [--timeout S] [--model ID_OR_DIR]": Synopsis("ask"),
    "text2sql evaluate --gold dev_gold.sql --pred pred.sql --db DB_DIR [--etype exec\\|match\\|all] "
    "[--style spider\\|bird] [--plug-value] [--keep-distinct] [--test-suite] [--questions dev.json] "
    "[--out verdicts.jsonl]": Synopsis("evaluate"),
    "text2sql predict --checkpoint RUN/checkpoints/last.ckpt": Covered("tests/test_predict.py"),
    "text2sql report DIR --metric val/ex_hrad": Run(extra=(), fails=r"unknown metric", needs=("sweep",)),
    "text2sql VERB: error: ...": Synopsis("prepare"),
    "text2sql merge --adapter RUN_DIR/adapter --out MERGED": Synopsis("merge"),
    "text2sql report MULTIRUN_DIR": Synopsis("report"),
    # -- multirun/README.md prose
    "python train.py -m ...": Synopsis("train"),
    "python train.py ...": Synopsis("train"),
    # -- docs/datasets.md (multi-turn, prompt forms)
    # the SParC sample, a smoke run on it (with eval.limit, as SMOKE has) and `evaluate` on that run's last epoch
    "text2sql sample --layout sparc --out data/sparc-sample": Run(extra=("--n-train", "64", "--n-dev", "8"),
                                                                  fresh=("data/sparc-sample",)),
    "python train.py dataset=sparc dataset.root=DIR": Covered(
        "tests/test_multiturn.py::test_multi_turn_dataset_trains_resumes_and_evaluates_end_to_end"),
    "python train.py dataset=cosql dataset.root=DIR": Covered(
        "tests/test_multiturn.py::test_multi_turn_dataset_trains_resumes_and_evaluates_end_to_end"),
    "python train.py dataset=chase dataset.root=DIR": Synopsis("train"),
    "python train.py dataset=sparc dataset.root=data/sparc-sample": Run(provides="sparc"),
    "text2sql evaluate --gold outputs/<date>/<time>/predictions/epoch_7_gold.sql --pred "
    "outputs/<date>/<time>/predictions/epoch_7_pred.sql --db data/sparc-sample/database --etype all": Run(
        extra=("--workers", "0", "--no-progress"), needs=("sparc",)),
    "python train.py dataset.prompt=one_shot": Run(),
    "python bench/prompt_forms.py --spider ../shared/spider": Run(extra=("--limit", "40", "--json", ""),
                                                                     spider=True),
    "python bench/prompt_forms.py --spider /work/shared/spider": Run(extra=("--limit", "40", "--json", ""),
                                                                     spider=True),
    "text2sql sample --layout sparc --out DIR [--seed N] [--n-train N] [--n-dev N]": Synopsis("sample"),
    # -- bench/README.md
    "python bench/bench_evaluate.py --spider /work/shared/spider --json bench/results/bench_evaluate.json": Covered(
        "tests/test_match.py"),
    "python bench/bench_startup_errors.py": Covered("tests/test_config_schema.py"),
    "python bench/bird_eval.py --rows 120000 --repeat 2 --json bench/results/bird_eval.json": Run(
        extra=("--rows", "2000", "--repeat", "1", "--json", "")),  # never over the committed results
    "python bench/eval_cost.py": Covered("tests/test_throughput.py"),
    "python bench/bench_predict.py": Run(extra=("--n", "4", "--json", "")),  # never over the committed results
    # -- docs/troubleshooting.md and bench/README.md (issue 29): measuring a box's OpenMP waiting (the default side,
    # a few steps: the flags work), an unknown key added with `+`
    "python bench/cpu_share.py --hogs 0,1 --sides before,after,one_thread --repeat 2": Run(
        extra=("--hogs", "0", "--sides", "after", "--steps", "2", "--repeat", "1", "--json", "")),
    "python train.py +optim.lrr=1e-3": Run(extra=(),
                                           fails=r"(?m)^error: optim\.lrr: no such key; did you mean optim\.lr\?$"),
    "bash bench/gpu_smoke.sh": Run(extra=(), fails=r"needs a CUDA GPU"),
    "python bench/make_readme.py": Run(extra=("--out", "/dev/null")),
    "python bench/ranks_ex.py RUN": Covered("tests/test_ranks_slow.py"),
    "python bench/decoding.py --run RUN": Covered(
        "tests/test_ranks_slow.py::test_bench_decoding_prints_one_table_and_the_gain"),
    "python bench/train_throughput.py --once hf_default,ours_full_head,ours_packed --steps 12 --warmup 2": Covered(
        "tests/test_throughput.py"),
    # -- docs/serve.md and its bench row (`text2sql serve`); the servers themselves run in tests/test_serve.py
    "text2sql serve": Run(extra=("--help",)),
    "text2sql serve --run RUN [--best] [--host 127.0.0.1] [--port 8000] [--db-dir DIR] [--api-key KEY]":
        Synopsis("serve"),
    "text2sql serve --run outputs/<date>/<time> --db-dir ../shared/spider/database": Covered(
        "tests/test_serve.py::test_openai_client_and_sql_on_a_spider_database"),
    "curl -s http://127.0.0.1:8000/v1/sql -H \"Authorization: Bearer $TEXT2SQL_API_KEY\" -H \"Content-Type: "
    "application/json\" -d '{\"question\": \"How many singers do we have?\", \"db_id\": \"concert_singer\"}'": Covered(
        "tests/test_serve.py::test_docs_examples_run_against_the_server"),
    "TEXT2SQL_API_KEY=change-me-please text2sql serve --run RUN --host 0.0.0.0 --db-dir DIR": Synopsis("serve"),
    "text2sql serve --run outputs/<date>/<time> --backend vllm --print-command": Run(
        extra=(), needs=("run",), fails=r"text2sql merge"),  # the tiny model's adapter trains whole modules
    "text2sql serve --run RUN_DIR --backend vllm --merged MERGED --print-command": Synopsis("serve"),
    "python bench/serve.py --run RUN --concurrency 1,8,32 --requests 64 --questions 32 --ask 3": Run(
        extra=("--concurrency", "2", "--requests", "4", "--questions", "2", "--ask", "0", "--json", ""),
        needs=("run",)),  # never over the committed results
    # -- docs/testsuite.md and its bench (issue 31: `text2sql testsuite build`)
    "text2sql testsuite build --data ../shared/spider --out data/spider_dev_suite": Run(
        extra=("--per-db", "2", "--mutants", "2", "--no-progress"), spider=True, fresh=("data/spider_dev_suite",)),
    "python train.py dataset=spider dataset.root=../shared/spider eval.test_suite=data/spider_dev_suite": Run(
        spider=True),  # after the build above (same page): its suite of the 19 Spider dev databases
    "text2sql testsuite build --data DIR --out DIR [--split dev|train|both] [--per-db N] [--mutants K] [--cover C] "
    "[--seed S]": Synopsis("testsuite"),
    "text2sql testsuite build": Synopsis("testsuite"),
    "text2sql testsuite build --data DIR --out DIR [--split dev\\|train\\|both] [--per-db N] [--seed S]": Synopsis(
        "testsuite"),  # docs/cli.md's row
    "text2sql evaluate --test-suite": Synopsis("evaluate"),
    "text2sql evaluate --test-suite --gold OUT/dev_gold.sql --pred PRED --db OUT/database": Synopsis("evaluate"),
    "text2sql evaluate --test-suite --style bird --gold OUT/dev_gold.sql --pred PRED --db OUT/database": Synopsis(
        "evaluate"),
    "text2sql prepare --from-sqlite": Synopsis("prepare"),
    "python bench/test_suite.py --pool 100 --run RUN": Covered("tests/test_testsuite.py"),

    # -- docs/grpo.md and bench/grpo.py (GRPO, issue 28) ---------------------------------------------------------------
    "python train.py objective=grpo init_from=outputs/<date>/<time>": Run(
        extra=SMOKE + ("data.batch_size=4", "objective.num_generations=2"), needs=("run",)),
    "python train.py objective=grpo init_from=outputs/<date>/<time> objective.reward._target_=my_rewards.ShortAndRight":
        Covered("tests/test_grpo.py"),  # swaps the reward the same way (tests/grpo_rewards.py), end to end
    "python train.py -m objective=grpo init_from=outputs/<date>/<time> objective.temperature=0.7,1.0": Covered(
        "tests/test_grpo.py::test_grpo_sweep_over_objective_keys"),  # that sweep, from a relative init_from, on SParC
    "python train.py objective=grpo init_from=outputs/<date>/<time> hardware=deepspeed_zero3 hardware.devices=4":
        Covered("tests/test_grpo.py::test_grpo_under_deepspeed_zero3_on_two_ranks"),  # its CPU form, 2 ranks
    "python train.py experiment=grpo_qwen25_coder_7b_bird dry_run=true": Run(extra=()),
    "python bench/grpo.py --default-args eval.limit=50 --starts early --budget-s 300 --lr 1e-4 --grpo-args "
    "data.batch_size=8 --trl-steps 0 --json grpo_early.json": Elsewhere(
        "a benchmark: a default 8-epoch run, two training runs of 300 CPU s and three dev scorings (about 40 min on 2 "
        "cores); its parts run in tests/test_grpo.py and tests/test_bench_cpu_budget.py"),
    "python bench/grpo.py --default-args eval.limit=50 --starts final --budget-s 900 --lr 1e-4 --grpo-args "
    "data.batch_size=8 --trl-steps 4 --merge grpo_early.json": Elsewhere(
        "a benchmark: two training runs of 900 CPU s, three dev scorings and the TRL step timing (about an hour on 2 "
        "cores); its parts run in tests/test_grpo.py and tests/test_bench_cpu_budget.py"),
}

PLACEHOLDERS = {  # documented path -> (provider, how to derive the real path from the provider's dir)
    # the SParC run's last epoch: epoch_7 of the documented 8, epoch_0 of the 1-epoch smoke run (before the generic key)
    "outputs/<date>/<time>/predictions/epoch_7_": ("sparc", lambda d: f"{d}/predictions/epoch_0_"),
    "outputs/<date>/<time>": ("run", lambda d: d),
    "multirun/2026-11-25/14-03-12": ("sweep", lambda d: d),
    "DIR --metric": ("sweep", lambda d: f"{d} --metric"),
    "'DIR'": ("run", lambda d: repr(str(d))),
    "--run RUN ": ("run", lambda d: f"--run {d} "),
}


# -- reading the documents ----------------------------------------------------------------------------------------
def _strip_comment(line: str) -> str:
    """Drop a trailing `# comment` that is outside quotes."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def documented_commands() -> list[tuple[str, str]]:
    """(doc, command) for every command in the documents, `&&` chains split into their parts."""
    found: list[tuple[str, str]] = []
    for doc in DOCS:
        text = (REPO / doc).read_text(encoding="utf-8")
        in_block, lang, pending = False, "", ""
        for raw in text.splitlines():
            fence = re.match(r"^\s*```(\w*)", raw)
            if fence:
                in_block, lang = (not in_block), fence.group(1)
                continue
            if in_block:
                if lang not in ("bash", "sh", "shell", "console"):
                    continue
                line = pending + _strip_comment(raw.strip())
                if line.endswith("\\"):
                    pending = line[:-1].rstrip() + " "
                    continue
                pending = ""
                if line and not line.startswith("#"):
                    found += [(doc, part.strip()) for part in line.split(" && ")]
                continue
            for span in re.findall(r"`([^`\n]+)`", raw):
                if span.startswith(STARTS) and not re.fullmatch(r"[A-Z_]+=\S*", span):  # not a bare VAR=x
                    found.append((doc, span.strip()))
    return found


def test_every_documented_command_is_known():
    """A README example nobody maps here is an example nobody runs: add it to EXAMPLES with how to check it."""
    commands = {c for _, c in documented_commands()}
    unknown = sorted(commands - set(EXAMPLES))
    assert not unknown, "README commands with no entry in tests/test_readme.py EXAMPLES:\n" + "\n".join(unknown)
    stale = sorted(set(EXAMPLES) - commands)
    assert not stale, "EXAMPLES entries no README shows any more:\n" + "\n".join(stale)


def test_ci_runs_the_install_and_test_commands():
    """`.ci/run` performs the README's install and test commands (its venv path and quiet flags aside)."""
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    ci = re.sub(r'"?\$VENV"?', ".venv", ci).replace("$PY ", "python ").replace(" -q", "").replace('"', "")
    for command, how in EXAMPLES.items():
        if isinstance(how, Ci):
            extras = re.fullmatch(r'pip install -e "\.\[([\w,]+)\]"', command)
            if extras:  # the package with these extras: .ci/run installs it with at least these
                ci_extras = re.search(r"pip install -e \.\[([\w,]+)\]", ci)
                assert ci_extras and set(extras[1].split(",")) <= set(ci_extras[1].split(",")), command
                continue
            words = command.replace('"', "").split()
            if words[0] == "pip":  # .ci/run calls pip through the venv's python
                words = ["python", "-m", *words]
            assert " ".join(words) in ci, f"{command!r} is not what .ci/run does"


def test_synopses_name_real_options():
    for command, how in EXAMPLES.items():
        if not isinstance(how, Synopsis) or how.verb == "train":
            continue
        proc = subprocess.run([sys.executable, "-m", "text2sql", how.verb, "--help"], cwd=REPO, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        for option in re.findall(r"(--[a-z][\w-]*)", command):
            assert option in proc.stdout, f"{command!r}: `text2sql {how.verb}` has no {option}"


def test_covering_tests_exist():
    for command, how in EXAMPLES.items():
        if isinstance(how, Covered):
            assert (REPO / how.test.split("::")[0]).is_file(), f"{command}: {how.test} does not exist"


def test_elsewhere_says_why():
    for command, how in EXAMPLES.items():
        if isinstance(how, Elsewhere):
            assert len(how.why) > 10, command


# -- links between the pages --------------------------------------------------------------------------------------
def _prose(text: str) -> list[str]:
    """The lines outside fenced code blocks (a `# comment` in a bash block is no heading)."""
    lines, in_block = [], False
    for line in text.splitlines():
        if re.match(r"^\s*```", line):
            in_block = not in_block
        elif not in_block:
            lines.append(line)
    return lines


def anchors(text: str) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation but `-` and `_` dropped, spaces to `-`,
    a repeated heading suffixed -1, -2, ..."""
    seen: dict[str, int] = {}
    for line in _prose(text):
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading[1].lower()).replace(" ", "-")
            seen[slug] = seen.get(slug, -1) + 1
    return {f"{slug}-{i}" if i else slug for slug, n in seen.items() for i in range(n + 1)}


def links(doc: str) -> list[tuple[Path, str]]:
    """(target file, anchor) of every relative link and image in `doc`, resolved from the page's folder."""
    found = []
    for line in _prose((REPO / doc).read_text(encoding="utf-8")):
        for target in re.findall(r"\]\(([^)\s]+)\)", line):
            if re.match(r"^[a-z]+:", target):
                continue  # https:, mailto:
            path, _, anchor = target.partition("#")
            found.append((((REPO / doc).parent / path).resolve() if path else (REPO / doc).resolve(), anchor))
    return found


def test_doc_links_resolve():
    """Every relative link of the README and docs/ names a file that exists and, into a page, a heading it has."""
    broken = []
    for doc in DOCS:
        for target, anchor in links(doc):
            if not target.exists():
                broken.append(f"{doc}: {target.relative_to(REPO)} does not exist")
            elif anchor and target.suffix == ".md" and anchor not in anchors(target.read_text(encoding="utf-8")):
                broken.append(f"{doc}: {target.relative_to(REPO)} has no heading #{anchor}")
    assert not broken, "\n".join(broken)


def test_every_docs_page_is_reachable_from_the_readme():
    """The README is the table of contents: each docs/ page is linked from it, or from a page it links to."""
    reached, todo = set(), ["README.md"]
    while todo:
        doc = todo.pop()
        for target, _ in links(doc):
            name = target.relative_to(REPO).as_posix() if target.is_relative_to(REPO) else ""
            if name.endswith(".md") and name not in reached and target.is_file():
                reached.add(name)
                todo.append(name)
    pages = {d for d in DOCS if d.startswith("docs/")}
    assert pages <= reached, f"docs pages no link leads to from README.md: {sorted(pages - reached)}"


def test_anchor_rule_is_githubs():
    text = "# Reproduce DB-GPT-Hub (EX 0.789)\n## GPU acceptance (`bench/gpu_acceptance.sh`)\n```bash\n# not one\n```\n" \
           "## Multi-turn: SParC, CoSQL, Chase\n## Notes\n## Notes\n"
    assert anchors(text) == {"reproduce-db-gpt-hub-ex-0789", "gpu-acceptance-benchgpu_acceptancesh",
                             "multi-turn-sparc-cosql-chase", "notes", "notes-1"}


# -- running them ---------------------------------------------------------------------------------------------------
def _spider_dir() -> Path | None:
    for candidate in (os.environ.get("SPIDER_DIR"), str(REPO.parent / "shared" / "spider")):
        if candidate and (Path(candidate) / "dev.json").is_file():
            return Path(candidate)
    return None


def _argv(command: str, how: Run, provided: dict[str, Path]) -> tuple[list[str], dict[str, str]]:
    for placeholder, (name, derive) in PLACEHOLDERS.items():
        if placeholder in command:
            if name not in provided:
                pytest.skip(f"needs the output of the example that provides {name!r}, which did not run")
            command = command.replace(placeholder, str(derive(provided[name])))
    env = dict(os.environ)
    words = shlex.split(command)
    while words and re.match(r"^[A-Z_]+=", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    env.update(dict(how.env))
    env.setdefault("PYTHON", sys.executable)  # scripts under bench/ call $PYTHON
    if words[0] == "python":
        words[0] = sys.executable
    elif words[0] == "torchrun":  # the console script of the same torch (a venv may not be on PATH)
        words = [sys.executable, "-m", "torch.distributed.run", *words[1:]]
    elif words[0] == "text2sql":
        words = [sys.executable, "-m", "text2sql", *words[1:]]
    return words + list(how.extra), env


def _new_dir(before: set[Path], root: Path) -> Path | None:
    after = {p for p in root.glob("*/*") if p.is_dir()}
    new = sorted(after - before, key=lambda p: p.stat().st_mtime)
    return new[-1] if new else None


# examples that need another's output dir run after every provider (a stable sort keeps the README's order otherwise)
RUNNABLE = sorted((c for c, how in EXAMPLES.items() if isinstance(how, Run)), key=lambda c: bool(EXAMPLES[c].needs))


@pytest.mark.parametrize("command", [c for c, how in EXAMPLES.items() if isinstance(how, Compose)])
def test_cluster_example_composes(command: str):
    words = [w for w in shlex.split(command) if w != "-m"]
    proc = subprocess.run([sys.executable, *words[1:], "--cfg", "hydra"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert EXAMPLES[command].expect in proc.stdout, proc.stdout[-2000:]


@pytest.fixture(scope="module")
def provided() -> dict[str, Path]:
    return {}


@pytest.mark.slow
@pytest.mark.parametrize("command", RUNNABLE)
def test_readme_example(command: str, provided: dict[str, Path]):
    how: Run = EXAMPLES[command]
    if how.spider and _spider_dir() is None:
        pytest.skip("real Spider not found (SPIDER_DIR or ../shared/spider)")
    argv, env = _argv(command, how, provided)
    for path in how.fresh:
        shutil.rmtree(REPO / path, ignore_errors=True)
    roots = [REPO / "outputs", REPO / "multirun"]
    before = {p for root in roots for p in root.glob("*/*") if p.is_dir()}
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=how.timeout)
    if how.fails is None:
        assert proc.returncode == 0, f"{command}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"
    else:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode != 0, f"{command} should fail without CUDA/weights/data:\n{proc.stdout[-2000:]}"
        assert "Traceback" not in proc.stderr, f"{command}: a traceback instead of one line:\n{proc.stderr[-3000:]}"
        assert lines and re.search(how.fails, proc.stderr), f"{command}: unexpected error:\n{proc.stderr[-2000:]}"
    if how.provides:
        made = _new_dir(before, roots[1] if " -m " in command else roots[0])
        assert made is not None, f"{command} made no run dir"
        provided[how.provides] = made
