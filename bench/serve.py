"""`text2sql serve` under load vs `text2sql ask` one process per question: requests/s and p50 / p95 latency.

    python bench/serve.py --run RUN [--concurrency 1,8,32] [--requests 64] [--ask 4] [--json FILE]

RUN is a training run; the questions are its dataset's dev questions, asked on their own databases (the dataset's
database dir). The server is started once (`text2sql serve --port 0 --db-dir ...`, a subprocess on 127.0.0.1) and
asked through /v1/sql by `c` client threads for each concurrency `c` (`--requests` requests, at least 4 per
thread; a few warm-up requests first); the baseline is `text2sql ask --run RUN --db FILE "question" --json`, one
process per question (`--ask` of them; 0 skips it), which loads the model for every question. The same questions
are compared: the SQL of ask and of the server must be equal (greedy; `same_sql` in the JSON).
Writes bench/results/serve.json; summary ratio: requests/s at the highest concurrency / ask's requests/s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchjson import RESULTS, write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def questions(run: Path, n: int) -> tuple[list[tuple[str, str]], Path]:
    """(db_id, question) of the run's dev split, and its database dir."""
    from hydra.utils import instantiate

    from text2sql.inference.predict import resolve_subtree, compose_config

    dataset = instantiate(resolve_subtree(compose_config([], run), "dataset"))
    examples = dataset.examples("dev")
    return [(e.db_id, e.question) for e in examples[:n]], dataset.db_dir("dev")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def start(run: Path, db_dir: Path, log: Path) -> tuple[subprocess.Popen, str, float]:
    began = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "text2sql", "serve", "--run", str(run), "--port", "0",
                             "--db-dir", str(db_dir)], stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    while proc.poll() is None:
        found = re.search(r"serving on (http://127\.0\.0\.1:\d+)", log.read_text())
        if found:
            return proc, found.group(1), time.perf_counter() - began
        time.sleep(0.2)
    raise SystemExit(f"the server did not start:\n{log.read_text()[-2000:]}")


def load(url: str, asked: list[tuple[str, str]], concurrency: int, n: int) -> dict:
    import httpx

    http = httpx.Client(timeout=600, trust_env=False)
    before = http.get(f"{url}/health").json()

    def one(i: int) -> tuple[float, dict]:
        db_id, question = asked[i % len(asked)]
        t = time.perf_counter()
        reply = http.post(f"{url}/v1/sql", json={"question": question, "db_id": db_id})
        reply.raise_for_status()
        return time.perf_counter() - t, reply.json()

    began = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(n)))
    wall = time.perf_counter() - began
    after = http.get(f"{url}/health").json()
    latencies = [t for t, _ in results]
    return {"concurrency": concurrency, "requests": n, "wall_s": round(wall, 3), "requests_per_s": round(n / wall, 3),
            "p50_s": round(percentile(latencies, 0.5), 3), "p95_s": round(percentile(latencies, 0.95), 3),
            "mean_batch": round(statistics.mean(r["batch_size"] for _, r in results), 2),
            "generate_calls": after["generate_calls"] - before["generate_calls"],
            "sql": {f"{r['db_id']}|{r['question']}": r["sql"] for _, r in results}}


def ask(run: Path, db_dir: Path, asked: list[tuple[str, str]]) -> dict:
    latencies, sqls = [], {}
    for db_id, question in asked:
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "text2sql", "ask", "--run", str(run), "--json", "--db",
                               str(db_dir / db_id / f"{db_id}.sqlite"), question], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600)
        latencies.append(time.perf_counter() - t)
        if proc.returncode not in (0, 1):
            raise SystemExit(f"text2sql ask failed:\n{proc.stderr[-2000:]}")
        sqls[f"{db_id}|{question}"] = json.loads(proc.stdout.splitlines()[-1])["sql"]
    return {"requests": len(asked), "wall_s": round(sum(latencies), 3),
            "requests_per_s": round(len(asked) / sum(latencies), 4), "p50_s": round(percentile(latencies, 0.5), 3),
            "p95_s": round(percentile(latencies, 0.95), 3), "sql": sqls}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--requests", type=int, default=64, help="requests per concurrency level (at least 4 a thread)")
    parser.add_argument("--questions", type=int, default=32, help="distinct dev questions asked (cycled)")
    parser.add_argument("--ask", type=int, default=4, help="questions for the `text2sql ask` baseline (0: none)")
    parser.add_argument("--note", default="", help="said in the table, e.g. that the machine was shared")
    parser.add_argument("--json", default=str(RESULTS / "serve.json"), help="write the figures here ('' for none)")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    asked, db_dir = questions(args.run, args.questions)
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-serve-{os.getpid()}.log"
    proc, url, startup = start(args.run, db_dir, log)
    try:
        load(url, asked, 1, 2)  # warm-up
        runs = [load(url, asked, c, max(args.requests if c > 1 else min(args.requests, 16), 4 * c)) for c in levels]
    finally:
        proc.send_signal(signal.SIGTERM)
        stopped = proc.wait(timeout=120)
    baseline = ask(args.run, db_dir, asked[: args.ask]) if args.ask else None
    for r in runs:
        print(f"serve c={r['concurrency']:>3}: {r['requests_per_s']:8.2f} req/s  p50 {r['p50_s']:.3f} s  "
              f"p95 {r['p95_s']:.3f} s  mean batch {r['mean_batch']}  {r['generate_calls']} generate calls "
              f"for {r['requests']} requests")
    command = (f"python bench/serve.py --run RUN --concurrency {args.concurrency} --requests {args.requests} "
               f"--questions {args.questions} --ask {args.ask}")
    record = {"benchmark": "serve", "command": command,
              "run": str(args.run), "startup_s": round(startup, 2), "sigterm_exit": stopped, "levels": runs,
              "note": args.note}
    top = runs[-1]
    scale = top["requests_per_s"] / runs[0]["requests_per_s"]
    summary = {"compares": f"/v1/sql requests/s at concurrency {', '.join(map(str, levels))} (p50 / p95 latency) vs "
               f"`text2sql ask` one process per question; {args.note}".rstrip("; "),
               "ours": "; ".join(f"c={r['concurrency']}: {r['requests_per_s']:.2f} req/s, p50 {r['p50_s']:.2f} s, "
                                 f"p95 {r['p95_s']:.2f} s, mean batch {r['mean_batch']}" for r in runs)}
    if baseline:
        same = sum(top["sql"].get(k) == v for k, v in baseline["sql"].items() if k in top["sql"])
        print(f"ask (one process per question): {baseline['requests_per_s']:.3f} req/s  p50 {baseline['p50_s']:.2f} s"
              f"  same SQL as the server: {same}/{len(baseline['sql'])}")
        record.update(ask=baseline, same_sql=f"{same}/{len(baseline['sql'])}")
        summary.update(baseline=f"{baseline['requests_per_s']:.3f} req/s (p50 {baseline['p50_s']:.1f} s), same SQL "
                       f"{same}/{len(baseline['sql'])}", ratio=round(top["requests_per_s"] / baseline["requests_per_s"], 1),
                       ratio_label=f"c={top['concurrency']} / ask; c={top['concurrency']} / c=1: {scale:.1f}x")
    record["summary"] = summary
    print(f"c={top['concurrency']} / c=1: {scale:.1f}x; server stopped by SIGTERM with status {stopped}")
    if args.json:
        print(f"wrote {write_json(args.json, record)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
