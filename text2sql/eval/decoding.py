"""Decoding strategies in one place (`eval.decoding`): the EX callback, `text2sql predict` and `text2sql ask` call
:func:`decode` (through :func:`decode_local` in one process) and differ only in how they generate and execute.

* ``greedy``: today's batched greedy decoding (:func:`~text2sql.eval.generate.generate_sql`), unchanged.
* ``beam``: the top sequence of a ``num_beams`` beam search.
* ``sample``: ``num_samples`` samples (``temperature``, ``top_p``), the one with the best mean token log-prob.
* ``execution_guided``: greedy first; an example whose greedy SQL fails to execute (or, with ``require_rows``,
  returns no rows) gets ``fallback`` candidates (beam or samples) executed one round at a time, in order; the first
  that runs wins (Wang et al. 2018). Examples whose greedy SQL runs cost nothing extra.
* ``self_consistency``: ``num_samples`` samples are executed; the largest group of equal result sets wins, ties go
  to the group holding the best-scored sample, whose SQL is the prediction.

Sampling is reproducible per example: each row draws from its own stream, seeded by (seed, the prompt's token ids,
sample number), so the samples do not depend on batch size, batch composition or the number of ranks.
Candidates run through the evaluator's worker pool (read-only guard, timeouts, write refusal).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields

from text2sql.errors import ConfigError

STRATEGIES = ("greedy", "beam", "sample", "execution_guided", "self_consistency")
FALLBACKS = ("beam", "sample")  # execution_guided's candidates after greedy


@dataclass(frozen=True)
class Decoding:
    """The `eval.decoding` block, checked."""

    strategy: str = "greedy"
    num_beams: int = 4
    num_samples: int = 8
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0
    fallback: str = "beam"
    require_rows: bool = False

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"eval.decoding.strategy={self.strategy} is not one of {', '.join(STRATEGIES)}")
        if self.fallback not in FALLBACKS:
            raise ConfigError(f"eval.decoding.fallback={self.fallback} is not one of {', '.join(FALLBACKS)}")
        for name, ok in (("num_beams", self.num_beams >= 1), ("num_samples", self.num_samples >= 1),
                         ("temperature", self.temperature > 0), ("top_p", 0 < self.top_p <= 1)):
            if not ok:
                raise ConfigError(f"eval.decoding.{name}={getattr(self, name)} is out of range")

    @classmethod
    def from_config(cls, cfg: Mapping | str | None) -> "Decoding":
        """From a config block (DictConfig or dict), a strategy name, or None (greedy)."""
        if cfg is None:
            return cls()
        if isinstance(cfg, str):
            return cls(strategy=cfg)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ConfigError(f"eval.decoding.{unknown[0]} is not a decoding key ({', '.join(sorted(known))})")
        return cls(**{k: cfg[k] for k in cfg})

    @property
    def first_mode(self) -> str:
        """The generation mode every example goes through ("greedy", "beam" or "sample"): the one to show progress of."""
        return {"execution_guided": "greedy", "self_consistency": "sample"}.get(self.strategy, self.strategy)

    @property
    def executes(self) -> bool:
        """Whether candidates are executed (the caller must provide an executor)."""
        return self.strategy in ("execution_guided", "self_consistency")


@dataclass
class Candidate:
    sql: str
    score: float = 0.0  # mean token log-prob (beam: HF's length-normalised beam score); greedy: 0


@dataclass
class Execution:
    """What running one candidate gave: `status` "ok" or a failure status of the evaluator."""

    status: str
    rows: int = 0
    key: str | None = None  # a digest of the result set, equal for equal bags of rows (columns in any order)
    error: str | None = None


@dataclass
class Prediction:
    sql: str
    strategy: str
    candidates: int = 1  # distinct candidates weighed (executed, for execution_guided / self_consistency)


@dataclass
class Timings:
    """Seconds spent generating and executing, summed over a `decode` call (bench/decoding.py reports them)."""

    generate_s: float = 0.0
    execute_s: float = 0.0


# (indices, mode) -> candidates per index; mode is "greedy", "beam" or "sample"
Generate = Callable[[list[int], str], list[list[Candidate]]]
# [(database file, sql)] -> executions, in order
Execute = Callable[[list[tuple[str, str]]], list[Execution]]


def decode(n: int, db_files: Sequence[str], decoding: Decoding, generate: Generate, execute: Execute | None = None,
           timings: Timings | None = None) -> list[Prediction]:
    """Predictions for examples 0..n-1. Every rank may call this with collective `generate`/`execute` callables:
    the control flow depends only on their results, so all ranks make the same calls."""
    timings = timings if timings is not None else Timings()

    def gen(indices: list[int], mode: str) -> list[list[Candidate]]:
        start = time.perf_counter()
        out = generate(indices, mode) if indices else []
        timings.generate_s += time.perf_counter() - start
        return out

    def run(pairs: list[tuple[str, str]]) -> list[Execution]:
        if execute is None:
            raise ValueError(f"decoding strategy {decoding.strategy} executes candidates: an executor is needed")
        start = time.perf_counter()
        out = execute(pairs) if pairs else []
        timings.execute_s += time.perf_counter() - start
        return out

    strategy = decoding.strategy
    everything = list(range(n))
    if strategy in ("greedy", "beam", "sample"):
        cands = gen(everything, strategy)
        return [Prediction(c[0].sql if c else "", strategy, len(c)) for c in cands]
    if strategy == "execution_guided":
        return _execution_guided(everything, db_files, decoding, gen, run)
    return _self_consistency(everything, db_files, gen, run)


def _accepted(result: Execution, decoding: Decoding) -> bool:
    return result.status == "ok" and (result.rows > 0 or not decoding.require_rows)


def _execution_guided(everything, db_files, decoding: Decoding, gen, run) -> list[Prediction]:
    greedy = [c[0].sql if c else "" for c in gen(everything, "greedy")]
    first = run([(db_files[i], greedy[i]) for i in everything])
    preds = [Prediction(greedy[i], "execution_guided", 1) for i in everything]
    failing = [i for i in everything if not _accepted(first[i], decoding)]
    runs = {i: first[i] for i in failing}  # the best fallback so far: the first candidate that ran at all
    queues = {}
    for i, cands in zip(failing, gen(failing, decoding.fallback)):
        queues[i] = [c.sql for c in cands if c.sql != greedy[i]]
    while True:  # one round per candidate position: each still-failing example executes its next candidate
        batch = [i for i in failing if queues[i]]
        if not batch:
            break
        sqls = [queues[i].pop(0) for i in batch]
        for i, sql, result in zip(batch, sqls, run([(db_files[i], s) for i, s in zip(batch, sqls)])):
            preds[i].candidates += 1
            if _accepted(result, decoding):
                preds[i].sql = sql
                failing.remove(i)
            elif result.status == "ok" and runs[i].status != "ok":  # runs but empty: better than an error
                preds[i].sql, runs[i] = sql, result
    return preds


def _self_consistency(everything, db_files, gen, run) -> list[Prediction]:
    cands = gen(everything, "sample")  # per example: distinct SQL, best score first
    pairs = [(db_files[i], c.sql) for i in everything for c in cands[i]]
    results = iter(run(pairs))
    preds = []
    for i in everything:
        votes = [(c, next(results)) for c in cands[i]]
        preds.append(Prediction(vote(votes), "self_consistency", len(votes)))
    return preds


def vote(votes: Sequence[tuple[Candidate, Execution]]) -> str:
    """The SQL of the largest group of candidates with equal result sets; ties to the group holding the best-scored
    candidate; that candidate's SQL. No candidate ran: the best-scored candidate (empty string if none)."""
    groups: dict[str, list[Candidate]] = {}
    for cand, result in votes:
        if result.status == "ok" and result.key is not None:
            groups.setdefault(result.key, []).append(cand)
    if not groups:
        return max((c for c, _ in votes), key=lambda c: c.score).sql if votes else ""
    best = max(groups.values(), key=lambda g: (len(g), max(c.score for c in g)))
    return max(best, key=lambda c: c.score).sql


