"""The sweep: every cell of a grid, fine-tuning where a cell needs an adapter, resumable at any moment.

A cell's id hashes everything that determines its result (benchmark/identity.py). Its result is one JSON file written
atomically after the evaluation, so a killed sweep leaves finished cells whole and nothing
half-written that looks finished; a rerun skips them. A failing cell is recorded (`<id>.failed.json`)
and retried on the next run; the sweep goes on. Adapters are trained once per (base model, data,
training config) key and reused by every cell that needs them.

Two sweeps on one results folder share the work: a cell is evaluated under its lock file and an adapter
trained under its own (benchmark/locks.py), so a cell locked by another live sweep is skipped (and said
so), and a cell whose adapter another process is training waits for it, then reuses it.

Where the cells run is the executor's business (benchmark/executors.py): this loop in-process (`local`), or
one job per cell and per adapter (`submitit-local`, `slurm`), each job being `fireact-bench run-cell`.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import platform
import time
import traceback
from pathlib import Path

from fireact_bench.harness.agent.result import QuestionResult
from fireact_bench.harness.benchmark import identity
from fireact_bench.harness.benchmark.cells import RESULTS_DIR, adapters_dir, cells_dir, read_cells, read_index, write_index
from fireact_bench.harness.benchmark.grid import GRIDS_DIR, Cell, Grid, load_grid
from fireact_bench.harness.benchmark.locks import Lock, describe
from fireact_bench.harness.files import check_writable, write_json, write_lines
from fireact_bench.harness.study import FINETUNED

log = logging.getLogger(__name__)

# The function that trains an adapter, called as trainer(training set, FinetuneConfig, out_dir) and expected to
# leave out_dir/manifest.json (finished: true) and out_dir/model/. `--trainer MODULE:FUNCTION` names another:
# a trainer of your own (multi-GPU, another library), or the tests' instant stand-in.
DEFAULT_TRAINER = "fireact_bench.adapters.finetune:finetune"


def return_free_memory() -> str:
    """Hand the heap's free pages back to the OS; which allocator did it. Freeing the vLLM engine frees nothing the
    OS sees otherwise: tcmalloc (which `make` preloads) keeps freed pages for reuse (measured: 3.6 GiB resident after
    the engine's release, 0.8 GiB after this). Without tcmalloc, glibc's malloc_trim does the same for its heap."""
    import ctypes

    process = ctypes.CDLL(None)
    for name, call in (("tcmalloc", "MallocExtension_ReleaseFreeMemory"), ("glibc", "malloc_trim")):
        function = getattr(process, call, None)
        if function is not None:
            function(*([0] if name == "glibc" else []))
            return name
    return "none"


def load_function(spec: str | None):
    module, _, name = (spec or DEFAULT_TRAINER).partition(":")
    return getattr(importlib.import_module(module), name)


# ------------------------------------------------------------------------------------ running

def adapter_manifest(out: Path) -> dict | None:
    path = out / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else None
    return manifest if manifest and manifest.get("finished") else None


def ensure_adapter(cell: Cell, adapters: Path, trainer: str | None = None) -> tuple[Path, dict]:
    """Train the cell's adapter unless a finished one with the same key exists; (folder, manifest).
    Another live process training it holds its lock: wait for it, then reuse what it trained."""
    key, config, data = identity.cell_adapter_plan(cell)
    out = Path(adapters) / key
    if adapter_manifest(out) is None:
        with Lock(Path(adapters) / f"{key}.lock"):
            if adapter_manifest(out) is None:
                # the previous cell's vLLM engine (its KV cache above all) is not needed while training, and
                # a merged adapter gets an engine of its own anyway: free it, so training has the memory (served
                # as LoRA, the engine is built again once per adapter trained: seconds, against minutes of training)
                from fireact_bench.harness.lmeval import vllm_engine

                vllm_engine.release()
                return_free_memory()
                load_function(trainer)(data, config, out)
    return out, adapter_manifest(out)


def index(grid: Grid, results: Path) -> list[tuple[str, Cell]]:
    """(cell id, cell) of every cell of the grid, recorded in the grid's index: for the leaderboard, and so that
    `fireact-bench run-cell <id>` finds the cell (its spec) and its adapter's key."""
    ids = [(identity.cell_id(cell), cell) for cell in grid.cells]
    write_index(results, grid.name, [{"cell_id": cid, "label": cell.label(), "cell": cell.spec(),
                                      "adapter_key": identity.cell_adapter_plan(cell)[0] if cell.adapter else None}
                                     for cid, cell in ids])
    return ids


def run_cell(cell: Cell, adapters: Path, cells: Path, cid: str, trainer: str | None = None) -> dict:
    from fireact_bench.harness.lmeval.api import evaluate

    started = time.time()
    model_args = dict(cell.model["model_args"])
    adapter = None
    if cell.method == FINETUNED:
        adapter_dir, manifest = ensure_adapter(cell, adapters, trainer)
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
        # the model info of the fireact model: the engine's settings and how an adapter was served (vllm_engine.py)
        "engine": out.get("config", {}).get("fireact_engine"),
        "eval_wall_time_s": round(time.time() - eval_started, 2), "wall_time_s": round(time.time() - started, 2),
        "started_at": round(started, 3), "host": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }


