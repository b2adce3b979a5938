"""Multi-turn text-to-SQL layouts (SParC, CoSQL, Chase) read as turns that the Spider code path understands.

Each file is a JSON array of interactions ``{"database_id", "interaction": [{"utterance", "query"}, ...]}``
(SParC and CoSQL also carry ``final``, unused). Every turn becomes one example in file order, and
`interaction_ids` says which interaction each belongs to, so `prompt.make_records` gives each turn the earlier
turns as its ``history`` (DB-GPT-Hub's ``is_multiple_turn``) and the evaluator scores question and interaction
match. File names are DB-GPT-Hub's ``SQL_DATA_INFO`` entries, relative to ``dataset.root``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from text2sql.data.spider import SpiderDataset, SpiderExample, read_json
from text2sql.errors import DataError


@dataclass(frozen=True)
class Layout:
    train: tuple[str, ...]
    dev: tuple[str, ...]
    tables: str = "tables.json"
    dev_gold: str = "dev_gold.txt"  # official gold: "SQL<TAB>db_id" lines, a blank line after each interaction


LAYOUTS: dict[str, Layout] = {
    "sparc": Layout(("train.json",), ("dev.json",)),
    "cosql": Layout(("sql_state_tracking/cosql_train.json",), ("sql_state_tracking/cosql_dev.json",),
                    dev_gold="sql_state_tracking/dev_gold.txt"),
    "chase": Layout(("chase_train.json",), ("chase_dev.json",), tables="chase_tables.json"),
}
DB_ID_KEY = "database_id"  # DB-GPT-Hub's db_id_name for every multi-turn source


class MultiTurnDataset(SpiderDataset):
    """A directory in one of LAYOUTS; `examples` are the turns, `interaction_ids` their interactions."""

    def __init__(self, root: str | os.PathLike | None, layout: str = "sparc"):
        if layout not in LAYOUTS:
            raise DataError(f"unknown multi-turn layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
        if root in (None, "") or not Path(root).expanduser().is_dir():
            raise DataError(f"{layout} directory not found: {root!r}; point at it with dataset.root=DIR "
                                  f"(it holds {LAYOUTS[layout].tables}, {', '.join(LAYOUTS[layout].train)}, ...)")
        super().__init__(root)
        self.layout_name, self.layout = layout, LAYOUTS[layout]
        self.tables_file = self.layout.tables
        self._interaction_ids: dict[str, list[int]] = {}

    def __repr__(self) -> str:
        return f"MultiTurnDataset({str(self.root)!r}, {self.layout_name!r})"

    def split_files(self, split: str) -> list[Path]:
        if split not in ("train", "dev"):
            raise DataError(f"unknown split {split!r}; expected train or dev")
        return [self.root / name for name in getattr(self.layout, split)]

    def _load(self, split: str) -> list[tuple[Path, int, SpiderExample]]:
        if split not in self._examples:
            rows, ids = [], []
            for path in self.split_files(split):
                data = read_json(path)
                if not isinstance(data, list):
                    raise DataError(f"{path}: expected a JSON array of interactions")
                for i, item in enumerate(data):
                    turns = parse_interaction(item, f"{path} interaction {i}")
                    number = ids[-1] + 1 if ids else 0
                    rows += [(path, i, example) for example in turns]
                    ids += [number] * len(turns)
            self._examples[split], self._interaction_ids[split] = rows, ids
        return self._examples[split]

    def interaction_ids(self, split: str) -> list[int]:
        """For each example of `split` (a turn), the number of its interaction (0, 1, ... in file order)."""
        self._load(split)
        return self._interaction_ids[split]

    def dev_gold(self) -> Path:
        return self.root / self.layout.dev_gold


def parse_interaction(item: object, where: str) -> list[SpiderExample]:
    """The turns of one interaction; an interaction without turns, or a turn without text, is one line."""
    if not isinstance(item, dict) or DB_ID_KEY not in item or "interaction" not in item:
        raise DataError(f"{where}: expected an object with {DB_ID_KEY!r} and 'interaction'")
    db_id, turns = item[DB_ID_KEY], item["interaction"]
    if not isinstance(db_id, str) or not db_id:
        raise DataError(f"{where}: {DB_ID_KEY} must be a non-empty string, got {db_id!r}")
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where} ({db_id}): the interaction has no turns (an empty 'interaction' list)")
    out = []
    for t, turn in enumerate(turns):
        if not isinstance(turn, dict) or not all(isinstance(turn.get(k), str) for k in ("utterance", "query")):
            raise DataError(f"{where} turn {t}: expected string 'utterance' and 'query'")
        out.append(SpiderExample(db_id, turn["utterance"], turn["query"]))
    return out


def write_gold(path: Path, examples: list[SpiderExample], interaction_ids: list[int]) -> None:
    """The official multi-turn gold file: 'SQL<TAB>db_id' per turn, a blank line after each interaction."""
    lines = []
    for k, (ex, n) in enumerate(zip(examples, interaction_ids, strict=True)):
        lines.append(f"{ex.query}\t{ex.db_id}\n")
        if k + 1 == len(examples) or interaction_ids[k + 1] != n:
            lines.append("\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines), encoding="utf-8")
