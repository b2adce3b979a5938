"""The EX callback also scores exact set match: val/exact_match and val/em_<level>, an exact_match field per
saved prediction; off with exact_match=False (no parsing at all)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from text2sql.data.datamodule import EvalItem
from text2sql.data.sample import generate_sample
from text2sql.data.spider import SpiderDataset
from text2sql.eval.callback import ExecutionAccuracyCallback


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return generate_sample(tmp_path_factory.mktemp("sample"), n_train=20, n_dev=12)


def _trainer(root):
    return SimpleNamespace(datamodule=SimpleNamespace(dataset=SpiderDataset(root)), loggers=[], current_epoch=0,
                           global_step=0)


@pytest.mark.parametrize("exact_match", [True, False])
def test_callback_logs_exact_match(sample, tmp_path, exact_match):
    dev = json.loads((sample / "dev.json").read_text())
    items = [EvalItem(i, d["db_id"], d["question"], d["query"], []) for i, d in enumerate(dev)]
    # half right as written, a quarter right in result but not in form, a quarter wrong
    preds = []
    for i, d in enumerate(dev):
        q = d["query"]
        preds.append(q if i % 4 < 2 else q.replace("SELECT ", "SELECT DISTINCT ", 1) if i % 4 == 2 else "SELECT 1")
    cb = ExecutionAccuracyCallback(output_dir=str(tmp_path), workers=0, exact_match=exact_match)
    cb._items = items
    metrics = cb._score(_trainer(sample), preds)
    cb.teardown(None, None, "fit")
    saved = [json.loads(x) for x in (tmp_path / "predictions" / "epoch_0.jsonl").read_text().splitlines()]
    if not exact_match:
        assert not any("exact" in k or k.startswith("val/em_") for k in metrics)
        assert "exact_match" not in saved[0] and cb._matcher is None
        return
    # DISTINCT is ignored by EM (official DISABLE_DISTINCT): 3 in 4 are exact; "SELECT 1" never is
    want = [i % 4 != 3 for i in range(len(dev))]
    assert [r["exact_match"] for r in saved] == want
    assert metrics["val/exact_match"] == pytest.approx(sum(want) / len(want))
    levels = {r["hardness"] for r in saved}
    assert {f"val/em_{lv}" for lv in levels} <= set(metrics)
    assert "val/execution_accuracy" in metrics
