"""Benchmark: our ExecutionEvaluator vs a sequential one-connection-per-query evaluation (the official
test-suite-sql-eval approach) on the same predictions over the Spider dev databases.

    python bench/bench_evaluate.py [--spider ../shared/spider] [--workers N] [--repeat 3]

Predictions are the dev gold queries with deterministic perturbations (dropped WHERE, changed literal,
flipped ORDER BY direction, broken keyword, ...). Both evaluators must give identical verdicts; the script
prints the wall time of each and the speed ratio, for the first call (cold: worker start, gold execution,
hardness parsing) and for later calls (warm: gold results cached, as in every epoch after the first).

Then the time exact set match (``--etype match``/``all``, the callback's ``val/exact_match``) adds on the same
1034 examples, cold (schemas read, gold parsed) and warm (gold parses cached), with its EM and component F1s.
"""

from __future__ import annotations

import argparse
import random
import re
import sqlite3
import sys
import time
from collections import Counter, defaultdict
from itertools import product
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from text2sql.eval.compare import first_statement, postprocess, remove_distinct, replace_cur_year  # noqa: E402
from text2sql.eval.execute import ExecutionEvaluator  # noqa: E402

# ----------------------------------------------------------------------------------------- predictions

_WHERE = re.compile(r"\s+WHERE\s+.*?(?=\s+(GROUP\s+BY|ORDER\s+BY|LIMIT|INTERSECT|UNION|EXCEPT)\b|\)|$)",
                    re.IGNORECASE)
_NUM = re.compile(r"(?<![\w.])(\d+)(?![\w.])")
_STR = re.compile(r"(['\"])([^'\"]*)\1")


def perturb(sql: str, i: int) -> str:
    """Deterministic perturbation number i % 8 of a gold query (the gold itself for some)."""
    kind = i % 8
    if kind in (0, 1):
        return sql
    if kind == 2:  # drop a WHERE clause
        out = _WHERE.sub("", sql, count=1)
        return out if out != sql else sql + " LIMIT 1"
    if kind == 3:  # change a numeric literal
        m = _NUM.search(sql)
        return sql[: m.start()] + str(int(m.group(1)) + 1) + sql[m.end():] if m else sql
    if kind == 4:  # change a string literal
        m = _STR.search(sql)
        return sql[: m.start()] + m.group(1) + m.group(2) + "x" + m.group(1) + sql[m.end():] if m else sql
    if kind == 5:  # swap ORDER BY direction
        if re.search(r"\bDESC\b", sql, re.IGNORECASE):
            return re.sub(r"\bDESC\b", "ASC", sql, count=1, flags=re.IGNORECASE)
        if re.search(r"ORDER BY", sql, re.IGNORECASE):
            return re.sub(r"(ORDER BY\s+[\w.()*]+)", r"\1 DESC", sql, count=1, flags=re.IGNORECASE)
        return sql.replace("SELECT", "SELECT DISTINCT", 1)
    if kind == 6:  # permute / add a select column
        return re.sub(r"^SELECT\s+", "SELECT 1, ", sql, count=1, flags=re.IGNORECASE) if i % 16 == 6 else sql
    return re.sub(r"\bFROM\b", "FORM", sql, count=1) if i % 24 == 7 else sql  # a syntax error now and then


# ----------------------------------------------------------------------------------------- the baseline
# The official approach, written plainly: for each example and each query, open a connection, execute,
# fetch everything, close; compare with the official result_eq (random-sampled permutation constraints).


def _unorder_row(row):
    return tuple(sorted(row, key=lambda x: str(x) + str(type(x))))


def _quick_rej(r1, r2, ordered):
    s1 = [_unorder_row(r) for r in r1]
    s2 = [_unorder_row(r) for r in r2]
    return s1 == s2 if ordered else set(s1) == set(s2)


def _multiset_eq(l1, l2):
    if len(l1) != len(l2):
        return False
    d = defaultdict(int)
    for e in l1:
        d[e] += 1
    for e in l2:
        d[e] -= 1
        if d[e] < 0:
            return False
    return True