# --- one process: the model here, executions through an evaluator --------------------------------------------------


def decode_local(model, tokenizer, sources: Sequence[Sequence[int]], db_files: Sequence[str], decoding: Decoding, *,
                 evaluator=None, batch_size: int = 16, max_new_tokens: int = 128, progress=None,
                 synced_gpus: bool = False, timings: Timings | None = None) -> list[Prediction]:
    """`decode` with this process's model; `evaluator` (an ExecutionEvaluator) runs candidates when the strategy
    executes them. `db_files[i]`: the SQLite file example i's SQL runs on (ignored by non-executing strategies)."""
    from text2sql.eval.candidates import generate_candidates

    def generate(indices: list[int], mode: str) -> list[list[Candidate]]:
        return generate_candidates(model, tokenizer, [sources[i] for i in indices], mode, decoding,
                                   batch_size=batch_size, max_new_tokens=max_new_tokens,
                                   progress=progress if mode == decoding.first_mode else None,
                                   synced_gpus=synced_gpus)

    execute = executor(evaluator) if evaluator is not None else None
    return decode(len(sources), db_files, decoding, generate, execute, timings)


def executor(evaluator) -> Execute:
    """An `Execute` over an ExecutionEvaluator's worker pool."""
    def execute(pairs: list[tuple[str, str]]) -> list[Execution]:
        return [Execution(**r) for r in evaluator.run_sql(pairs)]
    return execute

