"""`make regress`: re-run a small deterministic slice of the grid and compare it with the committed baseline.

Tolerance. Greedy decoding makes the slice deterministic on one machine with one set of packages, and
there the numbers repeat exactly. Elsewhere (another BLAS, thread count or patch release) a near-tie
token can flip a few answers, either way. Baseline and current ran the same questions, so they are
compared question by question (the baseline stores each question's values): a metric fails when its
mean paired difference is worse than Z = 2 standard errors of the per-question differences. Flips in
both directions cancel and widen the tolerance; a one-way drop does not: on 100 questions, 4 answers
turned wrong and none turned right (a 4-point drop) fail, while 1 to 3 do not; a real break moves
many. (Two independent samples, sqrt(se_base² + se_now²), would need ~450 questions to catch 5 points.)
A row that disappears fails, and so does a row whose questions or prompt changed (its hashes differ):
such a change needs a new baseline.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from fireact_bench.harness.agent.result import QuestionResult
from fireact_bench.harness.benchmark.cells import RESULTS_DIR, adapters_dir, cells_dir, read_cells
from fireact_bench.harness.benchmark.stats import stderr
from fireact_bench.harness.benchmark.sweep import sweep
from fireact_bench.harness.files import write_json

BASELINE = RESULTS_DIR / "regress_baseline.json"
Z = 2.0
# metric -> +1 when higher is better, -1 when lower is better
METRICS = {"em": 1, "f1": 1, "finished": 1, "format_errors": -1}
MUST_MATCH = ("dataset_hash", "prompt_hash")


def _stats(values: list[float]) -> dict:
    return {"mean": round(sum(values) / len(values), 4) if values else 0.0, "stderr": round(stderr(values), 4)}


def summarise(results: list[dict]) -> dict:
    """{row key: {n, hashes, metrics: {metric: {mean, stderr}}}} of finished cell results."""
    out = {}
    for r in results:
        out[r["label"]] = {
            "n": r["n"], "hashes": {k: r["comparability"][k] for k in MUST_MATCH},
            "versions": r["comparability"]["versions"],
            "metrics": {m: _stats([float(getattr(QuestionResult.from_dict(q), m)) for q in r["per_question"]]) for m in METRICS},
            "per_question": {q["id"]: [float(getattr(QuestionResult.from_dict(q), m)) for m in METRICS] for q in r["per_question"]},
        }
    return dict(sorted(out.items()))


def compare(baseline: dict, current: dict) -> tuple[bool, str]:
    """(passed, readable report) of current against baseline."""
    lines, failed = [], False
    header = f"{'row':<58} {'metric':<14} {'baseline':>9} {'now':>9} {'change':>8} {'tolerance':>9}  verdict"
    lines.append(header)
    for key, base in baseline["rows"].items():
        now = current.get(key)
        if now is None:
            failed = True
            lines.append(f"{key:<58} {'-':<14} {'':>9} {'':>9} {'':>8} {'':>9}  FAIL: row disappeared")
            continue
        changed = [h for h in MUST_MATCH if base["hashes"][h] != now["hashes"][h]]
        if changed or base["n"] != now["n"]:
            failed = True
            what = ", ".join(changed + (["n"] if base["n"] != now["n"] else []))
            lines.append(f"{key:<58} {'-':<14} {'':>9} {'':>9} {'':>8} {'':>9}  FAIL: not comparable ({what} changed): "
                         "update the baseline if intended")
            continue
        for i, (metric, sign) in enumerate(METRICS.items()):
            b, c = base["metrics"][metric], now["metrics"][metric]
            diffs = [now["per_question"][q][i] - values[i] for q, values in base["per_question"].items() if q in now["per_question"]]
            change = sum(diffs) / len(diffs) if diffs else c["mean"] - b["mean"]
            tolerance = Z * stderr(diffs)
            worse = -sign * change
            verdict = "ok" if worse <= tolerance + 1e-9 else "FAIL: worse beyond tolerance"
            failed |= verdict != "ok"
            lines.append(f"{key:<58} {metric:<14} {b['mean']:>9.4f} {c['mean']:>9.4f} {change:>+8.4f} {tolerance:>9.4f}  {verdict}")
    for key in sorted(set(current) - set(baseline["rows"])):
        lines.append(f"{key:<58} new row (not in the baseline)")
    return not failed, "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fireact-bench regress", description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default="regress", help="the slice to re-run (a shipped grid name or a YAML path)")
    parser.add_argument("--baseline", default=str(BASELINE))
    parser.add_argument("--work", default=str(RESULTS_DIR / "regress"), help="scratch folder, emptied first: a regress run never reuses cells")
    parser.add_argument("--adapters", default=str(adapters_dir(RESULTS_DIR)), help="adapters are shared with the store")
    parser.add_argument("--update", action="store_true", help="write the current numbers as the new baseline")
    args = parser.parse_args(argv)

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    summary = sweep(args.grid, work, adapters=Path(args.adapters))
    results, failed, missing = read_cells(cells_dir(work), summary["cell_ids"])
    for f in failed:
        print(f"cell failed: {f['label']}: {f['error']}", file=sys.stderr)
    current = summarise(results)
    if args.update:
        if failed:
            print("not updating the baseline: some cells failed", file=sys.stderr)
            return 1
        write_json(Path(args.baseline), {"grid": summary["grid"], "z": Z, "rows": current})
        print(f"baseline written: {args.baseline} ({len(current)} rows)")
        return 0
    baseline = json.loads(Path(args.baseline).read_text())
    passed, report = compare(baseline, current)
    print(report)
    print("regress: PASS" if passed else "regress: FAIL", file=sys.stderr if not passed else sys.stdout)
    return 0 if passed else 1
