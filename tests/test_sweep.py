"""The grid, the resumable sweep, the leaderboard and the regression check, with a scripted model."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import scripted_lm  # noqa: F401  registers the `scripted` lm-eval model
from fireact_bench.harness.benchmark import leaderboard, regress
from fireact_bench.harness.benchmark.cells import read_cells
from fireact_bench.harness.benchmark.grid import load_grid
from fireact_bench.harness.benchmark.sweep import sweep

TESTS = Path(__file__).parent


def write_grid(path, **overrides):
    grid = {"name": "t", "limit": 3, "models": [{"name": "scripted", "inner": "scripted", "model_args": {"answer": "yes"}}],
            "prompting": ["io", "cot", "react"], "datasets": ["hotpotqa", "strategyqa"], "noise": ["clean", "random"]}
    grid.update(overrides)
    path.write_text(yaml.safe_dump(grid))
    return str(path)


def test_shipped_grids_expand_to_the_cells_they_promise():
    default = load_grid("default")
    methods = {(c.method, c.noise) for c in default.cells}
    assert ("react", "clean") in methods and ("ft", "clean") in methods  # the central question: both sides
    assert {c.noise for c in default.cells if c.method == "ft"} == {c.noise for c in default.cells if c.method == "react"}
    paper = load_grid("paper")
    assert {c.method for c in paper.cells} == {"io", "cot", "react", "reflexion", "ft"}
    assert {c.dataset for c in paper.cells} == {"hotpotqa", "bamboogle", "strategyqa", "mmlu"}
    assert all(c.noise == "clean" for c in paper.cells if c.method in ("io", "cot"))  # no tool, no noise
    sizes = {c.adapter["size"] for c in paper.cells if c.adapter}
    assert {100, 200, None} <= sizes
    # the regression slice: the cells that carry exact match are as large as the planted drops below are detected
    # at (100 questions); the agent loop runs few-shot and fine-tuned, on an adapter the slice trains itself
    regress_cells = load_grid("regress").cells
    assert all(c.limit >= 100 for c in regress_cells if c.method in ("io", "cot"))
    assert {c.method for c in regress_cells} == {"io", "cot", "react", "ft"}
    assert [c.adapter["size"] for c in regress_cells if c.adapter] == [64]  # trained in the run, in about 1.5 min


def test_grid_errors_name_the_file_and_field(tmp_path):
    with pytest.raises(ValueError, match=r"g.yaml.*'noise'.*loud"):
        load_grid(write_grid(tmp_path / "g.yaml", noise=["loud"]))
    with pytest.raises(ValueError, match=r"g.yaml.*unknown field.*'sedes'"):
        load_grid(write_grid(tmp_path / "g.yaml", sedes=[1]))
    with pytest.raises(ValueError, match=r"finetuning: unknown config field.*'lr_rate'"):
        load_grid(write_grid(tmp_path / "g.yaml", finetuning={"config": {"lr_rate": 1}}))
    with pytest.raises(FileNotFoundError, match="shipped grids"):
        load_grid("no-such-grid")


def test_sweep_runs_every_cell_once_and_builds_a_valid_leaderboard(tmp_path):
    grid = load_grid(write_grid(tmp_path / "g.yaml"))
    assert len(grid.cells) == 8  # 2 datasets × (io, cot, react clean, react random)
    cells = tmp_path / "cells"
    first = sweep(grid, results=cells.parent, adapters=tmp_path / "adapters", progress=False)
    assert first["finished"] == 8 and not first["failed"]
    stamps = {p: p.stat().st_mtime_ns for p in cells.glob("*.json")}
    again = sweep(grid, results=cells.parent, adapters=tmp_path / "adapters", progress=False)
    assert again["skipped"] == 8 and again["finished"] == 0
    assert stamps == {p: p.stat().st_mtime_ns for p in cells.glob("*.json")}  # nothing rewritten

    finished, failed, missing = read_cells(cells, first["cell_ids"])
    board = leaderboard.build(finished, "t", failed, missing)
    written = leaderboard.write(board, tmp_path / "out")
    leaderboard.validate(json.loads((tmp_path / "out" / "leaderboard.json").read_text()))
    by = {(r["method"], r["dataset"], r["noise"]): r for r in board["rows"]}
    assert by[("react", "hotpotqa", "clean")]["n"] == 3 and by[("react", "hotpotqa", "clean")]["steps"] == 2.0
    assert by[("io", "strategyqa", "clean")]["em"] == pytest.approx(
        sum(d["answer"] == "yes" for d in _strategyqa()[:3]) / 3, abs=1e-4)  # the scripted model says yes
    assert by[("react", "hotpotqa", "random")]["comparability"]["search_hash"] != by[("react", "hotpotqa", "clean")]["comparability"]["search_hash"]
    assert by[("io", "hotpotqa", "clean")]["comparability"]["group"] == by[("react", "hotpotqa", "clean")]["comparability"]["group"]
    assert "| scripted | react |" in (tmp_path / "out" / "leaderboard.md").read_text()
    assert tmp_path / "out" / "plots" / "noise.png" in written
    bad = dict(board, rows=[dict(board["rows"][0], em=1.5)])
    with pytest.raises(Exception, match="1.5"):
        leaderboard.validate(bad)


def _strategyqa():
    from fireact_bench.harness.data.questions import load_docs

    return load_docs("strategyqa")


def test_a_failing_cell_is_recorded_and_the_sweep_goes_on(tmp_path):
    path = write_grid(tmp_path / "g.yaml", models=[{"name": "scripted", "inner": "scripted", "model_args": {"answer": "yes"}},
                                                    {"name": "ghost", "inner": "no-such-model"}],
                      prompting=["io"], datasets=["hotpotqa"], noise=["clean"])
    summary = sweep(path, results=tmp_path, adapters=tmp_path / "a", progress=False)
    assert summary["finished"] == 1 and [f["label"] for f in summary["failed"]] == ["ghost io hotpotqa clean seed0"]
    failed = json.loads(next((tmp_path / "cells").glob("*.failed.json")).read_text())
    assert "no-such-model" in failed["error"] and failed["traceback"]
    finished, failed_records, missing = read_cells(tmp_path / "cells", summary["cell_ids"])
    board = leaderboard.build(finished, "t", failed_records, missing)
    assert len(board["rows"]) == 1 and board["failed"][0]["label"].startswith("ghost")
    assert sweep(path, results=tmp_path, adapters=tmp_path / "a", progress=False)["failed"]  # retried


def test_killed_sweep_resumes_without_losing_or_redoing_cells(tmp_path):
    path = write_grid(tmp_path / "g.yaml", models=[{"name": "scripted", "inner": "scripted", "model_args": {"answer": "yes", "delay": 0.3}}])
    results = tmp_path / "results"
    code = ("import sys, scripted_lm; from fireact_bench.harness.benchmark.sweep import main; "
            f"sys.exit(main(['--grid', {path!r}, '--results', {str(results)!r}]))")
    env = dict(os.environ, PYTHONPATH=f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cells = results / "cells"
    deadline = time.time() + 120
    while len(list(cells.glob("*.json"))) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {p.name: p.stat().st_mtime_ns for p in cells.glob("*.json")}
    assert 2 <= len(done_before) < 8, "the kill did not land midway"
    for p in cells.glob("*.json"):  # whatever is there is whole
        assert json.loads(p.read_text())["status"] == "finished"

    summary = sweep(path, results=cells.parent, adapters=results / "adapters", progress=False)
    assert summary["skipped"] == len(done_before) and summary["finished"] == 8 - len(done_before)
    assert {n: (cells / n).stat().st_mtime_ns for n in done_before} == done_before  # none redone
    assert {f"{cid}.json" for cid in summary["cell_ids"]} == {p.name for p in cells.glob("*.json")}  # none lost


def test_regress_passes_on_unchanged_code_and_fails_on_planted_regressions(tmp_path, capsys):
    path = write_grid(tmp_path / "g.yaml", prompting=["react"], noise=["clean"], limit=10)
    args = ["--grid", path, "--baseline", str(tmp_path / "baseline.json"), "--work", str(tmp_path / "w"),
            "--adapters", str(tmp_path / "a")]
    assert regress.main(args + ["--update"]) == 0
    assert regress.main(args) == 0
    assert "regress: PASS" in capsys.readouterr().out

    # planted: the model now answers Lyon to everything
    write_grid(tmp_path / "g.yaml", prompting=["react"], noise=["clean"], limit=10,
               models=[{"name": "scripted", "inner": "scripted", "model_args": {"answer": "Lyon"}}])
    assert regress.main(args) == 1
    out = capsys.readouterr()
    assert "FAIL: worse beyond tolerance" in out.out and "regress: FAIL" in out.err
    assert any(line.startswith("scripted react strategyqa clean seed0") and " em " in line and "FAIL" in line
               for line in out.out.splitlines())

    write_grid(tmp_path / "g.yaml", prompting=["react"], noise=["clean"], limit=10, datasets=["hotpotqa"])  # a row gone
    assert regress.main(args) == 1
    assert any("scripted react strategyqa clean seed0" in line and "row disappeared" in line
               for line in capsys.readouterr().out.splitlines())


def _row(ems: list[float]) -> dict:
    """A regress row of 100 questions whose per-question em is `ems` (other metrics fixed)."""
    per_q = {str(i): [em, em, 1.0, 0.0] for i, em in enumerate(ems)}
    return {"n": len(ems), "hashes": {"dataset_hash": "d", "prompt_hash": "p"}, "per_question": per_q,
            "metrics": {m: {"mean": sum(v[i] for v in per_q.values()) / len(ems), "stderr": 0.0}
                        for i, m in enumerate(regress.METRICS)}}


def test_paired_tolerance_fails_a_four_point_drop_and_passes_flips_both_ways():
    base = [1.0] * 20 + [0.0] * 80  # EM 20% on 100 questions
    def dropped(k):  # k right answers turned wrong, none turned right
        return [0.0] * k + base[k:]
    for k, passes in ((0, True), (1, True), (3, True), (4, False), (5, False)):
        assert regress.compare({"rows": {"r": _row(base)}}, {"r": _row(dropped(k))})[0] == passes, k
    # another machine: 6 near-ties flip, 3 each way; the mean does not move and the run passes
    flipped = [0.0] * 3 + base[3:20] + [1.0] * 3 + base[23:]
    assert regress.compare({"rows": {"r": _row(base)}}, {"r": _row(flipped)})[0]
    changed = _row(base)
    changed["hashes"]["prompt_hash"] = "other"
    passed, report = regress.compare({"rows": {"r": _row(base)}}, {"r": changed})
    assert not passed and "prompt_hash changed" in report


@pytest.mark.slow
def test_an_adapter_is_trained_once_and_shared_by_the_cells_that_need_it(tmp_path):
    """Two ft cells (clean, random tool) on one data mix: one real LoRA run on SmolLM2, reused; the scripted
    model stands in at evaluation (it receives the adapter path as `peft`)."""
    path = write_grid(tmp_path / "g.yaml", limit=2, prompting=[], datasets=["hotpotqa"],
                      models=[{"name": "scripted", "inner": "scripted", "model_args": {"pretrained": "smollm2-135m-instruct"}}],
                      finetuning={"methods": ["react"], "tasks": ["hotpotqa"], "sizes": [4], "models": ["scripted"],
                                  "config": {"max_steps": 1, "micro_batch": 2, "grad_accum": 1, "max_len": 256}})
    summary = sweep(path, results=tmp_path, adapters=tmp_path / "adapters", progress=False)
    assert summary["finished"] == 2 and not summary["failed"]
    (adapter,) = (tmp_path / "adapters").iterdir()
    manifest = json.loads((adapter / "manifest.json").read_text())
    assert manifest["global_step"] == 1 and manifest["composition"]["size"] == 4
    finished, _, _ = read_cells(tmp_path / "cells", summary["cell_ids"])
    assert {r["adapter"]["key"] for r in finished} == {adapter.name}
    assert {r["comparability"]["adapter_hash"] for r in finished} == {adapter.name}
    stamp = (adapter / "manifest.json").stat().st_mtime_ns
    board = leaderboard.build(finished, "t")
    leaderboard.validate(board)
    assert {r["adapter"]["size"] for r in board["rows"]} == {4}
    # a wider grid that needs the same adapter trains nothing new
    write_grid(tmp_path / "g.yaml", limit=3, prompting=[], datasets=["hotpotqa"],
               models=[{"name": "scripted", "inner": "scripted", "model_args": {"pretrained": "smollm2-135m-instruct"}}],
               finetuning={"methods": ["react"], "tasks": ["hotpotqa"], "sizes": [4], "models": ["scripted"],
                           "config": {"max_steps": 1, "micro_batch": 2, "grad_accum": 1, "max_len": 256}})
    assert sweep(path, results=tmp_path, adapters=tmp_path / "adapters", progress=False)["finished"] == 2
    assert (adapter / "manifest.json").stat().st_mtime_ns == stamp and len(list((tmp_path / "adapters").iterdir())) == 1


SEEN_BY_TRAINER = []


def engine_seen_trainer(data, config, out):
    """A trainer that records whether a vLLM engine was still held when training began."""
    from fireact_bench.harness.lmeval import vllm_engine

    SEEN_BY_TRAINER.append(vllm_engine.running())
    out.mkdir(parents=True)
    (out / "manifest.json").write_text(json.dumps({"finished": True}))


def test_training_starts_after_the_previous_cell_s_engine_is_released(tmp_path, monkeypatch):
    """The engine's KV cache is memory that training needs, and a merged adapter gets an engine of its own anyway."""
    from fireact_bench.harness.benchmark.sweep import ensure_adapter
    from fireact_bench.harness.lmeval import vllm_engine

    shut = []
    core = type("Core", (), {"shutdown": lambda self: shut.append(True)})()
    lm = type("LM", (), {"model": type("M", (), {"llm_engine": type("E", (), {"engine_core": core})()})()})()
    monkeypatch.setattr(vllm_engine, "_running", {"lm": lm, "args": {}})
    path = write_grid(tmp_path / "g.yaml", limit=2, prompting=[], datasets=["hotpotqa"],
                      models=[{"name": "scripted", "inner": "scripted", "model_args": {"pretrained": "smollm2-135m-instruct"}}],
                      finetuning={"methods": ["react"], "tasks": ["hotpotqa"], "sizes": [4], "models": ["scripted"]})
    cell = load_grid(path).cells[0]
    SEEN_BY_TRAINER.clear()
    out, manifest = ensure_adapter(cell, tmp_path / "adapters", trainer=f"{__name__}:engine_seen_trainer")
    assert SEEN_BY_TRAINER == [None] and shut == [True] and manifest == {"finished": True}
    # a finished adapter is reused: nothing trains, and an engine in use is left alone
    monkeypatch.setattr(vllm_engine, "_running", {"lm": lm, "args": {}})
    ensure_adapter(cell, tmp_path / "adapters", trainer=f"{__name__}:engine_seen_trainer")
    assert SEEN_BY_TRAINER == [None] and shut == [True] and vllm_engine.running() is lm


