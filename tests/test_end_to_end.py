"""Real runs with the embedded SmolLM2-135M-Instruct, offline, through the console script and plain lm_eval."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
TASKS = Path(__file__).resolve().parents[1] / "tasks"


def _run(cmd, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(next(tmp_path.glob("out/**/results_*.json")).read_text())
    samples = [json.loads(line) for f in tmp_path.glob("out/**/samples_*.jsonl") for line in f.read_text().splitlines()]
    return results, samples


@pytest.mark.slow
# the noisy task on one question: its random observations make each step's context twice as long (77 s for 2)
@pytest.mark.parametrize(("task", "limit"), [("fireact_hotpotqa", 2), ("fireact_hotpotqa_random", 1)])
def test_console_script_runs_react_with_smollm2(task, limit, tmp_path):
    results, samples = _run([str(BIN / "fireact-eval"), "--model", "fireact",
                             "--model_args", "inner=hf,pretrained=smollm2-135m-instruct", "--tasks", task,
                             "--limit", str(limit), "--batch_size", "4", "--output_path", "out", "--log_samples"], tmp_path)
    metrics = results["results"][task]
    assert 0.0 <= metrics["em,episode"] <= 1.0 and metrics["steps,episode"] >= 1
    assert len(samples) == limit
    for sample in samples:
        response = sample["resps"][0][0]
        assert response.startswith("Thought") and "\nEpisode: {" in response  # the whole trajectory is stored
        assert sample["steps"] >= 1 and sample["em"] in (0.0, 1.0)  # per-episode metrics stored with it


@pytest.mark.slow
def test_plain_lm_eval_loads_the_tasks(tmp_path):
    """IO needs no tool, so lm-eval's own `hf` model runs it from --include_path alone."""
    from fireact_bench.harness.lmeval.backbones import resolve_model

    results, samples = _run([str(BIN / "lm_eval"), "--model", "hf", "--model_args", f"pretrained={resolve_model('smollm2-135m-instruct')}",
                             "--device", "cpu", "--include_path", str(TASKS), "--tasks", "fireact_bamboogle_io",
                             "--limit", "3", "--output_path", "out", "--log_samples"], tmp_path)
    assert results["results"]["fireact_bamboogle_io"]["finished,episode"] >= 0.0
    assert len(samples) == 3 and all(s["steps"] == 1 and s["tool_calls"] == 0 for s in samples)
