"""Decoding strategies in one place (`eval.decoding`): the EX callback, `text2sql predict` and `text2sql ask` call
:func:`decode` (in one process through :func:`~text2sql.eval.candidates.decode_local`) and differ only in how they generate and execute.

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
Candidates run through the evaluator's worker pool (read-only guard, timeouts, write refusal). The settings
(`Decoding`: strategy, beams, samples, ...) are checked in text2sql/config/decoding.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from text2sql.config.decoding import Decoding


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


# --- executions through an evaluator ---------------------------------------------------------------------------


def executor(evaluator) -> Execute:
    """An `Execute` over an ExecutionEvaluator's worker pool."""
    def execute(pairs: list[tuple[str, str]]) -> list[Execution]:
        return [Execution(**r) for r in evaluator.run_sql(pairs)]
    return execute

