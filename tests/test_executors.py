"""Executors, the sweep's DAG and its locks: submitit's local executor (subprocess jobs), Slurm's scripts (a fake
sbatch), two sweeps on one results folder, a killed job, and the cost estimate. Offline, CPU, scripted model;
adapters come from the instant stand-in trainer (tests/counting_lm.py) except in the slow test."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import counting_lm  # noqa: F401  registers the `counting` lm-eval model here too
import pytest
import yaml

from fireact_bench.harness import cli
from fireact_bench.harness.benchmark import estimate, locks, sweep
from fireact_bench.harness.benchmark.cells import read_index

TESTS = Path(__file__).parent
STAND_IN = ["--import", "counting_lm", "--trainer", "counting_lm:fake_finetune"]


@pytest.fixture(autouse=True)
def jobs_import_the_stand_ins(monkeypatch):
    """Jobs are fresh processes: they find tests/counting_lm.py (and scripted_lm.py) on PYTHONPATH."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))


def write_grid(tmp_path, delay=0.0, **overrides) -> str:
    """Two adapters (4 and 8 trajectories) x two tools = four ft cells, and ReAct on each tool: six cells."""
    grid = {"name": "x", "limit": 2, "datasets": ["hotpotqa"], "noise": ["clean", "random"], "prompting": ["react"],
            "models": [{"name": "counting", "inner": "counting",
                        "model_args": {"answer": "yes", "pretrained": "smollm2-135m-instruct", "delay": delay,
                                       "counter": str(tmp_path / "evaluations.txt")}}],
            "finetuning": {"methods": ["react"], "tasks": ["hotpotqa"], "sizes": [4, 8], "models": ["counting"],
                           "config": {"max_steps": 1, "micro_batch": 2, "grad_accum": 1, "max_len": 256}}}
    grid.update(overrides)
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(grid))
    return str(tmp_path / "g.yaml")


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def cell_files(results: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (results / "cells").glob("*.json") if p.stem.count(".") == 0}


def assert_adapters_before_their_cells(results: Path) -> None:
    finished = cell_files(results)
    for cell in finished.values():
        if cell["adapter"]:
            trained = (results / "adapters" / cell["adapter"]["key"] / "manifest.json").stat().st_mtime
            assert cell["started_at"] > trained, f"{cell['label']} started before its adapter was trained"


# ------------------------------------------------------------------------------------ the DAG through submitit

def test_submitit_local_runs_the_dag_adapters_first_each_job_once(tmp_path, capsys):
    path, results = write_grid(tmp_path), tmp_path / "results"
    assert sweep.main(["--grid", path, "--results", str(results), "--executor", "submitit-local", "--parallel", "2"] + STAND_IN) == 0
    out = capsys.readouterr().out
    assert "6 cells, 0 already done, 6 run now" in out and "0 failed" in out
    assert len(cell_files(results)) == 6 and len(list((results / "adapters").glob("*/manifest.json"))) == 2
    assert_adapters_before_their_cells(results)
    assert len(lines(tmp_path / "evaluations.txt")) == 6  # each cell evaluated once
    assert len(lines(results / "trained.txt")) == 2       # each adapter trained once
    assert len({line.split()[0] for line in lines(tmp_path / "evaluations.txt")}) == 6  # ...each in a job of its own
    assert not list(results.rglob("*.lock"))  # every lock given back
    logs = "".join(p.read_text() for p in (results / "jobs" / "x").glob("*_log.out"))
    assert "fireact-bench run-cell --adapter " in logs and f"--results {results.resolve()}" in logs
    assert (results / "x" / "leaderboard.json").exists()
    # a second sweep finds everything done and submits nothing
    assert sweep.main(["--grid", path, "--results", str(results), "--executor", "submitit-local"] + STAND_IN) == 0
    assert "6 already done, 0 run now" in capsys.readouterr().out and len(lines(tmp_path / "evaluations.txt")) == 6


