"""The sweep: every cell of a grid, fine-tuning where a cell needs an adapter, resumable at any moment.

A cell's id hashes everything that determines its result: the cell (model, method, adapter data and
config, dataset, noise, seed, limit) and the fingerprints of what it reads (question subset, prompt,
search corpus, model weights, adapter, package versions). Its result is one JSON file written
atomically after the evaluation, so a killed sweep leaves finished cells whole and nothing
half-written that looks finished; a rerun skips them. A failing cell is recorded (`<id>.failed.json`)
and retried on the next run; the sweep goes on. Adapters are trained once per (base model, data,
training config) key and reused by every cell that needs them.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import time
import traceback
from pathlib import Path

import yaml

from fireact_bench.grid import Cell, Grid, load_grid
from fireact_bench.methods import ALPACA_TEMPLATE, QUESTION_PREFIX, REFLECT_AT, TOOL_METHODS, fewshot_prompt, stop_sequences
from fireact_bench.store import versions, write_json

log = logging.getLogger(__name__)
RESULTS_DIR = Path("results")


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------ fingerprints

class _TaskLoader(yaml.SafeLoader):
    pass


_TaskLoader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")


@functools.lru_cache(maxsize=None)
def _task_config(task: str) -> tuple[str, dict]:
    from fireact_bench.cli import TASKS_DIR

    path = Path(TASKS_DIR) / f"{task}.yaml"
    if not path.exists():
        raise ValueError(f"no task {task!r} in {TASKS_DIR} (run tasks/_generate_configs.py?)")
    text = path.read_text()
    return text, yaml.load(text, Loader=_TaskLoader)


@functools.lru_cache(maxsize=None)
def _dataset_hash(dataset: str, kwargs_json: str, limit: int | None) -> str:
    from fireact_bench.datasets import docs_hash, load_docs

    kwargs = {k: v for k, v in json.loads(kwargs_json).items() if k != "dataset"}
    return docs_hash(load_docs(dataset, **kwargs)[:limit])


@functools.lru_cache(maxsize=None)
def _tool_hash(noise: str, noise_p: float, seed: int) -> str:
    from fireact_bench.noise import make_tool

    return make_tool("replay", noise=noise, p=noise_p, seed=seed).fingerprint()


@functools.lru_cache(maxsize=None)
def _model_hash(model_json: str) -> str:
    from fireact_bench.adapters.backbone import model_fingerprint

    model = json.loads(model_json)
    pretrained = model["model_args"].get("pretrained") or model["model_args"].get("model")
    return model_fingerprint(str(pretrained)) if model["inner"] in ("hf", "huggingface") and pretrained else _digest(model)


def prompt_hash(cell: Cell) -> str:
    text, config = _task_config(cell.task)
    parts = [text, stop_sequences(cell.method if cell.method != "ft" else "react"), QUESTION_PREFIX]
    if cell.method == "ft":
        parts += [ALPACA_TEMPLATE]  # the chat template, when used, is the model's: in the model hash
    else:
        parts += [fewshot_prompt(cell.method, cell.dataset)]
    if cell.method == "reflexion":
        parts += [REFLECT_AT]
    return _digest(parts)


@functools.lru_cache(maxsize=None)
def adapter_plan(model_json: str, adapter_json: str):
    """(key, FinetuneConfig, TrainingSet) of an adapter: built from data and config, before any training."""
    from fireact_bench.adapters.finetune import plan_training, preset, run_id

    model, adapter = json.loads(model_json), json.loads(adapter_json)
    config = preset(adapter["preset"], **adapter["config"], base_model=str(model["model_args"]["pretrained"]),
                    seed=adapter["seed"])
    config, data, _ = plan_training(config, methods=adapter["methods"], tasks=adapter["tasks"], size=adapter["size"])
    key = _digest([run_id(config, data.data_hash), _model_hash(model_json)])
    return key, config, data


def comparability(cell: Cell) -> dict:
    """What a score depends on besides the cell's own settings; rows compare only when these agree."""
    _, task_config = _task_config(cell.task)
    model_json = json.dumps(cell.model, sort_keys=True)
    key = {
        "dataset_hash": _dataset_hash(cell.dataset, json.dumps(task_config.get("dataset_kwargs") or {}, sort_keys=True), cell.limit),
        "prompt_hash": prompt_hash(cell),
        "search_hash": _tool_hash(cell.noise, cell.noise_p, cell.seed) if cell.method in TOOL_METHODS else None,
        "noise": cell.noise, "noise_p": cell.noise_p, "noise_seed": cell.seed,
        "model_hash": _model_hash(model_json),
        "adapter_hash": adapter_plan(model_json, json.dumps(cell.adapter, sort_keys=True))[0] if cell.adapter else None,
        "versions": versions(),
    }
    # The rows a reader may set side by side: same questions, same search corpus, same noise draws.
    # io/cot use no tool; they sit with the clean-tool rows.
    key["group"] = _digest([key["dataset_hash"], _tool_hash("clean", cell.noise_p, 0), cell.noise,
                            None if cell.noise == "clean" else [cell.noise_p, cell.seed]])
    return key


