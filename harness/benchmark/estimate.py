"""A grid's cost before it runs (`fireact-bench benchmark --grid G --estimate`): GPU-hours and API dollars.

Each cell costs its question count times a cost per question, plus one job's start-up (loading the model);
each adapter costs its training tokens. A cost per question is, in this order:
  1. measured: the row of a measured leaderboard with the same model and method (same dataset preferred):
     its wall seconds per question (GPU-seconds when its jobs held one GPU each) or its dollars per question.
     By default the grid's own leaderboard, so the estimate sharpens as the first cells finish; --measured
     names others (a pilot grid run on the cluster with a small `limit`).
  2. assumed: FLOPs over throughput, from the constants below, each with its source.
"""
from __future__ import annotations

import functools
import json
import re
from collections import defaultdict
from pathlib import Path

from fireact_bench.harness.benchmark.grid import Cell, Grid
from fireact_bench.harness.study import FINETUNED, has_local_weights

# Measured (2026-11-25, SmolLM2-135M-Instruct on HotpotQA, on the HF engine: the grids of that day):
# tokens per question, prompt and generated; every turn re-reads the prompt. react: 5,526 / 5,449 / 5,899
# prompt and 187 / 185 / 211 generated over three rows; ft (zero-shot, fine-tuned format): 957 / 925 / 623
# and 168 / 179 / 129. io and cot: one call, FireAct's few-shot prompt files (181 and 460 tokens for HotpotQA,
# counted with the same tokenizer) plus the question; their generated tokens are assumed.
# reflexion: assumed as ReAct (the same examples; its reflection turn replaces a search turn).
TOKENS_PER_Q = {"io": (250, 10), "cot": (550, 80), "react": (5600, 195), "reflexion": (5600, 195), FINETUNED: (835, 160)}
# Measured: 261,336 tokens seen training on FireAct's 498 HotpotQA ReAct trajectories for 2 epochs (results/README.md).
TOKENS_PER_TRAJECTORY = 262
# FireAct's release (the mix files of data/finetune/alpaca_format, before validation): trajectories of `size: all`.
RELEASE_TRAJECTORIES = {("react", "hotpotqa"): 500, ("react", "multitask"): 1344}
RELEASE_MULTIMETHOD = {"hotpotqa": 734, "multitask": 2063}  # react+cot, react+reflexion, all: at most these
# Assumed: an H100's dense bf16 peak, 989 TFLOP/s (NVIDIA's data sheet, SXM), of which batched vLLM inference and
# LoRA training reach a quarter; 2 FLOPs per parameter per token for inference, 6 for training (full backward: an
# upper bound for LoRA); two minutes per job to load the weights (and start vLLM).
PEAK_FLOPS, UTILISATION, JOB_START_S = 989e12, 0.25, 120


def parameters(model: dict) -> float:
    """The model's size, read from its name or weights (`llama-2-7b`, `smollm2-135m-instruct`)."""
    for text in (model["name"], str(model["model_args"].get("pretrained", ""))):
        found = re.search(r"(\d+(?:\.\d+)?)([bm])(?![a-z])", text.lower())
        if found:
            return float(found.group(1)) * (1e9 if found.group(2) == "b" else 1e6)
    raise ValueError(f"model {model['name']!r}: cannot tell its size from its name; name it like `llama-2-7b`")


@functools.cache
def questions(task: str, limit: int | None) -> int:
    from fireact_bench.harness.benchmark.identity import task_config
    from fireact_bench.harness.data.questions import load_docs

    kwargs = dict(task_config(task)[1].get("dataset_kwargs") or {})
    return len(load_docs(kwargs.pop("dataset"), **kwargs)[:limit])


def _measured(paths: list[Path]) -> dict:
    rows = {}
    for path in paths:
        if Path(path).exists():
            for r in json.loads(Path(path).read_text())["rows"]:
                adapter = r["adapter"] and (r["adapter"]["methods"], r["adapter"]["tasks"], r["adapter"]["size_asked"])
                for key in [(r["model"], r["method"], adapter, r["dataset"]), (r["model"], r["method"], adapter)]:
                    rows.setdefault(key, r | {"source": f"measured ({path})"})
    return rows


