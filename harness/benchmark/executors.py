"""Executors: where a sweep's work runs (`fireact-bench benchmark --executor ...`).

    local            the in-process loop (sweep.sweep): one cell after another, training adapters as needed
    submitit-local   the sweep as jobs: each a subprocess on this machine (submitit's LocalExecutor)
    slurm            the sweep as Slurm jobs (submitit's SlurmExecutor), submitted from a login node

With jobs the sweep is a small DAG: one job per adapter to train; one job per cell, after its adapter's job
(Slurm: `--dependency=afterok:<adapter job>`, with `--kill-on-invalid-dep=yes` so that the cells of a failed
adapter are cancelled instead of pending forever; the local executor has no dependencies, so this process
submits a cell when its adapter's job has finished); last, the leaderboard is rebuilt (Slurm: a job after
every cell, `afterany`, so it happens even if this process has gone; otherwise here).

Each job is an ordinary command that a user can type to redo or debug one piece:

    fireact-bench run-cell <cell id> --grid G --results R      (the ids: `fireact-bench benchmark --grid G --list`)
    fireact-bench run-cell --adapter <key> --grid G --results R

Jobs coordinate through the results folder only: cells are content-addressed and written atomically, and
a cell or adapter is worked on under its lock file (benchmark/locks.py), so two sweeps of one grid never
do the same work twice. Slurm options come from the grid file's `slurm:` mapping (SlurmExecutor's
parameters: partition, account, time in minutes, gpus_per_node, cpus_per_task, mem, nodes, setup,
additional_parameters; `train:` and `evaluate:` hold overrides for adapter and cell jobs) or from flags.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from fireact_bench.harness.benchmark import identity, sweep
from fireact_bench.harness.benchmark.cells import adapters_dir, cells_dir
from fireact_bench.harness.benchmark.grid import GRIDS_DIR, Cell, Grid, grid_path, load_grid
from fireact_bench.harness.files import check_writable
from fireact_bench.harness.study import has_local_weights

EXECUTORS = ("local", "submitit-local", "slurm")
LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # submitit's local default is 2 minutes: far too short for a cell


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("executors (see `## Running on a cluster` in the README)")
    group.add_argument("--executor", choices=EXECUTORS, default="local", help="where the cells run (default: in this process)")
    group.add_argument("--parallel", type=int, default=1, help="submitit-local: jobs at once (they share this machine's GPUs)")
    group.add_argument("--no-wait", action="store_true", help="slurm: submit the jobs and return (a last job rebuilds the leaderboard)")
    group.add_argument("--jobs-dir", help="submitit's scripts, pickles and logs (default: <results>/jobs/<grid>; on a shared disk for Slurm)")
    group.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                       help="import MODULE here and in every job (e.g. one that registers an lm-eval model of your own)")
    group.add_argument("--trainer", help=f"MODULE:FUNCTION that trains adapters (default {sweep.DEFAULT_TRAINER})")
    for flag, key, kind, what in (("--partition", "partition", str, "partition"), ("--account", "account", str, "account"),
                                  ("--time", "time", int, "minutes per job"), ("--gpus-per-job", "gpus_per_node", int, "GPUs per job"),
                                  ("--cpus", "cpus_per_task", int, "CPUs per job")):
        group.add_argument(flag, dest=f"slurm_{key}", type=kind, metavar=kind.__name__.upper(),
                           help=f"Slurm {what} (wins over the grid's slurm: {key})")


def load(name_or_path: str) -> tuple[Grid, dict]:
    """(grid, its `slurm:` mapping)."""
    grid = load_grid(name_or_path)
    return grid, grid.slurm


@dataclass
class Command:
    """A job: one `fireact-bench` subcommand, run in the job's own process (pickled by reference, so it is
    exactly what a user would type: see str())."""
    argv: list[str]

    def __call__(self):
        print(self, flush=True)  # the job's log says how to redo it by hand
        if self.argv[0] == "run-cell":
            status = sweep.run_cell_command(self.argv[1:])
            if status["status"] == "failed":  # a failed job: Slurm cancels what depends on it
                raise RuntimeError(f"{status['label']}: {status['error']}")
            return status
        from fireact_bench.harness.benchmark import leaderboard

        return leaderboard.main(self.argv[1:])

    def __str__(self) -> str:
        return "fireact-bench " + shlex.join(self.argv)


@dataclass
class Task:
    command: Command
    label: str
    cell: Cell | None             # None: the leaderboard's job
    cell_id: str | None = None    # None: an adapter's job
    adapter: str | None = None    # the key an adapter job trains, or a cell job waits for (None: nothing to wait for)
    job: object = None            # the submitit job, once submitted
    outcome: dict | None = None   # a cell job's outcome, as run-cell returned it


def plan(grid: Grid, results: Path, adapters: Path, common: list[str]) -> tuple[dict[str, Task], list[Task], list[str]]:
    """({adapter key: its job}, cell jobs, every cell id) for what is not done yet."""
    ids = sweep.index(grid, results)
    cells = cells_dir(results)
    adapter_tasks, cell_tasks = {}, []
    for cid, cell in ids:
        if (cells / f"{cid}.json").exists():
            continue
        key = identity.cell_adapter_plan(cell)[0] if cell.adapter else None
        if key and sweep.adapter_manifest(adapters / key) is not None:
            key = None  # trained already
        if key and key not in adapter_tasks:
            adapter_tasks[key] = Task(Command(["run-cell", "--adapter", key] + common), f"adapter {key} ({cell.label()})", cell,
                                      adapter=key)
        cell_tasks.append(Task(Command(["run-cell", cid] + common), cell.label(), cell, cid, key))
    return adapter_tasks, cell_tasks, [cid for cid, _ in ids]


def launch(grid: Grid, results: Path, args: argparse.Namespace, slurm: dict) -> dict:
    """Run the grid's DAG through submitit; the summary has the in-process sweep's keys."""
    if args.executor == "slurm" and not (shutil.which("sbatch") and shutil.which("srun")):
        raise ValueError("--executor slurm submits with Slurm's sbatch and runs jobs through srun: they are not on PATH here")
    results = Path(results).resolve()  # jobs may start elsewhere: every path they get is absolute
    cells_dir(results).mkdir(parents=True, exist_ok=True)
    check_writable(cells_dir(results))
    shipped = (GRIDS_DIR / f"{args.grid}.yaml").exists() and not args.grid.endswith((".yaml", ".yml"))
    common = ["--grid", args.grid if shipped else str(grid_path(args.grid).resolve()), "--results", str(results)]
    common += [a for m in args.imports for a in ("--import", m)] + (["--trainer", args.trainer] if args.trainer else [])
    adapter_tasks, cell_tasks, cell_ids = plan(grid, results, adapters_dir(results), common)
    flags = {k[len("slurm_"):]: v for k, v in vars(args).items() if k.startswith("slurm_") and v is not None}
    folder = Path(args.jobs_dir or results / "jobs" / grid.name).resolve()
    submit = _submitter(args.executor, folder, slurm, flags, grid.name)
    summary = {"grid": grid.name, "cells": len(cell_ids), "skipped": len(cell_ids) - len(cell_tasks), "finished": 0,
               "failed": [], "locked": [], "cell_ids": cell_ids}
    if args.executor == "slurm":
        board = Command(["leaderboard"] + common[:4] + (["--out", str(Path(args.out).resolve())] if args.out else []))
        message = _run_slurm(submit, adapter_tasks, cell_tasks, board, cells_dir(results), wait=not args.no_wait)
        if message:
            return {**summary, "submitted_only": message}
    else:
        _run_local(submit, adapter_tasks, cell_tasks, cells_dir(results), max(1, args.parallel))
    for task in cell_tasks:
        sweep.record(summary, task.cell_id, task.label, task.outcome)
    return summary


# ------------------------------------------------------------------------------------ submitting

def _submitter(kind: str, folder: Path, slurm: dict, flags: dict, grid: str):
    """submit(task, dependency=None) -> submitit job, with the task's options: the grid's `slurm:` mapping, its
    `train:` overrides for adapter jobs and `evaluate:` for cell jobs, then the flags; API models get no GPU."""
    import submitit

    base = {k: v for k, v in slurm.items() if k not in ("train", "evaluate") and v is not None}

    def params(task: Task) -> dict:
        role = "leaderboard" if task.cell is None else "evaluate" if task.cell_id else "train"
        p = {**base, **(slurm.get(role) or {}), **flags}
        if role == "leaderboard" or role == "evaluate" and not has_local_weights(task.cell.model["inner"]):
            p.pop("gpus_per_node", None)  # the leaderboard and an API model's cells need no GPU
        return p

    def submit(task: Task, dependency: str | None = None):
        p = params(task)
        if kind == "slurm":
            executor = submitit.SlurmExecutor(folder=folder)
            extra = dict(p.pop("additional_parameters", None) or {})
            if dependency:
                extra.update({"dependency": dependency, "kill-on-invalid-dep": "yes"})
            name = task.cell_id or task.adapter or "leaderboard"
            executor.update_parameters(job_name=f"fireact-{grid}-{name}", additional_parameters=extra, **p)
        else:
            executor = submitit.LocalExecutor(folder=folder)
            executor.update_parameters(timeout_min=p.get("time", LOCAL_TIMEOUT_MIN), gpus_per_node=_local_gpus(p))
        task.job = executor.submit(task.command)
        return task.job

    submit.folder = folder
    return submit


def _local_gpus(p: dict) -> int:
    """submitit's local jobs see only the GPUs they ask for: by default every GPU this process sees."""
    if p.get("gpus_per_node") is not None:
        return p["gpus_per_node"]
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        return 0
    import torch

    return torch.cuda.device_count()