def cell_id(cell: Cell) -> str:
    return _digest([cell.spec(), comparability(cell)])


# ------------------------------------------------------------------------------------ running

def ensure_adapter(cell: Cell, adapters_dir: Path) -> tuple[Path, dict]:
    """Train the cell's adapter unless a finished one with the same key exists; (folder, manifest)."""
    from fireact_bench.adapters.finetune import finetune

    key, config, data = adapter_plan(json.dumps(cell.model, sort_keys=True), json.dumps(cell.adapter, sort_keys=True))
    out = adapters_dir / key
    finetune(data, config, out)
    return out, json.loads((out / "manifest.json").read_text())


def run_cell(cell: Cell, adapters_dir: Path, cells_dir: Path, cid: str) -> dict:
    from fireact_bench.cli import evaluate

    started = time.time()
    model_args = dict(cell.model["model_args"])
    adapter = None
    if cell.adapter:
        adapter_dir, manifest = ensure_adapter(cell, adapters_dir)
        model_args["peft"] = str(adapter_dir / "model")
        adapter = {**cell.adapter, "key": adapter_dir.name, "composition": manifest["composition"],
                   "train_wall_time_s": manifest["wall_time_s"], "peak_rss_mib": manifest["peak_rss_mib"],
                   "train_loss": manifest["train_loss"], "tokens_seen": manifest["tokens_seen"]}
    eval_started = time.time()
    gen_kwargs = f"fireact.seed={cell.seed},fireact.noise_p={cell.noise_p}" if cell.method in TOOL_METHODS else None
    out = evaluate([cell.task], model=cell.model["inner"], model_args=model_args, limit=cell.limit,
                   gen_kwargs=gen_kwargs, batch_size=cell.model.get("batch_size", 1), log_samples=True)
    metrics = {k.split(",")[0]: v for k, v in out["results"][cell.task].items() if "," in k and isinstance(v, (int, float))}
    samples = sorted(out["samples"][cell.task], key=lambda s: s["doc_id"])
    per_question = [{"id": s["doc"]["id"], "em": s["em"], "f1": s["f1"], "answer": s["filtered_resps"][0].get("answer"),
                     "finished": s["finished"], "steps": s["steps"], "format_errors": s["format_errors"],
                     "prompt_tokens": s["prompt_tokens"], "gen_tokens": s["gen_tokens"], "wall_s": s["wall_s"]}
                    for s in samples]
    with open(cells_dir / f".{cid}.samples.jsonl.tmp", "w") as fh:  # trajectories, for reading; not a marker
        for s in samples:
            fh.write(json.dumps({"id": s["doc"]["id"], "question": s["doc"]["question"], "gold": s["doc"]["answer"],
                                 "response": s["resps"][0][0]}, ensure_ascii=False) + "\n")
    os.replace(cells_dir / f".{cid}.samples.jsonl.tmp", cells_dir / f"{cid}.samples.jsonl")
    return {
        "cell_id": cid, "status": "finished", "cell": cell.spec(), "task": cell.task, "label": cell.label(),
        "comparability": comparability(cell), "n": len(per_question), "metrics": metrics,
        "per_question": per_question, "adapter": adapter,
        "eval_wall_time_s": round(time.time() - eval_started, 2), "wall_time_s": round(time.time() - started, 2),
        "host": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }


