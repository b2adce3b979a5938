"""Hydra targets of the `dataset` group: each returns a `SpiderDataset` (one loader for every dataset).

Dataset configs also carry keys for other stages (name, fingerprint, token budgets); targets ignore them.
"""

from __future__ import annotations

from text2sql.data.sample import ensure_sample
from text2sql.data.spider import SpiderDataset


def spider(root: str | None = None, **_ignored) -> SpiderDataset:
    """Real Spider at `root` (default: $SPIDER_DIR, else data/spider); a missing dir is one clear error."""
    return SpiderDataset(root)


def sample(root: str, seed: int = 0, n_train: int = 3000, n_dev: int = 200, **_ignored) -> SpiderDataset:
    """The generated sample, written to `root` on first use and read back like Spider."""
    return SpiderDataset(ensure_sample(root, seed=seed, n_train=n_train, n_dev=n_dev))


def corpus(dataset: SpiderDataset, split: str = "train"):
    """Text the tiny model's tokenizer is trained on: every question and target of the split, and each
    distinct instruction (schema) once, so the repeated instruction does not crowd words out of the vocab."""
    seen = set()
    for record in dataset.records(split):
        if record["instruction"] not in seen:
            seen.add(record["instruction"])
            yield record["instruction"]
        yield record["input"]
        yield record["output"]
