"""Load a directory in BIRD's layout with the same one-line errors as the Spider loader.

Layout (as BIRD ships it)::

    train/train.json   train/train_tables.json   train/train_databases/<db_id>/<db_id>.sqlite
    dev/dev.json       dev/dev_tables.json       dev/dev_databases/<db_id>/<db_id>.sqlite

Records hold ``db_id``, ``question``, ``evidence`` (BIRD's external knowledge, may be empty) and the gold SQL
under ``SQL``; dev records also carry ``question_id`` and ``difficulty`` (simple / moderate / challenging),
which the execution-accuracy metrics are broken down by. The tables files have Spider's format.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from text2sql.data.spider import SpiderDataset, SpiderExample, root_source
from text2sql.errors import DataError

ENV_VAR = "BIRD_DIR"
DEFAULT_ROOT = "data/bird"
DIFFICULTY_LEVELS = ("simple", "moderate", "challenging")  # BIRD's own, in its evaluation table's order
SPLIT_DIRS = {"train": "train", "dev": "dev"}


@dataclass(frozen=True)
class BirdExample(SpiderExample):
    evidence: str = ""  # what the prompt shows ("" when dataset.evidence=false)
    difficulty: str | None = None  # dev only
    question_id: int | None = None


def resolve_bird_root(root: str | os.PathLike | None) -> Path:
    """explicit root > $BIRD_DIR > data/bird; a missing or non-BIRD directory is one line saying what to pass."""
    given = root not in (None, "")
    path = Path(root if given else os.environ.get(ENV_VAR) or DEFAULT_ROOT).expanduser()
    source = root_source(root, ENV_VAR, DEFAULT_ROOT)
    if not (path / "dev" / "dev.json").is_file():
        what = "not found" if not path.is_dir() else "has no dev/dev.json"
        raise DataError(
            f"BIRD directory {what}: {path.resolve()} (from {source}); point at BIRD's root (train/train.json, "
            f"dev/dev.json, ...) with dataset.root=DIR or {ENV_VAR}=DIR")
    return path.resolve()


class BirdDataset(SpiderDataset):
    """BIRD's layout: one folder per split with its own tables file and databases; gold SQL under `SQL`."""

    eval_style = "bird"
    QUERY_KEY = "SQL"

    def __init__(self, root: str | os.PathLike | None, evidence: bool = True):
        super().__init__(resolve_bird_root(root))
        self.evidence = evidence

    def _split_dir(self, split: str) -> Path:
        if split not in SPLIT_DIRS:
            raise DataError(f"unknown BIRD split {split!r}; expected one of {', '.join(SPLIT_DIRS)}")
        return self.root / SPLIT_DIRS[split]

    def split_files(self, split: str) -> list[Path]:
        return [self._split_dir(split) / f"{split}.json"]

    def tables_path(self, split: str = "dev") -> Path:
        return self._split_dir(split) / f"{split}_tables.json"

    def db_dir(self, split: str = "dev") -> Path:
        return self._split_dir(split) / f"{split}_databases"

    def _example(self, item: dict, path: Path, index: int) -> BirdExample:
        evidence = item.get("evidence") or ""
        difficulty = item.get("difficulty")
        if not isinstance(evidence, str):
            raise DataError(f"{path} record {index}: evidence must be a string, got {evidence!r}")
        if difficulty is not None and difficulty not in DIFFICULTY_LEVELS:
            raise DataError(f"{path} record {index}: difficulty {difficulty!r} is not one of "
                                  f"{', '.join(DIFFICULTY_LEVELS)}")
        return BirdExample(item["db_id"], item["question"], item[self.QUERY_KEY],
                           evidence=evidence if self.evidence else "", difficulty=difficulty,
                           question_id=item.get("question_id"))

    def levels(self, split: str) -> list[str | None]:
        return [ex.difficulty for ex in self.examples(split)]