def sweep(grid: Grid | str, cells_dir: Path = RESULTS_DIR / "cells", adapters_dir: Path = RESULTS_DIR / "adapters",
          progress: bool = True) -> dict:
    """Run every unfinished cell; returns {finished, skipped, failed: [...], cells: {id: label}}."""
    from tqdm import tqdm

    grid = load_grid(grid) if isinstance(grid, str) else grid
    cells_dir, adapters_dir = Path(cells_dir), Path(adapters_dir)
    cells_dir.mkdir(parents=True, exist_ok=True)
    ids = [(cell_id(cell), cell) for cell in grid.cells]
    todo = [(cid, cell) for cid, cell in ids if not (cells_dir / f"{cid}.json").exists()]
    summary = {"grid": grid.name, "cells": len(ids), "skipped": len(ids) - len(todo), "finished": 0, "failed": []}
    bar = tqdm(total=len(todo), desc=f"grid {grid.name}", unit="cell", disable=not progress)
    for cid, cell in todo:
        bar.set_postfix_str(cell.label())
        failed_path = cells_dir / f"{cid}.failed.json"
        try:
            result = run_cell(cell, adapters_dir, cells_dir, cid)
        except Exception as err:  # recorded, and the sweep goes on
            log.exception("cell %s (%s) failed", cid, cell.label())
            write_json(failed_path, {"cell_id": cid, "status": "failed", "cell": cell.spec(), "label": cell.label(),
                                     "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-4000:]})
            summary["failed"].append({"cell_id": cid, "label": cell.label(), "error": f"{type(err).__name__}: {err}"})
        else:
            write_json(cells_dir / f"{cid}.json", result)  # the finished marker: written last, atomically
            failed_path.unlink(missing_ok=True)
            summary["finished"] += 1
        bar.update(1)
    bar.close()
    summary["cell_ids"] = [cid for cid, _ in ids]
    return summary


def main(argv: list[str] | None = None) -> int:
    import argparse

    from fireact_bench import leaderboard

    parser = argparse.ArgumentParser(prog="fireact-bench benchmark", description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default="default", help="a shipped grid (default, paper, regress) or a grid YAML path")
    parser.add_argument("--results", default=str(RESULTS_DIR), help="the store: cells/ and adapters/ (keyed by hash, shared by grids)")
    parser.add_argument("--out", help="leaderboard.json, leaderboard.md, plots/ (default: results/ for the default grid, results/<grid>/ otherwise)")
    parser.add_argument("--list", action="store_true", help="print the grid's cells and whether each is done; run nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    results = Path(args.results)
    grid = load_grid(args.grid)
    if args.list:
        for cell in grid.cells:
            cid = cell_id(cell)
            state = "done" if (results / "cells" / f"{cid}.json").exists() else \
                "failed" if (results / "cells" / f"{cid}.failed.json").exists() else "todo"
            print(f"{cid}  {state:<6}  {cell.label()}")
        return 0
    started = time.time()
    summary = sweep(grid, cells_dir=results / "cells", adapters_dir=results / "adapters")
    finished, failed, missing = leaderboard.read_cells(results / "cells", summary["cell_ids"])
    board = leaderboard.build(finished, grid.name, failed, missing)
    written = leaderboard.write(board, Path(args.out) if args.out else leaderboard.out_dir(grid.name, results))
    print(f"grid {grid.name}: {summary['cells']} cells, {summary['skipped']} already done, {summary['finished']} run now, "
          f"{len(summary['failed'])} failed, in {time.time() - started:.0f}s")
    for f in summary["failed"]:
        print(f"  FAILED {f['label']}: {f['error']}  (details: {results / 'cells' / (f['cell_id'] + '.failed.json')})")
    print("wrote " + ", ".join(str(p) for p in written))
    return 1 if summary["failed"] else 0
