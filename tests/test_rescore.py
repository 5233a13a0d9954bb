"""Re-scoring FireAct's released evaluation files counts every question of the set they ran on."""
import json
import os
from pathlib import Path

import pytest

from fireact_bench.harness.benchmark.rescore import rescore_file
from fireact_bench.harness.cli import main

TRAJS = Path(os.environ.get("FIREACT_DATA_DIR", Path(__file__).resolve().parents[2] / "shared/data/fireact")) / "trajs"


@pytest.mark.parametrize("model, em, answered", [("llama-2-7b", 26.2, 500), ("llama-2-13b", 34.4, 499), ("gpt-3.5", 40.0, 465)])
def test_fireact_files_rescore_to_the_paper_with_missing_questions_counted(model, em, answered, capsys):
    (path,) = [p for p in TRAJS.glob("*.json") if model in p.name]
    report = rescore_file(path)
    assert report["n"] == 500 and report["answered"] == answered and len(report["missing"]) == 500 - answered
    assert round(100 * report["em"], 1) == em
    # FireAct's own per-question em agrees on every answered question
    recorded = json.loads(path.read_text())
    assert round(100 * sum(float(r["em"]) for r in recorded.values()) / 500, 1) == em
    assert main(["rescore", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"EM {em:.1f}%" in out and f"{500 - answered} missing" in out
    if answered < 500:
        assert report["missing"][0] in out  # listed


def test_a_file_of_another_question_set_is_refused(tmp_path):
    path = next(TRAJS.glob("*gpt-3.5*.json"))
    with pytest.raises(ValueError, match="outside fireact_bamboogle"):
        rescore_file(path, task="fireact_bamboogle")
    renamed = tmp_path / "my_run.json"
    renamed.write_text(path.read_text())
    with pytest.raises(ValueError, match="name them with --task"):
        rescore_file(renamed)
    assert rescore_file(renamed, task="fireact_hotpotqa")["n"] == 500