def _per_question(cell: Cell, measured: dict) -> tuple[float, float | None, str]:
    """(GPU-seconds, dollars or None, source) per question."""
    adapter = cell.adapter and (cell.adapter["methods"], cell.adapter["tasks"], cell.adapter["size"])
    row = measured.get((cell.model["name"], cell.method, adapter, cell.dataset)) or measured.get((cell.model["name"], cell.method, adapter))
    if row:
        usd = row["cost"]["unit"] == "usd"
        return (0.0 if usd else row["wall_s_per_q"]), (row["cost"]["per_question"] if usd else 0.0), row["source"]
    prompt, generated = TOKENS_PER_Q[cell.method]
    if not has_local_weights(cell.model["inner"]):
        price = cell.model.get("price")
        return 0.0, (prompt * price["prompt"] + generated * price["completion"]) / 1e6 if price else None, "assumed"
    return 2 * parameters(cell.model) * (prompt + generated) / (PEAK_FLOPS * UTILISATION), 0.0, "assumed"


def _training(model: dict, adapter: dict, measured: dict) -> tuple[float, str]:
    from fireact_bench.adapters.finetune import preset

    spec = (adapter["methods"], adapter["tasks"], adapter["size"])
    row = next((r for k, r in measured.items() if len(k) == 3 and k[0] == model["name"] and k[2] == spec), None)
    if row:
        return row["adapter"]["train_wall_time_s"], row["source"]
    size = adapter["size"] or RELEASE_TRAJECTORIES.get((adapter["methods"], adapter["tasks"]), RELEASE_MULTIMETHOD[adapter["tasks"]])
    tokens = TOKENS_PER_TRAJECTORY * size * preset(adapter["preset"], **adapter["config"]).epochs
    return JOB_START_S + 6 * parameters(model) * tokens / (PEAK_FLOPS * UTILISATION), "assumed"


def estimate(grid: Grid, measured: list[Path] = ()) -> dict:
    """{grid, rows: [{model, what, jobs, questions, gpu_h, usd, sources}], gpu_h, usd}: one row per model and method."""
    table = _measured(list(measured))
    rows = defaultdict(lambda: {"jobs": 0, "questions": 0, "gpu_s": 0.0, "usd": 0.0, "sources": set()})
    for cell in grid.cells:
        n = questions(cell.task, cell.limit)
        gpu_s, usd, source = _per_question(cell, table)
        row = rows[(cell.model["name"], cell.method)]
        row["jobs"] += 1
        row["questions"] += n
        row["gpu_s"] += n * gpu_s + (JOB_START_S if has_local_weights(cell.model["inner"]) else 0)
        row["usd"] = None if usd is None or row["usd"] is None else row["usd"] + n * usd
        row["sources"].add(source)
    adapters = {json.dumps([c.model, c.adapter], sort_keys=True): c for c in grid.cells if c.adapter}
    for cell in adapters.values():
        seconds, source = _training(cell.model, cell.adapter, table)
        row = rows[(cell.model["name"], "train")]
        row["jobs"] += 1
        row["gpu_s"] += seconds
        row["sources"].add(source)
    out = [{"model": m, "what": w, "jobs": r["jobs"], "questions": r["questions"], "gpu_h": r["gpu_s"] / 3600,
            "usd": r["usd"], "sources": sorted(r["sources"])} for (m, w), r in rows.items()]
    usd = [r["usd"] for r in out]
    return {"grid": grid.name, "rows": out, "gpu_h": sum(r["gpu_h"] for r in out),
            "usd": None if None in usd else sum(usd)}


def report(est: dict) -> str:
    lines = [f"grid {est['grid']}: estimated cost (GPU-hours on H100-class GPUs; see harness/benchmark/estimate.py)", "",
             f"{'model':<28} {'what':<10} {'jobs':>5} {'questions':>10} {'GPU-h':>9} {'USD':>9}  source"]
    for r in est["rows"]:
        usd = "?" if r["usd"] is None else f"{r['usd']:.0f}" if r["usd"] else "-"  # ?: an API model without a price
        lines.append(f"{r['model']:<28} {r['what']:<10} {r['jobs']:>5} {r['questions'] or '-':>10} {r['gpu_h']:>9.1f} {usd:>9}  "
                     + ", ".join(r["sources"]))
    usd = "?" if est["usd"] is None else f"{est['usd']:.0f}"
    lines += ["", f"total: {est['gpu_h']:.0f} GPU-hours, {usd} USD of API calls"]
    return "\n".join(lines)
