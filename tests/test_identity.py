"""Cell identity: every layer's fingerprint reaches the cell id; the leaderboard reads files only."""
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import scripted_lm  # noqa: F401  registers the `scripted` lm-eval model
from fireact_bench.harness.agent import methods
from fireact_bench.harness.benchmark import identity
from fireact_bench.harness.benchmark.grid import load_grid
from fireact_bench.harness.benchmark.sweep import sweep
from fireact_bench.harness.provenance import source_fingerprint

TESTS = Path(__file__).parent
SCRIPTED = {"name": "scripted", "inner": "scripted", "model_args": {"answer": "yes"}}


def _grid(tmp_path, **overrides) -> str:
    grid = {"name": "ids", "limit": 2, "models": [SCRIPTED], "prompting": ["react", "reflexion", "cot"],
            "datasets": ["hotpotqa"], "noise": ["clean", "random"], **overrides}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(grid))
    return str(path)


def _ids(path) -> dict[str, str]:
    identity.task_config.cache_clear()
    return {cell.label(): identity.cell_id(cell) for cell in load_grid(path).cells}


def _constant_lines(source: str) -> list[int]:
    """Lines of module-level ALL_CAPS assignments whose value holds a string literal: the prompt constants."""
    return [i for i, line in enumerate(source.splitlines()) if re.match(r"^[A-Z_]+ = ", line) and re.search(r"\"[^\"]+\"", line)
            or re.match(r"^\s+\"", line) and i and re.match(r"^[A-Z_]+ = \($", source.splitlines()[i - 1])]


def test_changing_any_prompt_constant_changes_every_cell_id_that_uses_it(tmp_path, monkeypatch):
    grid = _grid(tmp_path)
    before = _ids(grid)
    source = Path(methods.__file__).read_text()
    lines = _constant_lines(source)
    assert len(lines) >= 3  # ALPACA_TEMPLATE, QUESTION_PREFIX, PROMPT_FILES at least
    for i in lines:
        edited = source.splitlines()
        edited[i] = re.sub(r"\"([^\"]+)\"", lambda m: f"\"{m.group(1)}!\"", edited[i], count=1)
        copy = tmp_path / f"methods_{i}.py"
        copy.write_text("\n".join(edited))
        monkeypatch.setattr(methods, "__file__", str(copy))
        after = _ids(grid)
        assert all(after[label] != before[label] for label in before), f"line {i + 1} of methods.py left an id unchanged"
    monkeypatch.undo()
    assert _ids(grid) == before


def test_a_few_shot_prompt_file_is_part_of_the_id(tmp_path, monkeypatch):
    grid = _grid(tmp_path, prompting=["react"], noise=["clean"])
    before = _ids(grid)
    data = tmp_path / "data"
    shared = Path(os.environ["FIREACT_DATA_DIR"])
    for entry in shared.iterdir():
        (data / entry.name).parent.mkdir(parents=True, exist_ok=True)
        if entry.name != "prompts":
            (data / entry.name).symlink_to(entry)
    (data / "prompts").mkdir()
    for prompt in (shared / "prompts").iterdir():
        text = prompt.read_text() + ("\nOne more example." if prompt.name == "react_hotpotqa_google.txt" else "")
        (data / "prompts" / prompt.name).write_text(text)
    monkeypatch.setenv("FIREACT_DATA_DIR", str(data))
    methods.fewshot_prompt.cache_clear()
    try:
        assert set(_ids(grid).values()).isdisjoint(before.values())
    finally:
        methods.fewshot_prompt.cache_clear()


def test_the_tool_the_cell_really_uses_and_its_noise_are_in_the_id(tmp_path, monkeypatch):
    grid = _grid(tmp_path, prompting=["react"], noise=["clean", "random", "none"])
    cells = {c.noise: c for c in load_grid(grid).cells}
    hashes = {noise: identity.comparability(cell)["search_hash"] for noise, cell in cells.items()}
    assert len(set(hashes.values())) == 3  # each noise kind is a different tool
    p = identity.comparability(dataclasses.replace(cells["random"], noise_p=0.3))["search_hash"]
    assert p != hashes["random"]
    before = identity.cell_id(cells["clean"])
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"text": "Paris is the capital of France."}) + "\n" + json.dumps({"text": "Rome is in Italy."}))
    real = identity.cell_options

    def with_bm25(cell):  # a task whose fireact key asks for another backend
        return dataclasses.replace(real(cell), tool="bm25", tool_args=json.dumps({"corpus": str(corpus)}))

    monkeypatch.setattr(identity, "cell_options", with_bm25)
    assert identity.cell_id(cells["clean"]) != before


def test_the_evaluation_code_is_in_the_id(tmp_path, monkeypatch):
    grid = _grid(tmp_path, prompting=["react"], noise=["clean"])
    before = _ids(grid)
    monkeypatch.setattr(identity, "source_fingerprint", lambda *paths: "0" * 16 if "tasks" in paths else source_fingerprint(*paths))
    assert set(_ids(grid).values()).isdisjoint(before.values())


def test_leaderboard_reads_files_only_and_lists_cells_of_other_versions(tmp_path):
    grid = _grid(tmp_path)
    results = tmp_path / "results"
    summary = sweep(grid, results, progress=False)
    assert summary["finished"] == summary["cells"] == 5
    # one cell ran under other package versions (as after an upgrade): still listed, and marked
    cell = results / "cells" / f"{summary['cell_ids'][0]}.json"
    result = json.loads(cell.read_text())
    result["comparability"]["versions"]["torch"] = "0.0.1"
    cell.write_text(json.dumps(result))
    # no FireAct data (an unreadable data directory) and no model library: the leaderboard needs neither
    code = ("import sys; from fireact_bench.harness.benchmark.leaderboard import main; "
            f"rc = main(['--grid', {grid!r}, '--results', {str(results)!r}, '--no-plots']); "
            "heavy = [m for m in ('torch', 'transformers', 'lm_eval', 'datasets') if m in sys.modules]; "
            "assert not heavy, heavy; sys.exit(rc)")
    env = dict(os.environ, FIREACT_DATA_DIR=str(tmp_path / "no-such-dir"), PYTHONPATH=str(TESTS))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    assert elapsed < 5.0
    assert "5 rows (1 finished under other package versions)" in done.stdout
    board = json.loads((results / "ids" / "leaderboard.json").read_text())
    stale = [r for r in board["rows"] if r["other_versions"]]
    assert [r["cell_id"] for r in stale] == [result["cell_id"]] and stale[0]["other_versions"]["torch"][0] == "0.0.1"
    assert "† finished under other package versions" in (results / "ids" / "leaderboard.md").read_text()


def test_leaderboard_without_an_index_says_what_to_run(tmp_path):
    from fireact_bench.harness.benchmark.leaderboard import main

    with pytest.raises(FileNotFoundError, match="has no index yet"):
        main(["--grid", _grid(tmp_path), "--results", str(tmp_path / "empty")])
