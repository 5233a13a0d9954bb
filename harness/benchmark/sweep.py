"""The sweep: every cell of a grid, fine-tuning where a cell needs an adapter, resumable at any moment.

A cell's id hashes everything that determines its result (benchmark/identity.py). Its result is one JSON file written
atomically after the evaluation, so a killed sweep leaves finished cells whole and nothing
half-written that looks finished; a rerun skips them. A failing cell is recorded (`<id>.failed.json`)
and retried on the next run; the sweep goes on. Adapters are trained once per (base model, data,
training config) key and reused by every cell that needs them.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import time
import traceback
from pathlib import Path

from fireact_bench.harness.agent.result import QuestionResult
from fireact_bench.harness.benchmark import identity
from fireact_bench.harness.benchmark.cells import RESULTS_DIR, adapters_dir, cells_dir, read_cells, write_index
from fireact_bench.harness.benchmark.grid import GRIDS_DIR, Cell, Grid, load_grid
from fireact_bench.harness.files import check_writable, write_json, write_lines
from fireact_bench.harness.study import FINETUNED

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ running

def ensure_adapter(cell: Cell, adapters: Path) -> tuple[Path, dict]:
    """Train the cell's adapter unless a finished one with the same key exists; (folder, manifest)."""
    from fireact_bench.adapters.finetune import finetune

    key, config, data = identity.cell_adapter_plan(cell)
    out = adapters / key
    finetune(data, config, out)
    return out, json.loads((out / "manifest.json").read_text())


def index(grid: Grid, results: Path) -> list[tuple[str, Cell]]:
    """(cell id, cell) of every cell of the grid, recorded in the grid's index for the leaderboard."""
    ids = [(identity.cell_id(cell), cell) for cell in grid.cells]
    write_index(results, grid.name, [{"cell_id": cid, "label": cell.label()} for cid, cell in ids])
    return ids


def run_cell(cell: Cell, adapters: Path, cells: Path, cid: str) -> dict:
    from fireact_bench.harness.lmeval.api import evaluate

    started = time.time()
    model_args = dict(cell.model["model_args"])
    adapter = None
    if cell.method == FINETUNED:
        adapter_dir, manifest = ensure_adapter(cell, adapters)
        model_args["peft"] = str(adapter_dir / "model")
        adapter = {**cell.adapter, "key": adapter_dir.name, "composition": manifest["composition"],
                   "train_wall_time_s": manifest["wall_time_s"], "peak_rss_mib": manifest["peak_rss_mib"],
                   "train_loss": manifest["train_loss"], "tokens_seen": manifest["tokens_seen"]}
    eval_started = time.time()
    out = evaluate([cell.task], model=cell.model["inner"], model_args=model_args, limit=cell.limit,
                   gen_kwargs=identity.gen_kwargs(cell), batch_size=cell.model.get("batch_size", 1), log_samples=True)
    metrics = {k.split(",")[0]: v for k, v in out["results"][cell.task].items() if "," in k and isinstance(v, (int, float))}
    samples = sorted(out["samples"][cell.task], key=lambda s: s["doc_id"])
    per_question = [QuestionResult.from_sample(s).to_dict() for s in samples]
    # trajectories, for reading (not a marker: the cell's own JSON, written last, is)
    write_lines(cells / f"{cid}.samples.jsonl",
                ({"id": s["doc"]["id"], "question": s["doc"]["question"], "gold": s["doc"]["answer"],
                  "response": s["resps"][0][0]} for s in samples))
    return {
        "cell_id": cid, "status": "finished", "cell": cell.spec(), "task": cell.task, "label": cell.label(),
        "comparability": identity.comparability(cell), "n": len(per_question), "metrics": metrics,
        "per_question": per_question, "adapter": adapter,
        "eval_wall_time_s": round(time.time() - eval_started, 2), "wall_time_s": round(time.time() - started, 2),
        "host": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }


