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
from fireact_bench.harness.benchmark.stats import holm, mcnemar_exact, paired_difference, stderr, wilson
from fireact_bench.harness.files import write_json, write_text
from fireact_bench.harness.study import FINETUNED

SCHEMA_PATH = Path(__file__).parent / "schema" / "leaderboard.schema.json"
SCHEMA_VERSION = 3


def served_as(result: dict) -> str | None:
    """How the cell's adapter was served: merged (into the base weights), lora (vLLM LoRA requests), peft (lm-eval's
    HF model with peft), full_model; None where the cell result does not say (results from before it was recorded)."""
    adapter = (result.get("engine") or {}).get("adapter") or {}
    return adapter.get("served_as")


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
            "peak_rss_mib": adapter["peak_rss_mib"], "served_as": served_as(result)},
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
            "missing": list(missing), "comparisons": comparisons(results)}


def comparisons(results: list[dict]) -> list[dict]:
    """Every fine-tuned row against each prompting row of its group, and fine-tuned rows against each other,
    on the same questions with the same tool: the paired exact-match difference (a - b) with its 95% CI, the
    exact McNemar test of the per-question outcomes, and Holm's adjustment across all of the grid's tests."""
    by_group = defaultdict(list)
    for r in results:
        by_group[(r["cell"]["model"]["name"], r["comparability"]["group"])].append(r)
    out = []
    for (model, _), members in sorted(by_group.items()):
        tuned = sorted((r for r in members if r["cell"]["method"] == FINETUNED), key=_label)
        prompted = sorted((r for r in members if r["cell"]["method"] != FINETUNED), key=_label)
        pairs = [(ft, base, "ft_vs_prompting") for ft in tuned for base in prompted]
        pairs += [(x, y, "ft_vs_ft") for i, x in enumerate(tuned) for y in tuned[i + 1:]]
        for a, b, kind in pairs:
            em_a = {q["id"]: q["em"] for q in a["per_question"]}
            em_b = {q["id"]: q["em"] for q in b["per_question"]}
            diff = paired_difference(em_a, em_b)
            if diff is None:
                continue
            out.append({"kind": kind, "model": model, "dataset": a["cell"]["dataset"], "noise": a["cell"]["noise"],
                        "a": a["cell_id"], "a_label": _label(a), "b": b["cell_id"], "b_label": _label(b), "n": diff["n"],
                        "delta_em": diff["delta"], "delta_em_stderr": diff["stderr"], "delta_em_ci95": diff["ci95"],
                        "mcnemar": mcnemar_exact(em_a, em_b)})
    for c, adjusted in zip(out, holm([c["mcnemar"]["p"] for c in out])):
        c["p_holm"] = adjusted
    return out


def _label(result: dict) -> str:
    """What a row is, in a grid's words: the method, or the fine-tuning data mix."""
    cell = result["cell"]
    if cell["method"] != FINETUNED:
        return f"few-shot {cell['method']}"
    a = cell["adapter"]
    return f"ft {a['methods']}/{a['tasks']}/{a['size'] or 'all'}"


def validate(board: dict) -> None:
    import jsonschema

    jsonschema.validate(board, json.loads(SCHEMA_PATH.read_text()))


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def markdown(board: dict) -> str:
    lines = [f"# Leaderboard: grid `{board['grid']}`", "",
             "Exact match (EM) in %, ± its standard error, with the 95% Wilson interval; wall time and cost per question.",
             "Rows with the same `group` ran on the same questions with the same search corpus and noise draws.",
             "Train data: methods / tasks / trajectories (how the adapter was served: merged, lora, peft).", "",
             "| model | method | train data | dataset | noise | n | EM % | 95% CI | F1 % | finished % | steps "
             "| format err/turn | tool err/q | s/question | group |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in board["rows"]:
        data = "-" if not r["adapter"] else f"{r['adapter']['methods']} / {r['adapter']['tasks']} / {r['adapter']['size']}" + \
            (f" ({r['adapter']['served_as']})" if r["adapter"]["served_as"] else "")
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
        lines += ["", "## Paired comparisons (same questions, same tool)", "",
                  "ΔEM = a − b in points over the questions both rows ran, 95% CI of the paired difference; McNemar: exact "
                  "test on the questions only one row got right (a only / b only); p Holm: adjusted over all comparisons "
                  "of the grid.", "",
                  "| model | dataset | noise | a | b | n | ΔEM (points) | 95% CI | a only / b only | McNemar p | p Holm |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in board["comparisons"]:
            lo, hi = c["delta_em_ci95"]
            lines.append(f"| {c['model']} | {c['dataset']} | {c['noise']} | {c['a_label']} | {c['b_label']} | {c['n']} | "
                         f"{100 * c['delta_em']:+.1f} ± {100 * c['delta_em_stderr']:.1f} | {100 * lo:+.1f} to {100 * hi:+.1f} | "
                         f"{c['mcnemar']['a_only']} / {c['mcnemar']['b_only']} | {c['mcnemar']['p']:.3g} | {c['p_holm']:.3g} |")
    if board["failed"] or board["missing"]:
        lines += ["", "## Not finished", ""] + [f"- failed: {f['label']}: {f['error']}" for f in board["failed"]] + \
                 [f"- not run yet: cell {cid}" for cid in board["missing"]]
    return "\n".join(lines) + "\n"


def out_dir(grid: str, results: Path = RESULTS_DIR) -> Path:
    return Path(results) if grid == "default" else Path(results) / grid


def write(board: dict, out_dir: Path = RESULTS_DIR, plots: bool = True, results: list[dict] | None = None) -> list[Path]:
    """leaderboard.json and .md, plots/ (one per finding the grid holds), and from the cell results (their per-question
    outcomes), findings.md: each finding's table, the paper's number beside ours (findings.py)."""
    validate(board)
    out_dir = Path(out_dir)
    write_json(out_dir / "leaderboard.json", board)
    md = write_text(out_dir / "leaderboard.md", markdown(board))
    written = [out_dir / "leaderboard.json", md]
    if results:
        from fireact_bench.harness.benchmark import findings

        found = findings.tables(results)
        if found:
            written.append(write_text(out_dir / "findings.md", findings.markdown(found)))
    if plots:
        from fireact_bench.harness.benchmark.plots import plot_all

        plots = plot_all(board, out_dir / "plots")
        for stale in set((out_dir / "plots").glob("*.png")) - set(plots):  # a plot the rows no longer make
            stale.unlink()
        written += plots
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
    written = write(board, Path(args.out) if args.out else out_dir(grid, results), plots=not args.no_plots, results=finished)
    stale = [r for r in board["rows"] if r["other_versions"]]
    print(f"{len(finished)} rows ({len(stale)} finished under other package versions), {len(failed)} failed, "
          f"{len(missing)} not run; wrote " + ", ".join(map(str, written)))
    return 0