def test_a_killed_job_is_taken_over_by_the_next_sweep_nothing_lost_or_repeated(tmp_path, capsys):
    path, results = write_grid(tmp_path, delay=1.0, finetuning=None, datasets=["hotpotqa", "strategyqa"]), tmp_path / "results"
    args = ["--grid", path, "--results", str(results), "--executor", "submitit-local", "--parallel", "2"] + STAND_IN
    killed = {}

    def kill_one_cell_midway():
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            for lock in (results / "cells").glob("*.lock"):
                owner = locks.Lock(lock).read() or {}
                # midway: the job holds the cell's lock and has started evaluating it
                if owner.get("pid") and any(line.startswith(f"{owner['pid']} ") for line in lines(tmp_path / "evaluations.txt")):
                    os.kill(owner["pid"], signal.SIGKILL)
                    killed.update(pid=owner["pid"], cell=lock.stem)
                    return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_one_cell_midway)
    killer.start()
    assert sweep.main(args) == 1  # the killed job is the one failure
    killer.join()
    assert killed, "no job was killed"
    out = capsys.readouterr().out
    assert "3 run now" in out and "1 failed" in out and "FAILED" in out and "died" in out
    assert json.loads((results / "cells" / f"{killed['cell']}.failed.json").read_text())["error"].startswith("job ")
    assert (results / "cells" / f"{killed['cell']}.lock").exists()  # left behind by the dead job
    before = {cid: (results / "cells" / f"{cid}.json").stat().st_mtime_ns for cid in cell_files(results)}
    assert len(before) == 3

    assert sweep.main(args) == 0  # re-submitted: the dead job's lock is stale (dead pid on this host) and taken over
    assert "3 already done, 1 run now" in capsys.readouterr().out
    after = cell_files(results)
    assert set(after) == set(before) | {killed["cell"]}                                                 # nothing lost
    assert {cid: (results / "cells" / f"{cid}.json").stat().st_mtime_ns for cid in before} == before   # nothing redone
    evaluations = [line.split()[0] for line in lines(tmp_path / "evaluations.txt")]
    assert len(evaluations) == 5 and evaluations.count(str(killed["pid"])) == 1  # 4 cells + the killed try
    assert not (results / "cells" / f"{killed['cell']}.failed.json").exists()


def test_two_sweeps_on_one_results_folder_run_each_cell_and_train_each_adapter_once(tmp_path):
    """The bug this fixes: two sweeps of one grid (the default, in-process executor) started together on one results
    folder both ran every cell. Now the one that finds a cell or an adapter taken skips the cell or waits for the adapter."""
    path, results = write_grid(tmp_path, delay=0.3), tmp_path / "results"
    command = [str(Path(sys.executable).parent / "fireact-bench"), "benchmark", "--grid", path, "--results", str(results)] + STAND_IN
    sweeps = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in sweeps]
    assert [p.returncode for p in sweeps] == [0, 0], outs  # a cell locked by the other sweep is no failure
    assert len(cell_files(results)) == 6
    assert len(lines(tmp_path / "evaluations.txt")) == 6, outs  # each cell evaluated exactly once...
    assert len(lines(results / "trained.txt")) == 2  # ...and each adapter trained exactly once
    run_now = [int(out.split(" run now")[0].rsplit(", ", 1)[1]) for out in outs]
    assert sum(run_now) == 6, outs


# ------------------------------------------------------------------------------------ Slurm: the scripts submitit writes

FAKE_SBATCH = """#!/bin/sh
# records the script it is given, answers as sbatch does
n=$(( $(ls "$RECORD" | wc -l) + 1001 ))
cp "$1" "$RECORD/$n.sh"
echo "Submitted batch job $n"
"""