def _constraint_perms(sets1, r2, rng):
    n = len(r2[0])
    cons = [set(range(n)) for _ in range(n)]
    if n <= 3:
        return product(*cons)
    for _ in range(20):
        row = rng.choice(r2)
        for c1 in range(n):
            for c2 in set(cons[c1]):
                if row[c2] not in sets1[c1]:
                    cons[c1].remove(c2)
    return product(*cons)


def official_result_eq(r1, r2, ordered, rng):
    if not r1 and not r2:
        return True
    if len(r1) != len(r2) or len(r1[0]) != len(r2[0]):
        return False
    if not _quick_rej(r1, r2, ordered):
        return False
    n = len(r1[0])
    sets1 = [{row[i] for row in r1} for i in range(n)]
    for perm in _constraint_perms(sets1, r2, rng):
        if len(perm) != len(set(perm)):
            continue
        r2p = r2 if n == 1 else [tuple(e[i] for i in perm) for e in r2]
        if ordered:
            if r1 == r2p:
                return True
        elif set(r1) == set(r2p) and _multiset_eq(r1, r2p):
            return True
    return False


def _exec(path: str, sql: str):
    conn = sqlite3.connect(path)
    conn.text_factory = lambda b: b.decode(errors="replace")
    try:
        return "ok", conn.execute(sql).fetchall()
    except Exception as err:  # noqa: BLE001
        return "error", err
    finally:
        conn.close()


def baseline(db_dir: Path, items) -> list[tuple[bool, str]]:
    rng = random.Random(0)
    out = []
    for db_id, gold, pred in items:
        path = db_dir / db_id / f"{db_id}.sqlite"
        if not path.is_file():
            out.append((False, "db_missing"))
            continue
        p, g = postprocess(pred.strip().replace(" value ", " 1 ")), postprocess(gold)
        # official: DISTINCT removal via sqlparse keeps the first statement only
        p, g = remove_distinct(first_statement(p)), remove_distinct(first_statement(g))
        ordered = "order by" in g.lower()
        gf, gres = _exec(str(path), replace_cur_year(g))
        pf, pres = _exec(str(path), replace_cur_year(p))
        if gf != "ok" or pf != "ok":
            out.append((False, "error"))
        else:
            ok = official_result_eq(gres, pres, ordered, rng)
            out.append((ok, "correct" if ok else "wrong_result"))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    import os

    ap.add_argument("--spider", default=os.environ.get("SPIDER_DIR") or str(REPO.parent / "shared" / "spider"))
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--json", default=None, help="also write the figures as JSON here (for bench/make_readme.py)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="baseline runs and warm calls to time (the best of each is reported)")
    args = ap.parse_args()
    spider = Path(args.spider)
    if not (spider / "dev_gold.sql").is_file():
        print(f"skip: Spider not found at {spider}")
        return 0
    db_dir = spider / "database"
    gold = [line.split("\t") for line in (spider / "dev_gold.sql").read_text().splitlines() if line.strip()]
    items = [(db_id.strip(), g, perturb(g, i)) for i, (g, db_id) in enumerate(gold)]
    n_changed = sum(p != g for _, g, p in items)

    t_base = float("inf")
    for _ in range(args.repeat):  # best of N: the machine is shared, the best run is the least disturbed
        t0 = time.perf_counter()
        base = baseline(db_dir, items)
        t_base = min(t_base, time.perf_counter() - t0)
    # the official evaluation.py also parses every gold query for its hardness; time that part apart
    # (uncached, so that our own cold run below does not profit from it)
    from text2sql.sql.hardness import hardness

    t0 = time.perf_counter()
    for _, g, _ in items:
        hardness.__wrapped__(g)
    t_hard = time.perf_counter() - t0

    t0 = time.perf_counter()
    ev = ExecutionEvaluator(db_dir, workers=args.workers)
    cold = ev.evaluate(items)
    t_cold = time.perf_counter() - t0
    t_warm = float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        warm = ev.evaluate(items)
        t_warm = min(t_warm, time.perf_counter() - t0)
        assert [v.status for v in warm] == [v.status for v in cold]
    ev.close()

    # identical verdicts
    mismatches = []
    for k, ((ok, st), v) in enumerate(zip(base, cold)):
        same_status = (st == v.status) or (st == "error" and v.status in ("syntax_error", "exec_error"))
        if ok != v.correct or not same_status:
            mismatches.append((k, st, v.status, items[k][2]))
    print(f"examples: {len(items)} ({n_changed} perturbed predictions), workers: {ev.workers}")
    print(f"our statuses: {dict(Counter(v.status for v in cold))}")
    print(f"EX: ours {sum(v.correct for v in cold) / len(cold):.4f}, "
          f"baseline {sum(ok for ok, _ in base) / len(base):.4f}; verdict mismatches: {len(mismatches)}")
    for m in mismatches[:10]:
        print("  mismatch", m)
    print(f"baseline (sequential, one connection per query), best of {args.repeat}: {t_base:.3f} s")
    print(f"baseline + hardness of every gold query (as evaluation.py does): {t_base + t_hard:.3f} s")
    print(f"ours, first call (cold: start workers, run gold, parse hardness): {t_cold:.3f} s "
          f"-> {t_base / t_cold:.2f}x (vs baseline + hardness: {(t_base + t_hard) / t_cold:.2f}x)")
    print(f"ours, later calls (warm: gold cached), best of {args.repeat}: {t_warm:.3f} s "
          f"-> {t_base / t_warm:.2f}x")
    assert not mismatches, "verdicts differ from the baseline"
    bench_exact_match(spider, items, [v.hardness for v in cold], t_warm, args.repeat)
    if args.json:
        sys.path.insert(0, str(REPO / "bench"))
        from benchjson import write_json

        write_json(args.json, {
            "benchmark": "bench_evaluate", "examples": len(items), "perturbed": n_changed, "workers": ev.workers,
            "baseline_s": t_base, "baseline_with_hardness_s": t_base + t_hard, "ours_first_s": t_cold,
            "ours_later_s": t_warm,
            "summary": {"compares": f"our evaluator (worker processes, cached gold results) vs a sequential "
                                    f"one-connection-per-query evaluation, same verdicts asserted, {len(items)} Spider "
                                    f"dev examples ({n_changed} perturbed); first call: {t_base / t_cold:.2f}x",
                        "ours": f"{t_warm:.2f} s (cached, every epoch after the first)",
                        "baseline": f"{t_base:.2f} s", "ratio": round(t_base / t_warm, 2)}})
    return 0


