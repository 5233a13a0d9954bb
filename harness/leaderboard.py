"""Cell results -> results/leaderboard.json (validated against harness/schema), leaderboard.md and plots.

One row per finished cell. Exact match carries its standard error (sample standard deviation / sqrt(n),
as lm-eval reports it) and a 95% Wilson interval, which stays inside [0, 1] and is honest for the
small n and near-zero rates of small backbones. `comparability.group` says which rows may be set
side by side (same questions, same search corpus, same noise draws).
"""
from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

from fireact_bench.store import write_json
from fireact_bench.sweep import RESULTS_DIR

SCHEMA_PATH = Path(__file__).parent / "schema" / "leaderboard.schema.json"
SCHEMA_VERSION = 1
Z95 = 1.959964


def wilson(successes: float, n: int, z: float = Z95) -> list[float]:
    if n == 0:
        return [0.0, 1.0]
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


def stderr(values: list[float]) -> float:
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0


def row_of(result: dict) -> dict:
    cell, per_q, adapter = result["cell"], result["per_question"], result.get("adapter")
    n = len(per_q)
    ems = [q["em"] for q in per_q]
    mean = lambda key: round(sum(q[key] for q in per_q) / n, 4) if n else 0.0  # noqa: E731
    turns = sum(q["steps"] for q in per_q)
    price = cell["model"].get("price")
    if price:
        usd = (mean("prompt_tokens") * price["prompt"] + mean("gen_tokens") * price["completion"]) / 1e6
        cost = {"unit": "usd", "per_question": round(usd, 6)}
    else:  # local models: compute seconds on the machine that ran the cell
        cost = {"unit": "compute_s", "per_question": mean("wall_s"), "cpus": result["host"]["cpus"]}
    return {
        "cell_id": result["cell_id"], "model": cell["model"]["name"], "inner": cell["model"]["inner"],
        "method": cell["method"], "dataset": cell["dataset"], "noise": cell["noise"], "seed": cell["seed"],
        "adapter": None if not adapter else {
            "key": adapter["key"], "size": adapter["composition"]["size"], "size_asked": adapter["size"],
            "methods": adapter["methods"], "tasks": adapter["tasks"], "train_wall_time_s": adapter["train_wall_time_s"],
            "peak_rss_mib": adapter["peak_rss_mib"]},
        "n": n,
        "em": round(sum(ems) / n, 4) if n else 0.0, "em_stderr": round(stderr(ems), 4), "em_ci95": wilson(sum(ems), n),
        "f1": mean("f1"), "f1_stderr": round(stderr([q["f1"] for q in per_q]), 4),
        "finished": mean("finished"), "steps": mean("steps"),
        "format_error_rate": round(sum(q["format_errors"] for q in per_q) / turns, 4) if turns else 0.0,
        "prompt_tokens_per_q": mean("prompt_tokens"), "gen_tokens_per_q": mean("gen_tokens"),
        "wall_s_per_q": mean("wall_s"), "cost": cost,
        "comparability": result["comparability"],
    }


def read_cells(cells_dir: Path, cell_ids: list[str] | None = None) -> tuple[list[dict], list[dict], list[str]]:
    """(finished results, failed records, missing ids) of the given cells (default: every cell in the folder)."""
    cells_dir = Path(cells_dir)
    if cell_ids is None:
        cell_ids = sorted(p.stem for p in cells_dir.glob("*.json") if not p.name.startswith(".") and p.stem.count(".") == 0)
    finished, failed, missing = [], [], []
    for cid in cell_ids:
        done, fail = cells_dir / f"{cid}.json", cells_dir / f"{cid}.failed.json"
        if done.exists():
            finished.append(json.loads(done.read_text()))
        elif fail.exists():
            failed.append(json.loads(fail.read_text()))
        else:
            missing.append(cid)
    return finished, failed, missing


def build(results: list[dict], grid: str, failed: list[dict] = (), missing: list[str] = ()) -> dict:
    rows = sorted((row_of(r) for r in results), key=lambda r: (r["dataset"], r["noise"], r["model"], r["method"],
                                                              json.dumps(r["adapter"], sort_keys=True), r["seed"]))
    return {"schema_version": SCHEMA_VERSION, "grid": grid, "rows": rows,
            "failed": [{"cell_id": f["cell_id"], "label": f["label"], "error": f["error"]} for f in failed],
            "missing": list(missing), "comparisons": compare_ft_to_prompting(results)}


