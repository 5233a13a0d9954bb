"""Cell results -> results/leaderboard.json (validated against harness/schema), leaderboard.md and plots.

One row per finished cell. Exact match carries its standard error (sample standard deviation / sqrt(n),
as lm-eval reports it) and a 95% Wilson interval, which stays inside [0, 1] and is honest for the
small n and near-zero rates of small backbones. `comparability.group` says which rows may be set
side by side (same questions, same search corpus, same noise draws).
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from fireact_bench.harness.agent.result import QuestionResult
from fireact_bench.harness.benchmark.cells import RESULTS_DIR, cells_dir, other_versions, read_cells, read_index
from fireact_bench.harness.benchmark.grid import load_grid
from fireact_bench.harness.benchmark.stats import paired_difference, stderr, wilson
from fireact_bench.harness.files import write_json, write_text
from fireact_bench.harness.study import FINETUNED

SCHEMA_PATH = Path(__file__).parent / "schema" / "leaderboard.schema.json"
SCHEMA_VERSION = 2


def row_of(result: dict) -> dict:
    cell, adapter = result["cell"], result.get("adapter")
    per_q = [QuestionResult.from_dict(q) for q in result["per_question"]]
    n = len(per_q)
    mean = lambda key: round(sum(getattr(q, key) for q in per_q) / n, 4) if n else 0.0  # noqa: E731
    ems = [q.em for q in per_q]
    turns = sum(q.steps for q in per_q)
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
        "em": mean("em"), "em_stderr": round(stderr(ems), 4), "em_ci95": wilson(sum(ems), n),
        "f1": mean("f1"), "f1_stderr": round(stderr([q.f1 for q in per_q]), 4),
        "finished": mean("finished"), "steps": mean("steps"),
        "format_error_rate": round(sum(q.format_errors for q in per_q) / turns, 4) if turns else 0.0,
        "tool_errors_per_q": mean("tool_errors"),
        "prompt_tokens_per_q": mean("prompt_tokens"), "gen_tokens_per_q": mean("gen_tokens"),
        "wall_s_per_q": mean("wall_s"), "cost": cost,
        "comparability": result["comparability"],
        "other_versions": other_versions(result),
    }


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
        for ft in (r for r in members if r["cell"]["method"] == FINETUNED):
            for base in prompted:
                diff = paired_difference({q["id"]: q["em"] for q in ft["per_question"]},
                                         {q["id"]: q["em"] for q in base["per_question"]})
                if diff is None:
                    continue
                out.append({"model": model, "dataset": ft["cell"]["dataset"], "noise": ft["cell"]["noise"],
                            "finetuned": ft["cell_id"], "prompted": base["cell_id"], "n": diff["n"],
                            "delta_em": diff["delta"], "delta_em_stderr": diff["stderr"], "delta_em_ci95": diff["ci95"]})
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
             "| model | method | train data | dataset | noise | n | EM % | 95% CI | F1 % | finished % | steps "
             "| format err/turn | tool err/q | s/question | group |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in board["rows"]:
        data = "-" if not r["adapter"] else f"{r['adapter']['methods']} / {r['adapter']['tasks']} / {r['adapter']['size']}"
        lo, hi = r["em_ci95"]
        lines.append(f"| {r['model']} | {r['method']} | {data} | {r['dataset']} | {r['noise']} | {r['n']} | "
                     f"{_pct(r['em'])} ± {_pct(r['em_stderr'])} | {_pct(lo)}–{_pct(hi)} | {_pct(r['f1'])} | "
                     f"{_pct(r['finished'])} | {r['steps']:.2f} | {r['format_error_rate']:.3f} | {r['tool_errors_per_q']:.2f} | "
                     f"{r['wall_s_per_q']:.2f} | `{r['comparability']['group'][:6]}`{' †' if r['other_versions'] else ''} |")
    stale = [r for r in board["rows"] if r["other_versions"]]
    if stale:
        lines += ["", "† finished under other package versions than this environment's: "
                  + "; ".join(sorted({f"{k} {a} → {b}" for r in stale for k, (a, b) in r["other_versions"].items()}))]
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
    md = write_text(out_dir / "leaderboard.md", markdown(board))
    written = [out_dir / "leaderboard.json", md]
    if plots:
        from fireact_bench.harness.benchmark.plots import plot_all

        written += plot_all(board, out_dir / "plots")
    return written


def main(argv: list[str] | None = None) -> int:
    """Rebuild the leaderboard of a grid from its cell results and the grid's index: reads files, runs nothing."""
    import argparse

    parser = argparse.ArgumentParser(prog="fireact-bench leaderboard", description=main.__doc__)
    parser.add_argument("--grid", default="default", help="the grid's name (its index: results/index/<grid>.json)")
    parser.add_argument("--results", default=str(RESULTS_DIR), help="the store holding cells/ and index/")
    parser.add_argument("--out", help="default: results/ for the default grid, results/<grid>/ otherwise")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    results = Path(args.results)
    grid = load_grid(args.grid).name
    entries = read_index(results, grid)
    finished, failed, missing = read_cells(cells_dir(results), [e["cell_id"] for e in entries])
    board = build(finished, grid, failed, missing)
    written = write(board, Path(args.out) if args.out else out_dir(grid, results), plots=not args.no_plots)
    stale = [r for r in board["rows"] if r["other_versions"]]
    print(f"{len(finished)} rows ({len(stale)} finished under other package versions), {len(failed)} failed, "
          f"{len(missing)} not run; wrote " + ", ".join(map(str, written)))
    return 0
