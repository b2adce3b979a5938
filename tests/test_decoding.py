"""Decoding strategies (`eval.decoding`): each on the tiny model, reproducible with a seed and whatever the batching;
execution-guided decoding recovering from a greedy SQL that fails; self-consistency's vote and tie rule."""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch

from tiny import tiny_model, tiny_setup
from text2sql.errors import ConfigError
from text2sql.config.decoding import STRATEGIES, Decoding
from text2sql.eval.candidates import decode_local
from text2sql.eval.decoding import Candidate, Execution, Prediction, decode, vote
from text2sql.eval.execute import ExecutionEvaluator


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoding")
    dataset, model_cfg, path, tokenizer = tiny_setup(root, n_train=60, n_dev=8)
    return dataset, model_cfg, path, tokenizer


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A database the model never saw: db_dir/shop/shop.sqlite, and an evaluator over it (one worker)."""
    db_dir = tmp_path_factory.mktemp("dbs")
    (db_dir / "shop").mkdir()
    conn = sqlite3.connect(db_dir / "shop" / "shop.sqlite")
    conn.executescript("CREATE TABLE singer(name TEXT, age INT); INSERT INTO singer VALUES ('Ann', 31), ('Bo', 25);")
    conn.commit()
    conn.close()
    with ExecutionEvaluator(db_dir, timeout=5, workers=1) as evaluator:
        yield evaluator, evaluator.db_file("shop")


def test_decoding_values_are_checked_in_one_line():
    from text2sql.config.schema import check_config
    from text2sql.inference.predict import compose_config

    with pytest.raises(ConfigError, match="eval.decoding.strategy=nope is not one of greedy, beam"):
        check_config(compose_config(["eval.decoding.strategy=nope"]))
    with pytest.raises(ConfigError, match="eval.decoding.top_p=1.5 must be in"):
        check_config(compose_config(["eval.decoding.top_p=1.5"]))
    with pytest.raises(ConfigError, match="eval.decoding.beams is not a decoding key"):
        Decoding.from_config({"beams": 2})
    assert Decoding.from_config(compose_config([]).eval.decoding) == Decoding()  # the default: greedy


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_strategy_is_reproducible_and_independent_of_batching(tiny, shop, strategy):
    from text2sql.data.prompt import encode_source
    from text2sql.eval.generate import generate_sql

    dataset, model_cfg, path, tokenizer = tiny
    evaluator, db = shop
    model = tiny_model(model_cfg, path, tokenizer)
    sources = [encode_source(r, tokenizer, "vanilla", 256)[0] for r in dataset.records("dev")[:5]]
    decoding = Decoding(strategy=strategy, num_beams=3, num_samples=3, fallback="sample")
    kw = dict(evaluator=evaluator, max_new_tokens=12)
    one = decode_local(model, tokenizer, sources, [db] * 5, decoding, batch_size=5, **kw)
    # another batch size and the reverse order: other batch companions, other padding, the same predictions
    two = decode_local(model, tokenizer, sources[::-1], [db] * 5, decoding, batch_size=2, **kw)[::-1]
    assert [p.sql for p in one] == [p.sql for p in two] and [p.candidates for p in one] == [p.candidates for p in two]
    assert {p.strategy for p in one} == {strategy}
    if strategy == "greedy":  # today's output, exactly
        assert [p.sql for p in one] == generate_sql(model, tokenizer, sources, batch_size=5, max_new_tokens=12)
    if strategy in ("sample", "self_consistency"):  # the seed matters
        other = decode_local(model, tokenizer, sources, [db] * 5, Decoding(strategy=strategy, num_samples=3, seed=1),
                             batch_size=5, **kw)
        assert [p.sql for p in other] != [p.sql for p in one]
    if strategy == "execution_guided":  # a random model's SQL never runs: greedy, then every distinct sample
        assert all(2 <= p.candidates <= 4 for p in one)


FAILS, RUNS = "SELECT name FROM nope", "SELECT count(*) FROM singer"


@pytest.fixture(scope="module")
def two_minded(tiny):
    """The tiny model taught one prompt's two answers, 3:2: greedy says FAILS (no such table), RUNS is second."""
    dataset, model_cfg, path, tokenizer = tiny
    torch.manual_seed(0)
    model = tiny_model(model_cfg, path, tokenizer)
    prompt = tokenizer("How many singers are there? SQL:")["input_ids"]
    rows = [prompt + tokenizer(" " + sql)["input_ids"] + [tokenizer.eos_token_id] for sql in [FAILS] * 3 + [RUNS] * 2]
    width = max(map(len, rows))
    ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
    labels = ids.clone()
    labels[:, : len(prompt)] = -100
    labels[ids == tokenizer.pad_token_id] = -100
    optim = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(80):
        optim.zero_grad()
        model(input_ids=ids, attention_mask=(labels != -100) | (torch.arange(width) < len(prompt)),
              labels=labels).loss.backward()
        optim.step()
    model.eval()
    return model, tokenizer, prompt


@pytest.mark.parametrize("fallback", ["beam", "sample"])
def test_execution_guided_takes_a_later_candidate_when_greedys_sql_fails(two_minded, shop, fallback):
    model, tokenizer, prompt = two_minded
    evaluator, db = shop
    (greedy,) = decode_local(model, tokenizer, [prompt], [db], Decoding(), max_new_tokens=16)
    assert greedy.sql == FAILS and evaluator.run_sql([(db, FAILS)])[0]["status"] == "exec_error"
    decoding = Decoding(strategy="execution_guided", num_beams=2, num_samples=6, temperature=1.0, fallback=fallback)
    (guided,) = decode_local(model, tokenizer, [prompt], [db], decoding, evaluator=evaluator, max_new_tokens=16)
    assert guided.sql == RUNS and guided.strategy == "execution_guided"
    assert guided.candidates == 2  # greedy's, then the first other candidate: it ran, nothing more was tried
    # self-consistency: the samples that fail cast no vote, whatever their number
    (consistent,) = decode_local(model, tokenizer, [prompt], [db], Decoding(strategy="self_consistency",
                                 num_samples=6, temperature=1.0), evaluator=evaluator, max_new_tokens=16)
    assert consistent.sql == RUNS and consistent.candidates >= 2


