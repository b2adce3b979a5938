"""Load a directory in Spider's layout (the real benchmark or the generated sample) with one-line errors.

Layout: ``tables.json``, ``train_spider.json`` (+ ``train_others.json`` when present), ``dev.json``,
``database/<db_id>/<db_id>.sqlite``. Only ``tables.json`` and the split files are needed to build
training records; the SQLite files are needed for execution accuracy only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from text2sql.errors import DataError

ENV_VAR = "SPIDER_DIR"
DEFAULT_ROOT = "data/spider"
SPLIT_FILES: dict[str, tuple[str, ...]] = {
    "train": ("train_spider.json", "train_others.json"),
    "dev": ("dev.json",),
}
OPTIONAL_FILES = frozenset({"train_others.json"})


@dataclass(frozen=True)
class SpiderSchema:
    """One entry of tables.json, with the *original* (case-preserving) names DB-GPT-Hub prompts with."""

    db_id: str
    table_names: list[str]
    column_names: list[tuple[int, str]]  # index 0 is (-1, "*"); key indexes count it
    column_types: list[str]
    primary_keys: list  # ints, or lists of ints for a composite key
    foreign_keys: list[list[int]]


@dataclass(frozen=True)
class SpiderExample:
    db_id: str
    question: str
    query: str


def root_source(root: str | os.PathLike | None, env_var: str, default: str) -> str:
    """Where a dataset root came from, truthfully: the config's `${oc.env:VAR,default}` hands over the
    environment variable's value or the default as if it were given."""
    from_env = bool(os.environ.get(env_var)) and root in (None, "", os.environ[env_var])
    if from_env:
        return f"${env_var}"
    if root in (None, "") or (str(root) == default and not os.environ.get(env_var)):
        return f"the default, {default}: neither dataset.root nor ${env_var} set"
    return "what was given"


def resolve_root(root: str | os.PathLike | None) -> Path:
    """explicit root > $SPIDER_DIR > data/spider; a missing directory is one line saying how to point at it."""
    path = Path(root if root not in (None, "") else os.environ.get(ENV_VAR) or DEFAULT_ROOT).expanduser()
    source = root_source(root, ENV_VAR, DEFAULT_ROOT)
    if not path.is_dir():
        raise DataError(
            f"Spider directory not found: {path.resolve()} (from {source}); "
            f"point at a directory holding tables.json, train_spider.json and dev.json "
            f"with dataset.root=DIR (train.py), --spider DIR (text2sql prepare) or {ENV_VAR}=DIR"
        )
    return path.resolve()


def read_json(path: Path) -> Any:
    """json.load with the file named in every failure."""
    if not path.is_file():
        raise DataError(f"{path.name} not found in {path.parent} (expected Spider's layout: {path})")
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise DataError(f"malformed JSON in {path}: {err}") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text: {err}") from None


