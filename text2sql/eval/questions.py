"""The questions file of a scored subset: the split JSON's entries of exactly the examples a gold file holds, in
its order, so `text2sql evaluate --questions` (BIRD's per-difficulty EX, the questions in `--out`) re-scores a run
that scored a subset (`eval.limit`), whose gold file no longer aligns with the whole dev.json.

Named after the gold file (`questions_beside`): `epoch_3_gold.sql` -> `epoch_3_questions.json`, `pred.gold.sql` ->
`pred.questions.json`; `text2sql evaluate` reads it from there when `--questions` is not given. Pure file work:
no torch, no model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from text2sql.atomic import atomic_path
from text2sql.errors import UserError


def questions_beside(gold: str | os.PathLike) -> Path:
    """Where the questions of `gold` are: its name with `gold` replaced by `questions`, as JSON."""
    gold = Path(gold)
    stem = gold.stem
    for tail in ("_gold", ".gold"):
        if stem.endswith(tail):
            return gold.with_name(f"{stem[:-len(tail)]}{tail[0]}questions.json")
    return gold.with_name(f"{stem}.questions.json")


def split_entries(split_files: Sequence[str | os.PathLike]) -> list[dict]:
    """The split's JSON entries, the files concatenated in order (Spider's train_spider + train_others)."""
    entries: list[dict] = []
    for path in split_files:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise UserError(f"{path}: expected a JSON array of examples")
        entries.extend(data)
    return entries


def write_questions(gold: str | os.PathLike, split_files: Sequence[str | os.PathLike],
                    indices: Sequence[int]) -> Path:
    """Write the entries `indices` (positions in the split, in the gold file's order) of the split JSON beside
    `gold` (`questions_beside`), atomically; returns the path. Call it where the gold file is written."""
    entries = split_entries(split_files)
    out = questions_beside(gold)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps([entries[i] for i in indices], indent=1, ensure_ascii=False) + "\n",
                       encoding="utf-8")
    return out
