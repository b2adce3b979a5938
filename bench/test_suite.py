"""How much a distilled test suite (`text2sql testsuite build`) sees that the original database alone does not.

(a) Real Spider dev (the databases under --spider): build the suite (timed), then make *held-out* mutants of every
gold query (a fresh seed, none of them a mutant the distillation saw) and count, among those that a large
undistilled pool of fresh neighbours (`--pool` per database, plus the original) tells apart from gold, the share
the original database alone kills and the share the suite kills. Goals: suite >= 95 %, >= 20 points above the
original alone; build under 10 minutes on 2 cores.
(b) The generated sample: EX on the original databases vs test-suite accuracy of a run's predictions
(`--run DIR`: its predictions/epoch_N_pred.sql with epoch_N_gold.sql; every epoch found is scored).

    python bench/test_suite.py [--spider DIR] [--pool 100] [--per-db N] [--mutants K] [--cover C] [--run RUN_DIR]

(--per-db, --mutants, --cover: the build's own defaults unless given.)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from benchjson import RESULTS, write_json  # noqa: E402


def held_out(spider: Path, suite: Path, args) -> dict:
    """Part (a) after the build: held-out mutants per database, killed by the original / the pool / the suite."""
    from text2sql.eval.execute import ExecutionEvaluator
    from text2sql.testsuite.build import BuildOptions, Distiller, find_databases, open_dataset
    from text2sql.testsuite.mutate import query_literals
    from text2sql.testsuite.schema import read_db

    dataset, _ = open_dataset(spider)
    dbs, _ = find_databases(dataset, ("dev",))
    root = suite / "database"
    fresh = BuildOptions(seed=args.heldout_seed, timeout=args.timeout, workers=args.workers)
    distiller = Distiller(root, dataset.eval_style, fresh)
    suite_ev = ExecutionEvaluator(root, timeout=args.timeout, workers=args.workers, test_suite=True)
    per_db, examples, kinds = {}, [], {}
    try:
        for db_id, (path, golds) in dbs.items():
            if args.dbs and db_id not in args.dbs.split(","):
                continue
            t0 = time.monotonic()
            schema = read_db(path, db_id)
            ok = [g for g in golds if not distiller.runner.gold_failures([db_id], [g])]
            seen, _ = distiller.mutants(db_id, schema, ok, args.seed, args.mutants)  # what the distillation saw
            exclude: dict[str, set[str]] = {}
            for g, m, _ in seen:
                exclude.setdefault(g, set()).add(m)
            held, by_original = distiller.mutants(db_id, schema, ok, args.heldout_seed, args.mutants, exclude)
            alive = set(range(len(held))) - by_original
            kills, dropped = distiller.pool(schema, query_literals(ok, schema), ok, held, alive, args.pool, "pool")
            for name in kills.order:
                shutil.rmtree(root / name, ignore_errors=True)
            told = by_original | kills.killed()
            statuses = [v.status for v in suite_ev.evaluate([(db_id, g, m) for g, m, _ in held], levels=[""] * len(held))]
            by_suite = {i for i, s in enumerate(statuses) if s != "correct"}
            per_db[db_id] = {"held_out_mutants": len(held), "pool_tells_apart": len(told),
                             "original_kills": len(by_original & told), "suite_kills": len(by_suite & told),
                             "suite_kills_outside_pool": len(by_suite - told), "pool_tried": len(kills.order),
                             "pool_dropped_gold_failed": dropped, "seconds": round(time.monotonic() - t0, 1)}
            examples += [(db_id, *held[i]) for i in sorted(told - by_suite)[:2]]
            for i, (_, _, kind) in enumerate(held):
                row = kinds.setdefault(kind, {"held_out": 0, "pool_tells_apart": 0, "original_kills": 0,
                                              "suite_kills": 0})
                row["held_out"] += 1
                row["pool_tells_apart"] += i in told
                row["original_kills"] += i in told and i in by_original
                row["suite_kills"] += i in told and i in by_suite
            print(f"{db_id}: {per_db[db_id]}", file=sys.stderr)
    finally:
        distiller.close()
        suite_ev.close()
    keys = ("held_out_mutants", "pool_tells_apart", "original_kills", "suite_kills", "suite_kills_outside_pool",
            "pool_tried", "pool_dropped_gold_failed")
    totals = {k: sum(d[k] for d in per_db.values()) for k in keys}
    n = totals["pool_tells_apart"] or 1
    totals["original_rate"] = round(totals["original_kills"] / n, 4)
    totals["suite_rate"] = round(totals["suite_kills"] / n, 4)
    return {"totals": totals, "by_kind": dict(sorted(kinds.items())), "databases": per_db,
            "missed_examples": [{"db_id": d, "gold": g, "mutant": m, "kind": k} for d, g, m, k in examples[:12]]}


def part_a(args) -> dict:
    from text2sql.testsuite.build import BuildOptions, build_suite

    work = Path(tempfile.mkdtemp(prefix="bench_test_suite-"))
    try:
        opts = BuildOptions(per_db=args.per_db, seed=args.seed, mutants=args.mutants, cover=args.cover,
                            timeout=args.timeout,
                            workers=args.workers, progress=False)
        t0 = time.monotonic()
        manifest = build_suite(args.spider, work / "suite", opts)
        build_s = time.monotonic() - t0
        files = list((work / "suite" / "database").rglob("*_ts*.sqlite"))
        t0 = time.monotonic()
        result = held_out(Path(args.spider), work / "suite", args)
        result.update(build_seconds=round(build_s, 1), heldout_seconds=round(time.monotonic() - t0, 1),
                      suite={"databases": len(manifest["databases"]), "neighbours": len(files),
                             "neighbour_mib": round(sum(f.stat().st_size for f in files) / 2**20, 2),
                             "distillation": manifest["totals"]},
                      settings={"per_db": args.per_db, "mutants_per_query": args.mutants, "cover": args.cover,
                                "seed": args.seed,
                                "heldout_seed": args.heldout_seed, "pool_per_db": args.pool})
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def part_b(args) -> dict:
    """EX on the sample's original databases vs test-suite accuracy, for each epoch's predictions of --run."""
    from text2sql.data.datasets import sample
    from text2sql.eval.evaluate import read_gold, read_pred
    from text2sql.eval.execute import ExecutionEvaluator
    from text2sql.testsuite.build import BuildOptions, build_suite

    data = sample(os.path.join(os.environ.get("TEXT2SQL_CACHE", ".cache/text2sql"), "data", "sample-v2-seed0-3000-200"))
    work = Path(tempfile.mkdtemp(prefix="bench_test_suite_sample-"))
    out = {"run": str(args.run), "epochs": {}}
    try:
        t0 = time.monotonic()
        manifest = build_suite(data.root, work / "suite", BuildOptions(per_db=args.per_db, seed=args.seed,
                                                                       mutants=args.mutants, cover=args.cover,
                                                                       progress=False))
        out["build_seconds"] = round(time.monotonic() - t0, 1)
        out["distillation"] = manifest["totals"]
        db = work / "suite" / "database"
        preds = sorted(Path(args.run, "predictions").glob("epoch_*_pred.sql"),
                       key=lambda p: int(re.findall(r"-?\d+", p.name)[0]))
        with ExecutionEvaluator(db) as ex, ExecutionEvaluator(db, test_suite=True) as ts:
            for pred in preds:
                gold = read_gold(pred.with_name(pred.name.replace("_pred", "_gold")))
                items = [(d, g, p) for (g, d), p in zip(gold, read_pred(pred))]
                a, b = ex.evaluate(items), ts.evaluate(items)
                n = len(items)
                flips = [{"gold": g, "prediction": p} for (d, g, p), va, vb in zip(items, a, b)
                         if va.correct and not vb.correct]
                out["epochs"][pred.name.split("_")[1]] = {
                    "examples": n, "ex": round(sum(v.correct for v in a) / n, 4),
                    "test_suite": round(sum(v.correct for v in b) / n, 4), "ex_right_suite_wrong": len(flips),
                    "suite_right_ex_wrong": sum(vb.correct and not va.correct for va, vb in zip(a, b)),
                    "flip_examples": flips[:5]}
                print(f"{pred.name}: {out['epochs'][pred.name.split('_')[1]]}", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def main() -> None:
    from text2sql.testsuite.build import BuildOptions

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spider", default=os.environ.get("SPIDER_DIR") or str(REPO.parent / "shared" / "spider"))
    p.add_argument("--pool", type=int, default=100, help="fresh neighbours per database in the undistilled pool")
    p.add_argument("--per-db", type=int, default=BuildOptions.per_db)
    p.add_argument("--mutants", type=int, default=BuildOptions.mutants)
    p.add_argument("--cover", type=int, default=BuildOptions.cover)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--heldout-seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--run", default=None, help="a run dir whose predictions/epoch_N_pred.sql part (b) scores")
    p.add_argument("--run-label", default="the default run's predictions (`python train.py`, 8 epochs)",
                   help="what --run is, for the README")
    p.add_argument("--parts", default="a,b")
    p.add_argument("--dbs", default=None, help="part (a): only these databases (comma-separated; the build is whole)")
    p.add_argument("--out", default=str(RESULTS / "test_suite.json"))
    args = p.parse_args()
    record: dict = {"shared_machine": True}
    if "a" in args.parts:
        record["spider_dev"] = part_a(args)
        t = record["spider_dev"]["totals"]
        print(f"spider dev: held-out mutants the pool tells apart {t['pool_tells_apart']}: original kills "
              f"{t['original_rate']:.1%}, suite kills {t['suite_rate']:.1%}; build "
              f"{record['spider_dev']['build_seconds']} s", file=sys.stderr)
    if "b" in args.parts and args.run:
        record["sample"] = part_b(args)
        record["sample"]["which"] = args.run_label
    given = "".join(f" --{flag} {value}" for flag, value, default in (
        ("per-db", args.per_db, BuildOptions.per_db), ("mutants", args.mutants, BuildOptions.mutants),
        ("cover", args.cover, BuildOptions.cover)) if value != default)
    record["command"] = f"python bench/test_suite.py --pool {args.pool}{given} --run RUN"
    record["summary"] = _summary(record)
    print(write_json(args.out, record))


def _summary(record: dict) -> dict:
    out = {"compares": "held-out near-miss mutants of Spider dev's gold queries killed by our distilled suite vs by "
                       "the original database alone, among those a pool of fresh neighbours tells apart from gold"}
    a = record.get("spider_dev")
    if a:
        t = a["totals"]
        out.update(ours=f"{t['suite_rate']:.1%} (suite: {a['suite']['neighbours']} neighbours, built in "
                        f"{a['build_seconds']:.0f} s, shared machine)",
                   baseline=f"{t['original_rate']:.1%} (original database)",
                   ratio=round((t["suite_rate"] - t["original_rate"]) * 100, 1), ratio_label="points")
    b = record.get("sample")
    if b and b["epochs"]:
        last = b["epochs"][max(b["epochs"], key=int)]
        out["compares"] += f"; sample: EX {last['ex']:.3f} -> test-suite {last['test_suite']:.3f} (last epoch)"
    return out


if __name__ == "__main__":
    main()