TCMALLOC = Path("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
HOLD_AND_RETURN = """
from fireact_bench.harness.benchmark.sweep import return_free_memory

def rss():
    return next(int(line.split()[1]) // 1024 for line in open("/proc/self/status") if line.startswith("VmRSS"))

blocks = [bytearray(1 << 20) for _ in range(400)]  # 400 MiB, written (bytearray zero-fills)
held = rss()
del blocks
freed = rss()
print(return_free_memory(), held, freed, rss())
"""


@pytest.mark.skipif(not TCMALLOC.exists(), reason="tcmalloc (libtcmalloc-minimal4) is not installed")
def test_memory_freed_before_training_goes_back_to_the_os():
    """Under tcmalloc (as `make` runs the sweep) freed memory stays resident until it is handed back."""
    env = {**os.environ, "LD_PRELOAD": str(TCMALLOC)}
    out = subprocess.run([sys.executable, "-c", HOLD_AND_RETURN], env=env, capture_output=True, text=True, check=True).stdout
    allocator, held, freed, returned = out.split()
    assert allocator == "tcmalloc"
    assert int(freed) > int(held) - 100  # freed, but still resident
    assert int(returned) < int(held) - 300  # handed back
    plain = subprocess.run([sys.executable, "-c", HOLD_AND_RETURN], capture_output=True, text=True, check=True).stdout
    assert plain.split()[0] == "glibc"