def attempt(cid: str, cell: Cell, cells: Path, adapters: Path, trainer: str | None = None) -> dict:
    """Run one cell unless it is done or another live process holds it: {status: done | locked | finished | failed}."""
    done, failed_path = cells / f"{cid}.json", cells / f"{cid}.failed.json"
    if done.exists():
        return {"status": "done"}
    lock = Lock(cells / f"{cid}.lock")
    if not lock.acquire():
        return {"status": "locked", "owner": describe(lock.holder)}
    try:
        if done.exists():  # finished by another sweep between our look and our lock
            return {"status": "done"}
        try:
            result = run_cell(cell, adapters, cells, cid, trainer)
        except Exception as err:  # recorded, and the sweep goes on
            log.exception("cell %s (%s) failed", cid, cell.label())
            return write_failure(cells, cid, cell, f"{type(err).__name__}: {err}", traceback.format_exc())
        write_json(done, result)  # the finished marker: written last, atomically
        failed_path.unlink(missing_ok=True)
        return {"status": "finished"}
    finally:
        lock.release()


def write_failure(cells: Path, cid: str, cell: Cell, error: str, details: str = "") -> dict:
    """Record a failed try (`<id>.failed.json`, what the summary and the leaderboard list) unless the cell is done."""
    if not (cells / f"{cid}.json").exists():
        # a store that cannot take the record (disk full, read-only) ends the sweep with this one error
        write_json(cells / f"{cid}.failed.json", {"cell_id": cid, "status": "failed", "cell": cell.spec(),
                                                  "label": cell.label(), "error": error, "traceback": details[-4000:]})
    return {"status": "failed", "error": error}


def sweep(grid: Grid | str, results: Path = RESULTS_DIR, adapters: Path | None = None, progress: bool = True,
          trainer: str | None = None) -> dict:
    """Run every unfinished cell in this process; returns {grid, cells, skipped, finished, failed: [...],
    locked: [...], cell_ids}. adapters: where adapters are trained and found (default: the results folder's)."""
    from tqdm import tqdm

    grid = load_grid(grid) if isinstance(grid, str) else grid
    cells, adapters = cells_dir(results), Path(adapters or adapters_dir(results))
    cells.mkdir(parents=True, exist_ok=True)
    check_writable(cells)
    ids = index(grid, results)
    todo = [(cid, cell) for cid, cell in ids if not (cells / f"{cid}.json").exists()]
    summary = {"grid": grid.name, "cells": len(ids), "skipped": len(ids) - len(todo), "finished": 0, "failed": [], "locked": []}
    bar = tqdm(total=len(todo), desc=f"grid {grid.name}", unit="cell", disable=not progress)
    for cid, cell in todo:
        bar.set_postfix_str(cell.label())
        record(summary, cid, cell.label(), attempt(cid, cell, cells, adapters, trainer))
        bar.update(1)
    bar.close()
    summary["cell_ids"] = [cid for cid, _ in ids]
    return summary


def record(summary: dict, cid: str, label: str, status: dict) -> None:
    """Count one cell's outcome into a sweep summary (shared by every executor)."""
    entry = {"cell_id": cid, "label": label}
    if status["status"] == "done":
        summary["skipped"] += 1
    elif status["status"] == "finished":
        summary["finished"] += 1
    elif status["status"] == "locked":  # another live sweep runs it: not ours, not a failure
        summary["locked"].append({**entry, "owner": status["owner"]})
    else:
        summary["failed"].append({**entry, "error": status["error"]})


# ------------------------------------------------------------------------------------ one cell: `fireact-bench run-cell`