def compare_ft_to_prompting(results: list[dict]) -> list[dict]:
    """FireAct's central question per model, dataset and noise: fine-tuned minus few-shot ReAct exact match,
    paired over the same questions (standard error of the per-question differences)."""
    by_group = defaultdict(list)
    for r in results:
        by_group[(r["cell"]["model"]["name"], r["comparability"]["group"])].append(r)
    out = []
    for (model, _), members in sorted(by_group.items()):
        prompted = [r for r in members if r["cell"]["method"] == "react"]
        for ft in (r for r in members if r["cell"]["method"] == "ft"):
            for base in prompted:
                base_em = {q["id"]: q["em"] for q in base["per_question"]}
                diffs = [q["em"] - base_em[q["id"]] for q in ft["per_question"] if q["id"] in base_em]
                if not diffs:
                    continue
                delta, se = sum(diffs) / len(diffs), stderr(diffs)
                out.append({"model": model, "dataset": ft["cell"]["dataset"], "noise": ft["cell"]["noise"],
                            "finetuned": ft["cell_id"], "prompted": base["cell_id"], "n": len(diffs),
                            "delta_em": round(delta, 4), "delta_em_stderr": round(se, 4),
                            "delta_em_ci95": [round(delta - Z95 * se, 4), round(delta + Z95 * se, 4)]})
    return out


def validate(board: dict) -> None:
    import jsonschema

    jsonschema.validate(board, json.loads(SCHEMA_PATH.read_text()))


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def markdown(board: dict) -> str:
    lines = [f"# Leaderboard: grid `{board['grid']}`", "",
             "Exact match (EM) in %, ± its standard error, with the 95% Wilson interval; wall time and cost per question.",
             "Rows with the same `group` ran on the same questions with the same search corpus and noise draws.", "",
             "| model | method | train data | dataset | noise | n | EM % | 95% CI | F1 % | finished % | steps | format err/turn | s/question | group |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in board["rows"]:
        data = "-" if not r["adapter"] else f"{r['adapter']['methods']} / {r['adapter']['tasks']} / {r['adapter']['size']}"
        lo, hi = r["em_ci95"]
        lines.append(f"| {r['model']} | {r['method']} | {data} | {r['dataset']} | {r['noise']} | {r['n']} | "
                     f"{_pct(r['em'])} ± {_pct(r['em_stderr'])} | {_pct(lo)}–{_pct(hi)} | {_pct(r['f1'])} | "
                     f"{_pct(r['finished'])} | {r['steps']:.2f} | {r['format_error_rate']:.3f} | {r['wall_s_per_q']:.2f} | "
                     f"`{r['comparability']['group'][:6]}` |")
    if board["comparisons"]:
        lines += ["", "## Fine-tuned against few-shot ReAct (paired, same questions)", "",
                  "| model | dataset | noise | n | ΔEM (points) | 95% CI |", "|---|---|---|---|---|---|"]
        for c in board["comparisons"]:
            lo, hi = c["delta_em_ci95"]
            lines.append(f"| {c['model']} | {c['dataset']} | {c['noise']} | {c['n']} | {100 * c['delta_em']:+.1f} ± "
                         f"{100 * c['delta_em_stderr']:.1f} | {100 * lo:+.1f} to {100 * hi:+.1f} |")
    if board["failed"] or board["missing"]:
        lines += ["", "## Not finished", ""] + [f"- failed: {f['label']}: {f['error']}" for f in board["failed"]] + \
                 [f"- not run yet: cell {cid}" for cid in board["missing"]]
    return "\n".join(lines) + "\n"


def out_dir(grid: str, results: Path = RESULTS_DIR) -> Path:
    return Path(results) if grid == "default" else Path(results) / grid


def write(board: dict, out_dir: Path = RESULTS_DIR, plots: bool = True) -> list[Path]:
    validate(board)
    out_dir = Path(out_dir)
    write_json(out_dir / "leaderboard.json", board)
    md = out_dir / "leaderboard.md"
    tmp = md.with_name(".leaderboard.md.tmp")
    tmp.write_text(markdown(board))
    tmp.replace(md)
    written = [out_dir / "leaderboard.json", md]
    if plots:
        from fireact_bench.plots import plot_all

        written += plot_all(board, out_dir / "plots")
    return written


def main(argv: list[str] | None = None) -> int:
    """Rebuild the leaderboard of a grid from its cell results, running nothing."""
    import argparse

    from fireact_bench.grid import load_grid
    from fireact_bench.sweep import cell_id

    parser = argparse.ArgumentParser(prog="fireact-bench leaderboard", description=main.__doc__)
    parser.add_argument("--grid", default="default")
    parser.add_argument("--results", default=str(RESULTS_DIR), help="the store holding cells/")
    parser.add_argument("--out", help="default: results/ for the default grid, results/<grid>/ otherwise")
    args = parser.parse_args(argv)
    grid = load_grid(args.grid)
    results = Path(args.results)
    finished, failed, missing = read_cells(results / "cells", [cell_id(c) for c in grid.cells])
    written = write(build(finished, grid.name, failed, missing), Path(args.out) if args.out else out_dir(grid.name, results))
    print(f"{len(finished)} rows, {len(failed)} failed, {len(missing)} not run; wrote " + ", ".join(map(str, written)))
    return 0