def test_slurm_jobs_carry_the_grid_options_and_the_dependencies(tmp_path, monkeypatch, capsys):
    import cloudpickle

    smol = {"name": "smol", "inner": "hf", "model_args": {"pretrained": "smollm2-135m-instruct"}}  # nothing runs: any model
    path = write_grid(tmp_path, models=[smol, {"name": "api", "inner": "openai-chat-completions", "model_args": {"model": "gpt-x"}}],
                      finetuning={"methods": ["react"], "tasks": ["hotpotqa"], "sizes": [4, 8]},  # local models only
        slurm={"partition": "gpu", "account": "lab", "time": 120, "gpus_per_node": 1, "cpus_per_task": 8, "mem": "64G",
               "train": {"nodes": 2, "gpus_per_node": 8, "time": 600}})
    record, bin_dir = tmp_path / "sbatch", tmp_path / "bin"
    record.mkdir(), bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit looks for it before it submits anything
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("RECORD", str(record))
    results = tmp_path / "results"
    assert sweep.main(["--grid", path, "--results", str(results), "--executor", "slurm", "--no-wait", "--cpus", "4"] + STAND_IN) == 0
    assert "submitted 2 adapter jobs and 8 cell jobs" in capsys.readouterr().out

    index = {e["cell_id"]: e for e in read_index(results, "x")}
    jobs = {}  # job id -> (argv of its fireact-bench command, sbatch script)
    for script in sorted(record.glob("*.sh")):
        job_id = script.stem
        submitted = results / "jobs" / "x" / f"{job_id}_submitted.pkl"
        command = cloudpickle.loads(submitted.read_bytes()).function
        jobs[job_id] = (command.argv, script.read_text())
    assert len(jobs) == 2 + 8 + 1  # adapters, cells, the leaderboard
    by_kind = {"adapter": {}, "cell": {}, "leaderboard": {}}
    for job_id, (argv, script) in jobs.items():
        kind = "adapter" if "--adapter" in argv else "leaderboard" if argv[0] == "leaderboard" else "cell"
        by_kind[kind][job_id] = (argv, script)
        assert "#SBATCH --partition=gpu" in script and "#SBATCH --account=lab" in script and "#SBATCH --mem=64G" in script
        assert "#SBATCH --cpus-per-task=4" in script  # the flag wins over the grid's 8
        assert "submitit.core._submit" in script
    adapter_jobs = {argv[argv.index("--adapter") + 1]: job_id for job_id, (argv, _) in by_kind["adapter"].items()}
    for _, script in by_kind["adapter"].values():  # the 2-node training jobs
        assert "#SBATCH --nodes=2" in script and "#SBATCH --gpus-per-node=8" in script and "#SBATCH --time=600" in script
        assert "--dependency" not in script
    for argv, script in by_kind["cell"].values():
        entry = index[argv[1]]
        assert argv[2:6] == ["--grid", str(Path(path).resolve()), "--results", str(results.resolve())]
        assert "#SBATCH --time=120" in script and "--nodes=2" not in script
        assert ("#SBATCH --gpus-per-node=1" in script) == (entry["cell"]["model"]["name"] == "smol")  # API cells: no GPU
        if entry["adapter_key"]:
            assert f"#SBATCH --dependency=afterok:{adapter_jobs[entry['adapter_key']]}" in script
            assert "#SBATCH --kill-on-invalid-dep=yes" in script
        else:
            assert "--dependency" not in script
    ((argv, script),) = by_kind["leaderboard"].values()
    assert argv[:3] == ["leaderboard", "--grid", str(Path(path).resolve())]
    assert f"#SBATCH --dependency=afterany:{':'.join(sorted(by_kind['cell']))}" in script and "gpus-per-node" not in script
    assert not lines(tmp_path / "evaluations.txt")  # nothing ran here


# ------------------------------------------------------------------------------------ one cell by hand; the locks

def test_run_cell_by_hand_runs_skips_when_done_and_when_another_live_process_holds_it(tmp_path, capsys):
    path, results = write_grid(tmp_path, finetuning=None), tmp_path / "results"
    assert sweep.main(["--grid", path, "--results", str(results), "--list"]) == 0
    first, second = read_index(results, "x")
    run = ["--grid", path, "--results", str(results), "--import", "counting_lm"]
    held = locks.Lock(results / "cells" / f"{second['cell_id']}.lock", stale_s=60)
    held.acquire()  # a live owner (this process)
    try:
        assert cli.main(["run-cell", first["cell_id"]] + run) == 0
        assert cli.main(["run-cell", first["cell_id"]] + run) == 0
        assert cli.main(["run-cell", second["cell_id"]] + run) == 0
    finally:
        held.release()
    out = capsys.readouterr().out.splitlines()
    assert out[-3:-1] == [f"{first['label']}: finished", f"{first['label']}: done"]
    assert out[-1].startswith(f"{second['label']}: locked held by {locks.HOST}:{os.getpid()} since ")
    assert len(lines(tmp_path / "evaluations.txt")) == 1
    assert cli.main(["run-cell", "0000000000000000"] + run) == 2  # one line naming the index
    assert "not in the index of grid 'x'" in capsys.readouterr().err