def scripted(candidates: dict[int, dict[str, list[str]]]):
    """A `generate` that returns fixed SQL per (example, mode), scored in list order."""
    def generate(indices, mode):
        return [[Candidate(s, -k) for k, s in enumerate(candidates[i][mode])] for i in indices]
    return generate


def test_execution_guided_can_require_rows(shop):
    evaluator, db = shop
    from text2sql.eval.decoding import executor

    empty = "SELECT name FROM singer WHERE age > 99"
    gen = scripted({0: {"greedy": [empty], "beam": [empty, "SELECT nope", "SELECT name FROM singer"]}})
    plain = decode(1, [db], Decoding(strategy="execution_guided"), gen, executor(evaluator))
    assert plain[0].sql == empty and plain[0].candidates == 1  # it runs: nothing else is generated or tried
    rows = decode(1, [db], Decoding(strategy="execution_guided", require_rows=True), gen, executor(evaluator))
    assert rows[0].sql == "SELECT name FROM singer" and rows[0].candidates == 3  # the duplicate is not re-run


def test_self_consistency_votes_by_result_set_and_breaks_ties_by_score(shop):
    evaluator, db = shop
    from text2sql.eval.decoding import executor

    # same result set written three ways (column order, row order, DISTINCT) vs a better-scored lone one
    same = ["SELECT name, age FROM singer", "SELECT age, name FROM singer ORDER BY age", "SELECT DISTINCT name, age FROM singer"]
    keys = {r["key"] for r in evaluator.run_sql([(db, s) for s in same])}
    assert len(keys) == 1
    lone, broken = "SELECT count(*) FROM singer", "SELECT * FROM nope"
    gen = scripted({0: {"sample": [broken, lone] + same}, 1: {"sample": [broken, broken + " x", "SELECT 1"]}})
    preds = decode(2, [db, db], Decoding(strategy="self_consistency"), gen, executor(evaluator))
    assert preds[0].sql == same[0] and preds[0].candidates == 5  # 3 votes beat 1 (and failures never vote)
    assert preds[1].sql == "SELECT 1"

    def run(key, status="ok"):
        return Execution(status, 1, key)
    a, b, c = Candidate("a", -0.5), Candidate("b", -0.1), Candidate("c", -0.9)
    assert vote([(a, run("x")), (b, run("y")), (c, run("x"))]) == "a"  # the larger group, not the best score
    assert vote([(a, run("x")), (b, run("y"))]) == "b"  # a tie: the group holding the best-scored candidate
    assert vote([(a, run(None, "exec_error")), (b, run(None, "timeout"))]) == "b"  # none ran: the best-scored
    assert vote([]) == ""


def test_predictions_record_the_strategy_and_candidates(tiny, tmp_path):
    from text2sql.data.datamodule import EvalItem
    from text2sql.data.spider import SpiderDataset
    from text2sql.eval.callback import ExecutionAccuracyCallback
    from text2sql.eval.score import score
    from text2sql.job.history import EpochLog
    from text2sql.job.run_dir import RunDir

    root = tiny[0].root
    dev = json.loads((root / "dev.json").read_text())[:3]
    cb = ExecutionAccuracyCallback(workers=0, exact_match=False, decoding={"strategy": "execution_guided", "num_beams": 2})
    items = [EvalItem(i, d["db_id"], d["question"], d["query"], []) for i, d in enumerate(dev)]
    dataset = SpiderDataset(root)
    scored = score(items, [Prediction(d["query"], "execution_guided", i + 1) for i, d in enumerate(dev)],
                   cb.evaluator(dataset), cb.matcher(dataset))
    cb.teardown(None, None, "fit")
    EpochLog(RunDir(tmp_path)).add_score(0, scored.metrics, scored)
    rows = [json.loads(x) for x in (tmp_path / "predictions" / "epoch_0.jsonl").read_text().splitlines()]
    assert [(r["decoding"], r["candidates"]) for r in rows] == [("execution_guided", n) for n in (1, 2, 3)]
    assert scored.rewards == [1.0, 1.0, 1.0] and scored.execution_accuracy == 1.0  # the gold itself


def test_bench_diagnosis_splits_greedys_failures_and_looks_at_the_fallback_candidates(two_minded, shop):
    """bench/decoding.py's untimed diagnosis: greedy's SQL does not execute, a fallback candidate runs and is correct."""
    import sys
    from types import SimpleNamespace

    from conftest import REPO_ROOT

    sys.path.insert(0, str(REPO_ROOT / "bench"))
    import decoding as bench

    model, tokenizer, prompt = two_minded
    evaluator, _ = shop
    decoding = Decoding(num_beams=2, num_samples=6, temperature=1.0)
    d = bench.diagnose(model, tokenizer, [prompt], [{"db_id": "shop", "output": RUNS}], decoding, evaluator,
                       SimpleNamespace(batch_size=4, max_new_tokens=16))
    assert (d["examples"], d["greedy_failures"], d["not_executing"], d["executing_wrong"]) == (1, 1, 1, 0)
    assert d["beam"]["not_executing_with_runnable"] == d["beam"]["not_executing_with_correct"] == 1
    assert bench.diagnosis_line(d).startswith("greedy fails on 1 of 1: 1 do not execute")
