"""Benchmark: the evaluator with BIRD's rule on a large, dirty SQLite database (BIRD's databases run to tens of
MB, with text in odd encodings and BLOBs) vs BIRD's own evaluation loop (`evaluation_ex.py`: one connection
per example, `fetchall` of both queries, `set(pred) == set(gold)`), and vs our Spider rule on the same items.

    python bench/bird_eval.py [--rows 120000] [--workers 2] [--repeat 2] [--json bench/results/bird_eval.json]

The database (built once under $TEXT2SQL_CACHE/bench, deterministic): `users` and `posts` with UTF-8, Latin-1
and broken byte sequences stored as TEXT, emoji and NUL characters, numbers stored as TEXT in an INTEGER column,
dates in mixed formats and a BLOB per post. The items are BIRD-like gold queries (joins, grouping, LIKE over
undecodable text, a 100k-row result, BLOB reads), each with the gold and a perturbed prediction. Every side runs
in its own process so its peak memory (ru_maxrss, and of its worker processes) is its own; BIRD's rule must give
the official loop's verdict on every item.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

COUNTRIES = ["France", "Deutschland", "España", "Česko", "日本", "Россия", "Brasil", "Türkiye"]
GOLD = [
    "SELECT count(*) FROM posts",
    "SELECT u.country, count(*) FROM posts AS p JOIN users AS u ON p.author_id = u.id GROUP BY u.country",
    "SELECT title FROM posts WHERE score > 90",
    "SELECT id FROM posts WHERE body LIKE '%caf%'",
    "SELECT name FROM users WHERE reputation > 5000 ORDER BY reputation DESC LIMIT 20",
    "SELECT avg(length(attachment)) FROM posts WHERE attachment IS NOT NULL",
    "SELECT DISTINCT u.name FROM users AS u JOIN posts AS p ON p.author_id = u.id WHERE p.score < 2",
    "SELECT substr(created, 1, 4), count(*) FROM posts GROUP BY substr(created, 1, 4)",
    "SELECT attachment FROM posts WHERE id % 1000 = 7",
    "SELECT id, title FROM posts",  # a 100k-row result: the size BIRD's big answers reach
    "SELECT name FROM users WHERE id IN (SELECT author_id FROM posts GROUP BY author_id HAVING count(*) > 12)",
    "SELECT CAST(reputation AS INTEGER) FROM users WHERE typeof(reputation) = 'text'",
]


def perturb(sql: str, i: int) -> str:
    """Right under BIRD's rule (reordered, deduplicated) or wrong (one row only), deterministically."""
    if i % 3 == 0:
        return f"SELECT * FROM ({sql}) ORDER BY 1 DESC" if "LIMIT" not in sql else sql
    if i % 3 == 1:
        return f"SELECT * FROM ({sql}) LIMIT 1"
    return sql.replace("SELECT ", "SELECT DISTINCT ", 1) if "DISTINCT" not in sql else sql


def _text(rng: random.Random, n: int) -> str | bytes:
    words = ["café", "naïve", "straße", "ünïcode", "data", "sql", "🙂", "bird", "query", "年", "x\x00y"]
    text = " ".join(rng.choice(words) for _ in range(n))
    kind = rng.random()
    if kind < 0.15:  # Latin-1 bytes stored as TEXT: not valid UTF-8
        return text.encode("latin-1", errors="replace")
    if kind < 0.2:  # a truncated multi-byte sequence
        return text.encode("utf-8")[:-1] + b"\xe2\x82"
    return text