def _require(entry: Any, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object, got {type(entry).__name__}")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise DataError(f"{where}: missing key(s) {', '.join(missing)}")


def _expect_list(entry: dict, key: str, where: str, of: type | None = None) -> None:
    """A tables.json field of the wrong JSON type is one line naming the key (not a crash, nor a silent list of
    characters from a string)."""
    value = entry[key]
    if not isinstance(value, list):
        raise DataError(f"{where}: {key} must be a list, got {type(value).__name__} {str(value)[:40]!r}")
    if of is not None:
        bad = next((v for v in value if not isinstance(v, of)), None)
        if bad is not None:
            raise DataError(f"{where}: {key} must hold {of.__name__}s, got {type(bad).__name__} {bad!r}")


def parse_schema(entry: Any, path: Path, index: int) -> SpiderSchema:
    """Validate one tables.json entry: every key index must name a real column (the `*` at 0 included)."""
    keys = ("db_id", "table_names_original", "column_names_original", "column_types", "primary_keys", "foreign_keys")
    _require(entry, keys, f"{path} entry {index}")
    db_id = entry["db_id"]
    if not isinstance(db_id, str) or not db_id:
        raise DataError(f"{path} entry {index}: db_id must be a non-empty string, got {db_id!r}")
    where = f"{path} db_id {db_id!r}"
    _expect_list(entry, "table_names_original", where, of=str)
    _expect_list(entry, "column_types", where, of=str)
    _expect_list(entry, "primary_keys", where)
    _expect_list(entry, "foreign_keys", where)
    _expect_list(entry, "column_names_original", where)
    tables = list(entry["table_names_original"])
    for i, pair in enumerate(entry["column_names_original"]):
        if not (isinstance(pair, list) and len(pair) == 2 and type(pair[0]) is int and isinstance(pair[1], str)):
            raise DataError(f"{where}: column_names_original[{i}] = {pair!r} is not a pair [table index, name]")
    columns = [(t, name) for t, name in entry["column_names_original"]]
    if len(entry["column_types"]) != len(columns):
        raise DataError(f"{where}: {len(entry['column_types'])} column_types for {len(columns)} columns")
    for t, name in columns[1:]:
        if not 0 <= t < len(tables):
            raise DataError(f"{where}: column {name!r} refers to table {t} but there are {len(tables)} tables")

    def check(idx: Any, what: str) -> None:
        if not isinstance(idx, int) or not 1 <= idx < len(columns):
            raise DataError(
                f"{where}: {what} index {idx!r} is out of range (columns are 1..{len(columns) - 1}; 0 is '*')"
            )

    for i, pk in enumerate(entry["primary_keys"]):
        for idx in pk if isinstance(pk, list) else [pk]:
            check(idx, f"primary_keys[{i}]")
    for i, fk in enumerate(entry["foreign_keys"]):
        if not isinstance(fk, list) or len(fk) != 2:
            raise DataError(f"{where}: foreign_keys[{i}] = {fk!r} is not a pair [column, column]")
        for idx in fk:
            check(idx, f"foreign_keys[{i}]")
    return SpiderSchema(
        db_id=db_id,
        table_names=tables,
        column_names=columns,
        column_types=list(entry["column_types"]),
        primary_keys=list(entry["primary_keys"]),
        foreign_keys=[list(fk) for fk in entry["foreign_keys"]],
    )


def read_schemas(path: Path) -> dict[str, SpiderSchema]:
    """A tables file by db_id; a db_id listed twice is one line naming both entries (which one would win?)."""
    entries = read_json(path)
    if not isinstance(entries, list):
        raise DataError(f"{path}: expected a JSON array of schemas")
    out: dict[str, SpiderSchema] = {}
    first: dict[str, int] = {}
    for i, entry in enumerate(entries):
        schema = parse_schema(entry, path, i)
        if schema.db_id in out:
            raise DataError(f"{path}: duplicate db_id {schema.db_id!r} (entries {first[schema.db_id]} and {i}); "
                                  "each database must be listed once")
        out[schema.db_id], first[schema.db_id] = schema, i
    return out


class SpiderDataset:
    """A directory in Spider's layout; files are read lazily and cached.

    `eval_style` names the execution-accuracy rule of the dataset (text2sql.eval.style); the split-aware
    `tables_path` / `db_dir` let a layout with one tables file and one database folder per split (BIRD) subclass.
    """

    eval_style = "spider"
    QUERY_KEY = "query"  # the gold SQL's key in a split file

    tables_file = "tables.json"  # relative to the root (Chase names its own)

    def __init__(self, root: str | os.PathLike | None):
        self.root: Path = resolve_root(root)
        self._examples: dict[str, list[tuple[Path, int, SpiderExample]]] = {}
        self._schemas: dict[Path, dict[str, SpiderSchema]] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"

    def tables_path(self, split: str = "dev") -> Path:
        """The tables file describing the split's databases (Spider: one tables.json for both splits)."""
        return self.root / self.tables_file

    def db_dir(self, split: str = "dev") -> Path:
        """The folder holding the split's `<db_id>/<db_id>.sqlite` files."""
        return self.root / "database"

    def schemas(self, split: str = "dev") -> dict[str, SpiderSchema]:
        """The split's schemas by db_id (validated once per tables file, cached)."""
        path = self.tables_path(split)
        if path not in self._schemas:
            self._schemas[path] = read_schemas(path)
        return self._schemas[path]

    def levels(self, split: str) -> list[str | None]:
        """Each example's difficulty level as the dataset states it; None: the evaluator derives it (Spider
        hardness comes from the gold SQL)."""
        return [None] * len(self._load(split))

    def split_files(self, split: str) -> list[Path]:
        """The files of a split that exist (optional ones such as train_others.json may be absent)."""
        if split not in SPLIT_FILES:
            raise DataError(f"unknown Spider split {split!r}; expected one of {', '.join(SPLIT_FILES)}")
        paths = [self.root / name for name in SPLIT_FILES[split]]
        return [p for p in paths if p.name not in OPTIONAL_FILES or p.is_file()]

    def _load(self, split: str) -> list[tuple[Path, int, SpiderExample]]:
        if split not in self._examples:
            rows: list[tuple[Path, int, SpiderExample]] = []
            for path in self.split_files(split):
                data = read_json(path)
                if not isinstance(data, list):
                    raise DataError(f"{path}: expected a JSON array of examples")
                for i, item in enumerate(data):
                    keys = ("db_id", "question", self.QUERY_KEY)
                    _require(item, keys, f"{path} record {i}")
                    bad = next((k for k in keys if not isinstance(item[k], str)), None)
                    if bad:
                        raise DataError(f"{path} record {i}: {bad} must be a string, got "
                                              f"{type(item[bad]).__name__} {item[bad]!r}")
                    rows.append((path, i, self._example(item, path, i)))
            self._examples[split] = rows
        return self._examples[split]

    def _example(self, item: dict, path: Path, index: int) -> SpiderExample:
        """One validated split record (its keys checked by `_load`) as an example."""
        return SpiderExample(item["db_id"], item["question"], item[self.QUERY_KEY])

    def examples(self, split: str) -> list[SpiderExample]:
        """Examples in source order; "train" is train_spider.json then train_others.json (when present)."""
        return [ex for _, _, ex in self._load(split)]

    def db_path(self, db_id: str, split: str = "dev") -> Path:
        """Where the SQLite file should be; it may not exist (e.g. wta_1 in the shared copy)."""
        return self.db_dir(split) / db_id / f"{db_id}.sqlite"

    def pairs(self, split: str) -> list[tuple[SpiderExample, SpiderSchema]]:
        """Each example with its schema, in source order; a db_id unknown to tables.json is an error.

        What a prompt format needs; the format itself lives above this loader (`prompt.make_record`).
        """
        schemas = self.schemas(split)
        out = []
        for path, i, ex in self._load(split):
            schema = schemas.get(ex.db_id)
            if schema is None:
                raise DataError(f"{path} record {i}: db_id {ex.db_id!r} is not in {self.tables_path(split)}")
            out.append((ex, schema))
        return out
