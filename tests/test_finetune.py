import json
import time

import pytest
from transformers import TrainerCallback

from fireact_bench.adapters.finetune import FinetuneConfig, finetune, main, preset
from fireact_bench.adapters.trajectories import load_validated
from tests.test_sft_data import _traj

pytestmark = pytest.mark.slow


class _Crash(TrainerCallback):
    """Dies right after the first checkpoint is written, like a killed job."""

    def on_save(self, args, state, control, **kwargs):
        raise RuntimeError("killed")


CONFIG = FinetuneConfig(r=8, alpha=16, target_modules=["q_proj", "v_proj"], lr=1e-3, micro_batch=4, grad_accum=1,
                        max_len=128, max_steps=6, save_steps=3, gradient_checkpointing=False)
TRAJS = [_traj(i) for i in range(4)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    with pytest.raises(RuntimeError, match="killed"):
        finetune(TRAJS, CONFIG, out, callbacks=[_Crash()])
    assert (out / "checkpoints" / "checkpoint-3").is_dir() and not (out / "manifest.json").exists()
    finetune(TRAJS, CONFIG, out)  # resumes from checkpoint-3
    return out, json.loads((out / "manifest.json").read_text())


def test_lora_steps_lower_the_loss(run):
    _, manifest = run
    losses = [e["loss"] for e in manifest["loss_history"]]
    assert [e["step"] for e in manifest["loss_history"]] == [1, 2, 3, 4, 5, 6]
    assert losses[-1] < 0.8 * losses[0]


def test_manifest(run):
    out, manifest = run
    assert manifest["finished"] and manifest["output"] == "adapter"
    assert (out / "model" / "adapter_config.json").exists()
    assert manifest["base_model"] == "smollm2-135m-instruct" and len(manifest["base_fingerprint"]) == 16
    assert manifest["composition"]["by_method"] == {"react": 4} and len(manifest["data_hash"]) == 64
    assert manifest["config"]["r"] == 8 and manifest["config"]["max_steps"] == 6
    assert manifest["tokens_seen"] > 0 and manifest["global_step"] == 6
    assert 0 < manifest["peak_rss_mib"] < 8192 and manifest["wall_time_s"] > 0
    assert {"torch", "transformers", "peft"} <= manifest["versions"].keys()
    print(f"\nLoRA: {manifest['seconds_per_step']} s/step, peak RSS {manifest['peak_rss_mib']} MiB")


def test_resumed_from_checkpoint(run):
    assert run[1]["resumed_from"] == "checkpoint-3"


def test_finished_run_is_not_retrained(run):
    out, manifest = run
    stamp = (out / "manifest.json").stat().st_mtime_ns
    started = time.time()
    assert finetune(TRAJS, CONFIG, out) == out
    assert time.time() - started < 30 and (out / "manifest.json").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError):  # another config never overwrites a finished run
        finetune(TRAJS, FinetuneConfig(**{**CONFIG.__dict__, "lr": 5e-4}), out)


def test_presets():
    fireact = preset("fireact-7b")
    assert (fireact.r, fireact.alpha, fireact.dropout, fireact.target_modules, fireact.lr) == (8, 16, 0.05, ["q_proj", "v_proj"], 3e-4)
    with pytest.raises(ValueError):
        preset("nope")


def test_prepare_only_cli(tmp_path, capsys):
    from pathlib import Path
    fixture = Path(__file__).parent / "fixtures" / "trajectories" / "defective.json"
    assert main(["--data", str(fixture), "--methods", "all", "--tasks", "multitask", "--out", str(tmp_path), "--prepare-only"]) == 0
    lines = (tmp_path / "train.jsonl").read_text().splitlines()
    assert len(lines) == len(load_validated(fixture)[0]) == 3
    assert json.loads((tmp_path / "validation_report.json").read_text())["excluded"] == 7
    assert "validation" in capsys.readouterr().out


def test_the_peak_memory_is_the_training_s_not_the_process_s():
    """What the process held before a training (a sweep's vLLM engine, or a parent's peak inherited across exec)
    is not that training's peak: reset_peak_rss starts VmHWM afresh. In a fresh process, whose memory is its own."""
    import subprocess
    import sys

    script = """
import json, mmap
from fireact_bench.adapters.finetune import peak_rss_mib, reset_peak_rss

def touched(mib):  # an anonymous mapping, every page written: resident until closed
    m = mmap.mmap(-1, mib << 20)
    for i in range(0, mib << 20, 4096):
        m[i] = 1
    return m

held = touched(400)
before = peak_rss_mib()
held.close()
reset_peak_rss()
after = peak_rss_mib()
grown = touched(200)
print(json.dumps([before, after, peak_rss_mib()]))
"""
    before, after, grown = json.loads(subprocess.run([sys.executable, "-c", script], check=True, capture_output=True,
                                                     text=True).stdout)
    assert before - after > 300, (before, after)  # the 400 MiB held before the reset are not in the new peak
    assert grown - after > 150, (after, grown)  # what is held after it is