def _outcome(job) -> dict:
    """A finished job's outcome: what run-cell returned, or why the job failed (its own error or its death)."""
    try:
        return job.result()
    except Exception as err:  # the job raised (its traceback's last line), or died: killed, out of time, cancelled
        lines = [line.strip() for line in str(err).splitlines() if line.strip().strip("-")]
        died = next((line for line in lines if "has not produced any output" in line), None)
        raised = [line for line in lines if not line.startswith(("- ", "You can check full logs"))]
        reason = f"died ({died.rsplit('(', 1)[-1].rstrip(')')})" if died else raised[-1] if raised else type(err).__name__
        return {"status": "failed", "error": f"job {job.job_id}: {reason} (log: {job.paths.stderr})"}


def _settle(task: Task, outcome: dict, cells: Path) -> None:
    """A cell job's outcome; a job that died (killed, out of memory or time) could not record its failure: do it here."""
    task.outcome = outcome if outcome["status"] != "failed" else sweep.write_failure(cells, task.cell_id, task.cell, outcome["error"])


def _run_local(submit, adapter_tasks: dict[str, Task], cell_tasks: list[Task], cells: Path, parallel: int) -> None:
    """At most `parallel` jobs at once; a cell is submitted once its adapter's job has finished."""
    waiting = {key: [t for t in cell_tasks if t.adapter == key] for key in adapter_tasks}
    queue = list(adapter_tasks.values()) + [t for t in cell_tasks if t.adapter is None]
    running: list[Task] = []
    while queue or running:
        while queue and len(running) < parallel:
            running.append(queue.pop(0))
            submit(running[-1])
        time.sleep(0.5)
        for task in [t for t in running if t.job.done()]:
            running.remove(task)
            outcome = _outcome(task.job)
            if task.cell_id is not None:
                _settle(task, outcome, cells)
                continue
            for cell in waiting[task.adapter]:
                if outcome["status"] == "failed":
                    _settle(cell, {**outcome, "error": f"its adapter's {outcome['error']}"}, cells)
                else:
                    queue.insert(0, cell)  # ahead of other work: its adapter is ready


def _run_slurm(submit, adapter_tasks: dict[str, Task], cell_tasks: list[Task], board: Command, cells: Path,
               wait: bool) -> str | None:
    """Submit the whole DAG at once; wait for it unless told not to (then say what was submitted)."""
    for task in adapter_tasks.values():
        submit(task)
    for task in cell_tasks:
        submit(task, f"afterok:{adapter_tasks[task.adapter].job.job_id}" if task.adapter else None)
    last = Task(board, "leaderboard", None)
    if cell_tasks:
        submit(last, "afterany:" + ":".join(t.job.job_id for t in cell_tasks))
    if not wait:
        return (f"submitted {len(adapter_tasks)} adapter jobs and {len(cell_tasks)} cell jobs"
                + (f"; job {last.job.job_id} rebuilds the leaderboard after them" if last.job else "") + f"; logs in {submit.folder}")
    for task in cell_tasks:
        _settle(task, _outcome(task.job), cells)
    if last.job:
        _outcome(last.job)
    return None