def sweep(grid: Grid | str, results: Path = RESULTS_DIR, adapters: Path | None = None, progress: bool = True) -> dict:
    """Run every unfinished cell; returns {grid, cells, skipped, finished, failed: [...], cell_ids}.
    adapters: where adapters are trained and found (default: the results folder's)."""
    from tqdm import tqdm

    grid = load_grid(grid) if isinstance(grid, str) else grid
    cells, adapters = cells_dir(results), Path(adapters or adapters_dir(results))
    cells.mkdir(parents=True, exist_ok=True)
    check_writable(cells)
    ids = index(grid, results)
    todo = [(cid, cell) for cid, cell in ids if not (cells / f"{cid}.json").exists()]
    summary = {"grid": grid.name, "cells": len(ids), "skipped": len(ids) - len(todo), "finished": 0, "failed": []}
    bar = tqdm(total=len(todo), desc=f"grid {grid.name}", unit="cell", disable=not progress)
    for cid, cell in todo:
        bar.set_postfix_str(cell.label())
        failed_path = cells / f"{cid}.failed.json"
        try:
            result = run_cell(cell, adapters, cells, cid)
        except Exception as err:  # recorded, and the sweep goes on
            log.exception("cell %s (%s) failed", cid, cell.label())
            # a store that cannot take the record (disk full, read-only) ends the sweep with this one error
            write_json(failed_path, {"cell_id": cid, "status": "failed", "cell": cell.spec(), "label": cell.label(),
                                     "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-4000:]})
            summary["failed"].append({"cell_id": cid, "label": cell.label(), "error": f"{type(err).__name__}: {err}"})
        else:
            write_json(cells / f"{cid}.json", result)  # the finished marker: written last, atomically
            failed_path.unlink(missing_ok=True)
            summary["finished"] += 1
        bar.update(1)
    bar.close()
    summary["cell_ids"] = [cid for cid, _ in ids]
    return summary


def main(argv: list[str] | None = None) -> int:
    import argparse

    from fireact_bench.harness.benchmark import leaderboard

    parser = argparse.ArgumentParser(prog="fireact-bench benchmark", description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default="default", help="a shipped grid (harness/benchmark/grids/: "
                        + ", ".join(sorted(p.stem for p in GRIDS_DIR.glob("*.yaml"))) + ") or a grid YAML path")
    parser.add_argument("--results", default=str(RESULTS_DIR), help="the store: cells/ and adapters/ (keyed by hash, shared by grids)")
    parser.add_argument("--out", help="leaderboard.json, leaderboard.md, plots/ (default: results/ for the default grid, results/<grid>/ otherwise)")
    parser.add_argument("--list", action="store_true", help="print the grid's cells and whether each is done; run nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    results = Path(args.results)
    grid = load_grid(args.grid)
    if args.list:
        for cid, cell in index(grid, results):
            state = "done" if (cells_dir(results) / f"{cid}.json").exists() else \
                "failed" if (cells_dir(results) / f"{cid}.failed.json").exists() else "todo"
            print(f"{cid}  {state:<6}  {cell.label()}")
        return 0
    started = time.time()
    summary = sweep(grid, results)
    finished, failed, missing = read_cells(cells_dir(results), summary["cell_ids"])
    board = leaderboard.build(finished, grid.name, failed, missing)
    written = leaderboard.write(board, Path(args.out) if args.out else leaderboard.out_dir(grid.name, results))
    print(f"grid {grid.name}: {summary['cells']} cells, {summary['skipped']} already done, {summary['finished']} run now, "
          f"{len(summary['failed'])} failed, in {time.time() - started:.0f}s")
    for f in summary["failed"]:
        print(f"  FAILED {f['label']}: {f['error']}  (details: {cells_dir(results) / (f['cell_id'] + '.failed.json')})")
    print("wrote " + ", ".join(str(p) for p in written))
    return 1 if summary["failed"] else 0