def test_stale_locks_are_taken_over_live_ones_are_not(tmp_path):
    path = tmp_path / "k.lock"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path.write_text(json.dumps({"host": locks.HOST, "pid": dead.pid, "started": time.time()}))
    lock = locks.Lock(path)
    assert lock.acquire()  # a dead pid on this host: taken over at once
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()
    assert not path.exists()

    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": time.time()}))
    other = locks.Lock(path, stale_s=60)
    assert not other.acquire() and other.holder["host"] == "elsewhere"  # another host's, heartbeat fresh: live
    os.utime(path, (time.time() - 61, time.time() - 61))
    assert other.acquire()  # no heartbeat for stale_s: its owner is gone
    other.release()

    beating = locks.Lock(path, heartbeat_s=0.05, stale_s=1)
    assert beating.acquire()
    os.utime(path, (time.time() - 100, time.time() - 100))
    time.sleep(0.3)
    assert time.time() - path.stat().st_mtime < 1  # the heartbeat refreshed it
    assert not locks.Lock(path, stale_s=1).acquire()
    beating.release()


# ------------------------------------------------------------------------------------ the estimate

def test_estimate_uses_measured_costs_when_present_else_assumed_ones(tmp_path):
    from fireact_bench.harness.benchmark.executors import load

    smol = {"name": "smol", "inner": "hf", "model_args": {"pretrained": "smollm2-135m-instruct"}}
    grid, _ = load(write_grid(tmp_path, finetuning=None, noise=["clean"], models=[smol]))  # one cell: react, 2 questions
    assumed = estimate.estimate(grid, [])
    (row,) = assumed["rows"]
    assert row["sources"] == ["assumed"] and row["questions"] == 2
    per_q = 2 * 135e6 * sum(estimate.TOKENS_PER_Q["react"]) / (estimate.PEAK_FLOPS * estimate.UTILISATION)
    assert row["gpu_h"] == pytest.approx((2 * per_q + estimate.JOB_START_S) / 3600)
    board = tmp_path / "leaderboard.json"
    board.write_text(json.dumps({"rows": [{"model": "smol", "method": "react", "adapter": None, "dataset": "hotpotqa",
                                           "wall_s_per_q": 30.0, "cost": {"unit": "compute_s", "per_question": 30.0}}]}))
    (row,) = estimate.estimate(grid, [board])["rows"]
    assert row["sources"] == [f"measured ({board})"] and row["gpu_h"] == pytest.approx((2 * 30 + estimate.JOB_START_S) / 3600)


def test_the_paper_grid_is_a_cluster_recipe_with_an_estimate(capsys):
    from fireact_bench.harness.benchmark.executors import load

    grid, slurm = load("paper")
    assert {"llama-2-7b-chat", "llama-2-13b-chat", "codellama-7b-instruct", "codellama-13b-instruct", "gpt-3.5-turbo"} == \
        {c.model["name"] for c in grid.cells}
    assert {c.model["inner"] for c in grid.cells if c.model["name"] != "gpt-3.5-turbo"} == {"vllm"}
    assert not [c for c in grid.cells if c.model["name"] == "gpt-3.5-turbo" and c.adapter]  # prompting only
    assert slurm["gpus_per_node"] == 1 and slurm["partition"]
    assert sweep.main(["--grid", "paper", "--estimate"]) == 0
    out = capsys.readouterr().out
    assert "llama-2-13b-chat" in out and "GPU-hours" in out and "total:" in out


# ------------------------------------------------------------------------------------ slow: real LoRA training in jobs

@pytest.mark.slow
def test_submitit_local_trains_real_adapters_in_their_own_jobs(tmp_path, capsys):
    """The same DAG with the real trainer (adapters/finetune.py, 1 step of SmolLM2 per adapter, about a minute each)."""
    path, results = write_grid(tmp_path), tmp_path / "results"
    assert sweep.main(["--grid", path, "--results", str(results), "--executor", "submitit-local", "--parallel", "2",
                       "--import", "counting_lm"]) == 0
    assert "6 run now" in capsys.readouterr().out
    manifests = [json.loads(p.read_text()) for p in (results / "adapters").glob("*/manifest.json")]
    assert sorted(m["composition"]["size"] for m in manifests) == [4, 8] and {m["global_step"] for m in manifests} == {1}
    assert_adapters_before_their_cells(results)
    assert len(lines(tmp_path / "evaluations.txt")) == 6