def run_cell_command(argv: list[str]) -> dict:
    """`fireact-bench run-cell`, returning the outcome: what each job of an executor runs."""
    import argparse

    from fireact_bench.harness.benchmark.executors import load

    parser = argparse.ArgumentParser(prog="fireact-bench run-cell", description=run_cell_main.__doc__)
    parser.add_argument("cell_id", nargs="?", help="a cell id from the grid's index (`fireact-bench benchmark --list`)")
    parser.add_argument("--adapter", help="train (or wait for, then reuse) this adapter key instead of running a cell")
    parser.add_argument("--grid", default="default", help="the grid the id belongs to (its index: results/index/<grid>.json)")
    parser.add_argument("--results", default=str(RESULTS_DIR))
    parser.add_argument("--adapters", help="default: <results>/adapters")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (e.g. one that registers an lm-eval model of your own)")
    parser.add_argument("--trainer", help=f"MODULE:FUNCTION that trains adapters (default {DEFAULT_TRAINER})")
    args = parser.parse_args(argv)
    if bool(args.cell_id) == bool(args.adapter):
        parser.error("give a cell id or --adapter KEY (one of them)")
    for module in args.imports:
        importlib.import_module(module)
    results = Path(args.results)
    adapters = Path(args.adapters or adapters_dir(results))
    grid, _ = load(args.grid)
    entries = read_index(results, grid.name)
    entry = next((e for e in entries if e["cell_id"] == args.cell_id or args.adapter and e.get("adapter_key") == args.adapter), None)
    if entry is None or "cell" not in entry:
        raise ValueError(f"{args.cell_id or 'adapter ' + args.adapter} is not in the index of grid {grid.name!r} "
                         f"({Path(results) / 'index' / (grid.name + '.json')}): run `fireact-bench benchmark --grid {args.grid} --list`")
    cell = Cell(**entry["cell"])
    # the code or data may have changed since the index was written: never file a result under another id
    now = identity.cell_adapter_plan(cell)[0] if args.adapter else identity.cell_id(cell)
    if now != (args.adapter or args.cell_id):
        raise ValueError(f"{entry['label']}: its id is now {now}, not {args.adapter or args.cell_id} (code, data or versions "
                         "changed since the index was written): rerun `fireact-bench benchmark` to plan it again")
    if args.adapter:
        ensure_adapter(cell, adapters, args.trainer)
        return {"status": "ready", "label": f"adapter {args.adapter} ({entry['label']})"}
    cells = cells_dir(results)
    cells.mkdir(parents=True, exist_ok=True)
    return {**attempt(args.cell_id, cell, cells, adapters, args.trainer), "label": entry["label"]}


def run_cell_main(argv: list[str] | None = None) -> int:
    """Run one cell of a grid by its id (or train one adapter by its key), as a sweep's job does: skipped when
    done or held by another live process, recorded as failed when it fails."""
    status = run_cell_command(argv)
    detail = {"locked": f"held by {status.get('owner')}", "failed": status.get("error")}.get(status["status"], "")
    print(f"{status['label']}: {status['status']} {detail}".rstrip())
    return 1 if status["status"] == "failed" else 0


# ------------------------------------------------------------------------------------ the grid: `fireact-bench benchmark`

def main(argv: list[str] | None = None) -> int:
    import argparse

    from fireact_bench.harness.benchmark import executors, leaderboard

    parser = argparse.ArgumentParser(prog="fireact-bench benchmark", description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default="default", help="a shipped grid (harness/benchmark/grids/: "
                        + ", ".join(sorted(p.stem for p in GRIDS_DIR.glob("*.yaml"))) + ") or a grid YAML path")
    parser.add_argument("--results", default=str(RESULTS_DIR), help="the store: cells/ and adapters/ (keyed by hash, shared by grids)")
    parser.add_argument("--out", help="leaderboard.json, leaderboard.md, plots/ (default: results/ for the default grid, results/<grid>/ otherwise)")
    parser.add_argument("--list", action="store_true", help="print the grid's cells and whether each is done; run nothing")
    parser.add_argument("--estimate", action="store_true", help="print the grid's estimated GPU-hours (and API dollars); run nothing")
    parser.add_argument("--measured", action="append", default=[], metavar="LEADERBOARD_JSON",
                        help="with --estimate: per-question costs measured by another grid (default: this grid's own leaderboard)")
    executors.add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for module in args.imports:
        importlib.import_module(module)
    results = Path(args.results)
    grid, slurm = executors.load(args.grid)
    out = Path(args.out) if args.out else leaderboard.out_dir(grid.name, results)
    if args.estimate:
        from fireact_bench.harness.benchmark.estimate import estimate, report

        print(report(estimate(grid, args.measured or [out / "leaderboard.json"])))
        return 0
    if args.list:
        for cid, cell in index(grid, results):
            state = "done" if (cells_dir(results) / f"{cid}.json").exists() else \
                "failed" if (cells_dir(results) / f"{cid}.failed.json").exists() else "todo"
            print(f"{cid}  {state:<6}  {cell.label()}")
        return 0
    started = time.time()
    if args.executor == "local":
        summary = sweep(grid, results, trainer=args.trainer)
    else:
        summary = executors.launch(grid, results, args, slurm)
        if summary.get("submitted_only"):
            print(summary["submitted_only"])
            return 0
    finished, failed, missing = read_cells(cells_dir(results), summary["cell_ids"])
    written = leaderboard.write(leaderboard.build(finished, grid.name, failed, missing), out, results=finished)
    print(f"grid {grid.name}: {summary['cells']} cells, {summary['skipped']} already done, {summary['finished']} run now, "
          f"{len(summary['locked'])} run by another sweep, {len(summary['failed'])} failed, in {time.time() - started:.0f}s")
    for f in summary["locked"]:
        print(f"  SKIPPED {f['label']}: locked by {f['owner']} (another sweep runs it; its result lands in the same store)")
    for f in summary["failed"]:
        print(f"  FAILED {f['label']}: {f['error']}  (details: {cells_dir(results) / (f['cell_id'] + '.failed.json')})")
    print("wrote " + ", ".join(str(p) for p in written))
    return 1 if summary["failed"] else 0