def bench_exact_match(spider: Path, items, levels, t_ex_warm: float, repeat: int) -> None:
    from text2sql.eval.match import PARTIAL_TYPES, ExactMatcher, summarize_match

    t0 = time.perf_counter()
    matcher = ExactMatcher(spider / "tables.json", spider / "database")
    results = matcher.match_all(items)
    t_cold = time.perf_counter() - t0
    t_warm = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        again = matcher.match_all(items)
        t_warm = min(t_warm, time.perf_counter() - t0)
    assert [r.exact for r in again] == [r.exact for r in results]
    summary = summarize_match(results, levels)
    gold_self = ExactMatcher(spider / "tables.json", spider / "database").match_all([(d, g, g) for d, g, _ in items])
    print(f"exact set match: cold {t_cold:.3f} s, warm (gold parses cached) best of {repeat}: {t_warm:.3f} s "
          f"-> adds {100 * t_warm / t_ex_warm:.0f}% to a warm EX call ({t_ex_warm:.3f} s)")
    print(f"EM gold vs gold: {sum(r.exact for r in gold_self) / len(gold_self):.4f}; perturbed predictions: "
          + ", ".join(f"{lv} {summary[lv]['exact']:.3f}" for lv in summary if summary[lv]["exact"] is not None)
          + f"; unparsable: {sum(not r.parsed for r in results)}")
    print("component F1 (all): " + ", ".join(f"{t} {summary['all']['partial'][t]['f1']:.3f}" for t in PARTIAL_TYPES))


if __name__ == "__main__":
    sys.exit(main())