def build_db(path: Path, rows: int, seed: int = 0) -> Path:
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    rng = random.Random(seed)
    conn = sqlite3.connect(tmp)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, country TEXT, reputation INTEGER)")
    conn.execute("CREATE TABLE posts (id INTEGER PRIMARY KEY, author_id INTEGER REFERENCES users(id), title TEXT, "
                 "body TEXT, score REAL, created TEXT, attachment BLOB)")
    n_users = max(rows // 10, 10)
    conn.executemany("INSERT INTO users VALUES (?, CAST(? AS TEXT), ?, ?)", (
        (i, _text(rng, 2), rng.choice(COUNTRIES), str(rng.randint(0, 9999)) if i % 7 == 0 else rng.randint(0, 9999))
        for i in range(n_users)))
    formats = ("%Y-%m-%d", "%d/%m/%Y", "%Y-%m-%dT%H:%M:%S")
    conn.executemany("INSERT INTO posts VALUES (?, ?, CAST(? AS TEXT), CAST(? AS TEXT), ?, ?, ?)", (
        (i, rng.randrange(n_users), _text(rng, 4), _text(rng, rng.randint(10, 60)), rng.random() * 100,
         time.strftime(rng.choice(formats), time.gmtime(rng.randint(10**9, 17 * 10**8))),
         rng.randbytes(rng.randint(0, 600)) if i % 3 else None)
        for i in range(rows)))
    conn.commit()
    conn.close()
    tmp.replace(path)
    return path


def official(db: Path, items: list[tuple[str, str, str]], timeout: float) -> list[int]:
    """BIRD's evaluation_ex.py loop, sequential: a fresh connection per example, fetchall, set equality."""
    out = []
    for _, gold, pred in items:
        conn = sqlite3.connect(db)
        conn.text_factory = lambda b: b.decode("utf-8", errors="replace")  # its default str factory raises here
        try:
            p = conn.execute(pred).fetchall()
            g = conn.execute(gold).fetchall()
            out.append(int(set(p) == set(g)))
        except sqlite3.Error:
            out.append(0)
        finally:
            conn.close()
    return out


def run_side(side: str, db_root: Path, workers: int, repeat: int) -> dict:
    items = [("dirty", g, p) for i, g in enumerate(GOLD) for p in (g, perturb(g, i))]
    times, verdicts = [], None
    if side == "official":
        for _ in range(repeat):
            start = time.perf_counter()
            verdicts = official(db_root / "dirty" / "dirty.sqlite", items, 30.0)
            times.append(time.perf_counter() - start)
    else:
        from text2sql.eval.execute import ExecutionEvaluator

        with ExecutionEvaluator(db_root, workers=workers, timeout=30.0, style=side.split("_")[1]) as ev:
            for _ in range(repeat):  # the first call runs the gold queries; later ones reuse them (every epoch)
                start = time.perf_counter()
                verdicts = [int(v.correct) for v in ev.evaluate(items)]
                times.append(time.perf_counter() - start)
    self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"side": side, "times_s": [round(t, 3) for t in times], "verdicts": verdicts,
            "peak_rss_mb": round(self_mb, 1), "peak_worker_rss_mb": round(child_mb, 1), "items": len(items)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=120_000, help="posts rows (120000: about 60 MB)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", default=None, help="write the figures here (bench/results/bird_eval.json)")
    ap.add_argument("--side", default=None, help=argparse.SUPPRESS)  # internal: run one side, print its JSON
    args = ap.parse_args(argv)
    cache = Path(os.environ.get("TEXT2SQL_CACHE", REPO / ".cache" / "text2sql")) / "bench" / f"bird-dirty-{args.rows}"
    if args.side:
        print(json.dumps(run_side(args.side, cache, args.workers, args.repeat)))
        return 0
    start = time.perf_counter()
    db = build_db(cache / "dirty" / "dirty.sqlite", args.rows)
    print(f"database {db}: {db.stat().st_size / 2**20:.1f} MB (built/found in {time.perf_counter() - start:.1f} s)")
    results = {}
    for side in ("official", "ours_bird", "ours_spider"):
        proc = subprocess.run([sys.executable, __file__, "--side", side, "--rows", str(args.rows), "--workers",
                               str(args.workers), "--repeat", str(args.repeat)], capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"error: side {side} failed:\n{proc.stderr[-2000:]}")
        results[side] = json.loads(proc.stdout.strip().splitlines()[-1])
        r = results[side]
        print(f"{side:12s} times {r['times_s']} s  peak RSS {r['peak_rss_mb']} MB "
              f"(workers {r['peak_worker_rss_mb']} MB)  correct {sum(r['verdicts'])}/{r['items']}")
    agree = results["official"]["verdicts"] == results["ours_bird"]["verdicts"]
    print(f"BIRD's rule gives the official loop's verdict on every item: {agree}")
    ours, base = results["ours_bird"], results["official"]
    ratio = min(base["times_s"]) / min(ours["times_s"])
    print(f"official / ours (warm): {ratio:.2f}x; first call {base['times_s'][0] / ours['times_s'][0]:.2f}x")
    if args.json:
        from bench.benchjson import write_json

        write_json(args.json, {"benchmark": "bird_eval", "db_mb": round(db.stat().st_size / 2**20, 1),
                               "rows": args.rows, "workers": args.workers, "agree": agree, "sides": results,
                               "summary": {
                                   "compares": f"our evaluator with BIRD's rule ({args.workers} workers, guard, "
                                               f"timeouts, gold cached) vs BIRD's evaluation_ex.py loop, "
                                               f"{ours['items']} items on a {db.stat().st_size / 2**20:.0f} MB dirty "
                                               f"database; verdicts equal: {agree}; peak RSS ours "
                                               f"{ours['peak_rss_mb']} MB + workers {ours['peak_worker_rss_mb']} MB "
                                               f"vs {base['peak_rss_mb']} MB",
                                   "ours": f"{min(ours['times_s']):.2f} s (warm), {ours['times_s'][0]:.2f} s first",
                                   "baseline": f"{min(base['times_s']):.2f} s",
                                   "ratio": round(ratio, 2)}})
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
