"""The run, loaded once: prompt ids from a question and a schema, SQL from a batch of prompt ids.

Nothing here is new code for the model: the config and weights are found as `predict` finds them
(`resolve_source`), loaded as `ask` loads them (`load_for_inference`), prompts are the run's record, template and
source budget (`make_record` / `encode_source`, as `ask` builds them) and SQL comes from `decode_local` (the EX
callback's decoding: greedy by default, the run's `eval.decoding`). Pieces of `ask.Asker` that need one open
database are rebuilt here around a registry of many (`databases.Databases`).
"""

from __future__ import annotations

import argparse
import dataclasses
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from text2sql.errors import UserError


@dataclass(frozen=True)
class Schema:
    """What the prompt shows of a database, and where its SQL runs."""

    db_id: str
    spider: object | None = None  # a SpiderSchema (read from a database file or from CREATE statements)
    text: str | None = None  # verbatim schema text: the `code` form's CREATE statements, or text that is not DDL
    db_file: str | None = None  # the SQLite file SQL runs on; None for a schema given as text


class RunSpec:
    """A run's config, weights, tokenizer and prompt settings: everything but the model weights in memory."""

    def __init__(self, run_dir: Path, best: bool = False, overrides: Sequence[str] = (), name: str | None = None,
                 tokenizer=None) -> None:
        from text2sql.config.decoding import Decoding
        from text2sql.inference.predict import resolve_subtree, resolve_source

        if not Path(run_dir).is_dir():
            raise UserError(f"run dir not found: {run_dir}")
        source = argparse.Namespace(run=Path(run_dir), adapter=None, checkpoint=None, best=best)
        self.cfg, self.weights, _, self.which = resolve_source(source, list(overrides), verb="serve")  # --best: predict's
        self.run_dir = Path(run_dir).resolve()
        self.name = name or self.run_dir.name
        self.data_cfg, self.eval_cfg = resolve_subtree(self.cfg, "data"), resolve_subtree(self.cfg, "eval")
        self.model_cfg = resolve_subtree(self.cfg, "model")
        self.prompt_form = str(self.cfg.dataset.get("prompt", "zero_shot"))
        self.decoding = Decoding.from_config(self.eval_cfg.get("decoding"))
        self.max_new_tokens = int(self.eval_cfg.max_new_tokens)
        self.batch_size = int(self.eval_cfg.batch_size)
        self.timeout = float(self.eval_cfg.timeout)
        self.tokenizer = tokenizer
        self._lock = threading.Lock()  # a fast tokenizer is not to be shared by threads mid-call

    def base_model_path(self) -> str:
        """The base model dir or hub id the weights go on (the tiny model is built here on first use)."""
        from text2sql.data.datasets import corpus
        from text2sql.inference.ask import DatasetOnDemand
        from text2sql.model.load import resolve_model_path

        return resolve_model_path(self.model_cfg, corpus=lambda: corpus(DatasetOnDemand(self.cfg), "train"))

    def load_tokenizer(self):
        """The tokenizer alone (a front for vLLM needs no weights): the adapter's copy when it saved one."""
        from text2sql.model.load import load_tokenizer

        kind, path = self.weights or (None, None)
        if kind == "model" or (kind == "adapter" and (path / "tokenizer_config.json").is_file()):
            self.tokenizer = load_tokenizer(self.model_cfg, str(path))
        else:
            self.tokenizer = load_tokenizer(self.model_cfg, self.base_model_path())
        return self.tokenizer

    def weights_line(self) -> str:
        return f"{self.weights[0]} {self.weights[1]}" if self.weights else "none (the untrained base model)"

    def prompt_ids(self, question: str, schema: Schema, history: Sequence[tuple[str, str]] = ()) -> list[int]:
        """The prompt of one question, as `ask` and training build it; `history`: earlier (question, SQL) turns."""
        from text2sql.data.forms import sqlite_create_statements
        from text2sql.data.prompt import INPUT_FORMAT, encode_source, make_record
        from text2sql.data.spider import SpiderExample

        source = schema.text
        if source is None and self.prompt_form == "code":
            source = sqlite_create_statements(Path(schema.db_file)) if schema.db_file else None
        record = make_record(SpiderExample(schema.db_id, question, ""), schema.spider, self.prompt_form, source)
        record["history"] = [[INPUT_FORMAT.format(q), sql] for q, sql in history]
        with self._lock:
            ids, _ = encode_source(record, self.tokenizer, self.data_cfg.template, self.data_cfg.max_source_length,
                                   system_prompt=self.data_cfg.system_prompt)
        return ids

    def text_ids(self, text: str) -> list[int]:
        """A raw prompt (OpenAI's completions without a schema) as the model's tokenizer reads it, bos first."""
        with self._lock:
            ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        bos = self.tokenizer.bos_token_id
        return ([bos] if bos is not None and self.data_cfg.template != "chat" else []) + ids

    def count_tokens(self, text: str) -> int:
        with self._lock:
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


class LocalGenerator:
    """The run's model in this process (CPU or this process's GPU): `generate` is one `decode_local` call."""

    backend = "local"

    def __init__(self, spec: RunSpec, device: str = "auto", db_dir: Path | None = None) -> None:
        from transformers.utils import logging as hf_logging

        from text2sql.inference.ask import DatasetOnDemand
        from text2sql.inference.predict import load_for_inference

        hf_logging.disable_progress_bar()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.model, tokenizer, self.device = load_for_inference(spec.cfg, DatasetOnDemand(spec.cfg),
                                                                    spec.weights, device)
        spec.tokenizer = tokenizer
        self.spec, self.db_dir = spec, db_dir
        self._evaluator = None  # runs candidates of execution_guided / self_consistency, made on first use
        self.vocab_size = int(getattr(self.model.config, "vocab_size", 0) or len(tokenizer))

    def generate(self, sources: list[list[int]], max_new_tokens: int, strategy: str | None,
                 db_files: list[str]) -> list:
        """Predictions (`decoding.Prediction`) for `sources`, in order, from one decode call over all of them."""
        from text2sql.eval.candidates import decode_local

        decoding = self.spec.decoding if strategy is None else dataclasses.replace(self.spec.decoding,
                                                                                   strategy=strategy)
        if decoding.executes and self._evaluator is None:
            from text2sql.eval.execute import ExecutionEvaluator

            self._evaluator = ExecutionEvaluator(self.db_dir, timeout=self.spec.timeout, workers=0)
        return decode_local(self.model, self.spec.tokenizer, sources, db_files, decoding,
                            evaluator=self._evaluator if decoding.executes else None, batch_size=len(sources),
                            max_new_tokens=max_new_tokens)

    def close(self) -> None:
        if self._evaluator is not None:
            self._evaluator.close()
