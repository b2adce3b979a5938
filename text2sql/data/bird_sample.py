"""The generated sample (text2sql.data.sample, Spider's layout) rewritten in BIRD's layout, so `dataset=bird`
trains, evaluates and resumes in CI without BIRD's 33 GB download.

`text2sql sample --layout bird --out OUT [--seed N --n-train N --n-dev N]` writes::

    OUT/train/train.json  train_tables.json  train_databases/<db>/<db>.sqlite
    OUT/dev/dev.json      dev_tables.json    dev_databases/<db>/<db>.sqlite    dev.sql

Records carry BIRD's keys: `db_id`, `question`, `evidence`, `SQL` (dev also `question_id`, `difficulty`).
Two documented rules stand in for what BIRD's annotators wrote:

* **evidence**: the gold query's column-versus-literal conditions, e.g. ``age > 30; name = 'Alice'`` (BIRD's
  evidence maps question words onto such conditions); "" when the query has none, as many BIRD records have;
* **difficulty**: from the gold query's Spider hardness (official rules), easy and medium -> simple,
  hard -> moderate, extra -> challenging. On the sample's Spider mix (24/43/17/16 %) that gives 67/17/16 %,
  the nearest of these maps to BIRD dev's 60/30/9 %.

The sample's four databases serve both splits (BIRD's splits have disjoint databases; the loader does not care).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import sqlglot
from sqlglot import exp

from text2sql.data.sample import ensure_sample
from text2sql.sql.hardness import hardness, spider_sql_to_sqlglot
from text2sql.data.cache import atomic_dir

DIFFICULTY_OF_HARDNESS = {"easy": "simple", "medium": "simple", "hard": "moderate", "extra": "challenging"}
_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Like)


def evidence_of(sql: str) -> str:
    """The query's `column OP literal` conditions, in order and each once, joined by "; " ("" when none)."""
    try:
        tree = spider_sql_to_sqlglot(sql)
    except sqlglot.errors.ParseError:
        return ""
    parts: list[str] = []
    for node in tree.find_all(*_COMPARISONS):
        column, value = node.left, node.right
        if isinstance(column, exp.Column) and isinstance(value, exp.Literal):
            text = node.sql(dialect="sqlite")
            if text not in parts:
                parts.append(text)
    return "; ".join(parts)


def _bird_records(spider_records: list[dict], dev: bool) -> list[dict]:
    out = []
    for i, r in enumerate(spider_records):
        record = {"db_id": r["db_id"], "question": r["question"], "evidence": evidence_of(r["query"]),
                  "SQL": r["query"]}
        if dev:
            record = {"question_id": i, **record, "difficulty": DIFFICULTY_OF_HARDNESS[hardness(r["query"])]}
        out.append(record)
    return out


def _dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_bird_layout(spider_dir: str | Path, out_dir: str | Path) -> Path:
    """Rewrite a Spider-layout directory (the generated sample) in BIRD's layout at `out_dir` (atomically)."""
    spider_dir, out_dir = Path(spider_dir), Path(out_dir)
    tables = json.loads((spider_dir / "tables.json").read_text(encoding="utf-8"))
    with atomic_dir(out_dir) as tmp:
        for split, source in (("train", "train_spider.json"), ("dev", "dev.json")):
            records = json.loads((spider_dir / source).read_text(encoding="utf-8"))
            used = {r["db_id"] for r in records}
            _dump(tmp / split / f"{split}.json", _bird_records(records, dev=split == "dev"))
            _dump(tmp / split / f"{split}_tables.json", [t for t in tables if t["db_id"] in used])
            for db_id in sorted(used):
                target = tmp / split / f"{split}_databases" / db_id
                target.mkdir(parents=True)
                shutil.copy2(spider_dir / "database" / db_id / f"{db_id}.sqlite", target / f"{db_id}.sqlite")
            if split == "dev":
                (tmp / "dev" / "dev.sql").write_text("".join(f"{r['query']}\t{r['db_id']}\n" for r in records),
                                                     encoding="utf-8")
    return out_dir


def write_bird_sample(out_dir: str | Path, seed: int = 0, n_train: int = 3000, n_dev: int = 200) -> Path:
    """Generate the sample (seeded, as dataset=sample does) and write it in BIRD's layout at `out_dir`."""
    with tempfile.TemporaryDirectory(prefix="bird-sample-") as tmp:
        return write_bird_layout(ensure_sample(Path(tmp) / "spider", seed, n_train, n_dev), out_dir)
