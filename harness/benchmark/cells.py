"""The results folder: one JSON file per finished cell, a `.failed.json` per failed one, the trajectories
beside them, and one index per grid (grid cell -> cell id) that the sweep writes each time it runs.

    results/cells/<id>.json              the finished marker and result (written last, atomically)
    results/cells/<id>.failed.json       the error of the last failed try (removed when the cell finishes)
    results/cells/<id>.samples.jsonl     each question's whole trajectory
    results/cells/<id>.lock              held while a sweep or job evaluates the cell (benchmark/locks.py)
    results/adapters/<key>/, <key>.lock  a trained adapter with its manifest; held while it trains
    results/index/<grid>.json            {grid, cells: [{cell_id, label, cell, adapter_key}]}: the leaderboard reads
                                         ids and labels; `fireact-bench run-cell <id>` a cell's spec and adapter key
    results/jobs/<grid>/                 submitit's scripts, pickles and logs (benchmark/executors.py)

Reading the index instead of recomputing ids is what lets the leaderboard run on files alone (no
tokenizer, no FireAct data), and lets it list cells finished under other package versions.
"""
from __future__ import annotations

import json
from pathlib import Path

from fireact_bench.harness.files import write_json
from fireact_bench.harness.provenance import versions

RESULTS_DIR = Path("results")


def cells_dir(results: Path) -> Path:
    return Path(results) / "cells"


def adapters_dir(results: Path) -> Path:
    return Path(results) / "adapters"


def write_index(results: Path, grid: str, entries: list[dict]) -> Path:
    return write_json(Path(results) / "index" / f"{grid}.json", {"grid": grid, "cells": entries})


def read_index(results: Path, grid: str) -> list[dict]:
    path = Path(results) / "index" / f"{grid}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: grid {grid!r} has no index yet: run `fireact-bench benchmark --grid {grid}` "
                                "(or `--list`) once")
    return json.loads(path.read_text())["cells"]


def read_cells(cells: Path, cell_ids: list[str] | None = None) -> tuple[list[dict], list[dict], list[str]]:
    """(finished results, failed records, missing ids) of the given cells (default: every cell in the folder)."""
    cells = Path(cells)
    if cell_ids is None:
        cell_ids = sorted(p.stem for p in cells.glob("*.json") if not p.name.startswith(".") and p.stem.count(".") == 0)
    finished, failed, missing = [], [], []
    for cid in cell_ids:
        done, fail = cells / f"{cid}.json", cells / f"{cid}.failed.json"
        if done.exists():
            finished.append(json.loads(done.read_text()))
        elif fail.exists():
            failed.append(json.loads(fail.read_text()))
        else:
            missing.append(cid)
    return finished, failed, missing


def other_versions(result: dict) -> dict:
    """The packages whose version differs between this environment and the one a cell ran in ({} if none)."""
    then, now = result["comparability"]["versions"], versions()
    return {k: [then.get(k), now.get(k)] for k in sorted(set(then) | set(now)) if then.get(k) != now.get(k)}
