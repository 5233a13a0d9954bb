"""Fine-tuning resumes from the newest whole checkpoint, and its manifest covers the whole run.

A tiny random Llama with SmolLM2's tokenizer stands in for the backbone: seconds on CPU.
"""
import json
import logging
import shutil
import time
from pathlib import Path

import pytest
from transformers import TrainerCallback

from fireact_bench.adapters.finetune import FinetuneConfig, finetune
from fireact_bench.harness.lmeval.backbones import resolve_model
from tests.test_sft_data import _traj

TRAJS = [_traj(i) for i in range(4)]
STEP_SECONDS = 0.25


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    tiny = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                       num_key_value_heads=1, max_position_embeddings=256, tie_word_embeddings=True)
    LlamaForCausalLM(tiny).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return FinetuneConfig(base_model=str(folder), r=4, alpha=8, target_modules=["q_proj", "v_proj"], micro_batch=4, grad_accum=1,
                          max_len=128, max_steps=4, save_steps=2, gradient_checkpointing=False)


class _SlowThenKilled(TrainerCallback):
    """Each step takes STEP_SECONDS; the job is killed right after its last checkpoint is written, before the
    manifest (a kill during the final save)."""

    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(STEP_SECONDS)

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == args.max_steps:
            raise RuntimeError("killed")


@pytest.fixture(scope="module")
def killed(config, tmp_path_factory) -> Path:
    """The folder of a run killed after its final checkpoint (checkpoint-4; checkpoint-2 is kept too)."""
    out = tmp_path_factory.mktemp("killed")
    with pytest.raises(RuntimeError, match="killed"):
        finetune(TRAJS, config, out, callbacks=[_SlowThenKilled()])
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    return out


def _rerun(config, killed: Path, out: Path) -> dict:
    finetune(TRAJS, config, out)
    manifest = json.loads((out / "manifest.json").read_text())
    losses = [e["loss"] for e in manifest["loss_history"]]
    killed_log = json.loads((killed / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    assert [e["step"] for e in manifest["loss_history"]] == [1, 2, 3, 4] and manifest["global_step"] == 4
    assert losses[:2] == [e["loss"] for e in killed_log if "loss" in e][:2]  # steps before the resume are the killed run's
    assert manifest["train_loss"] == pytest.approx(sum(losses) / 4)
    return manifest


def test_a_kill_during_the_final_save_keeps_the_run_s_loss_and_time(config, killed, tmp_path):
    """The rerun resumes from the final checkpoint with no step left to run: the trainer's own training_loss is
    then 0.0 and its time a fraction of a second; the manifest has the run's."""
    shutil.copytree(killed, tmp_path, dirs_exist_ok=True)
    manifest = _rerun(config, killed, tmp_path)
    assert manifest["resumed_from"] == "checkpoint-4"
    assert manifest["train_loss"] > 0 and manifest["wall_time_s"] >= 4 * STEP_SECONDS


@pytest.mark.parametrize("tear", ["no trainer state", "weights cut short"])
def test_a_torn_checkpoint_is_skipped(config, killed, tmp_path, caplog, tear):
    """A kill inside the save of checkpoint-4: the rerun resumes from checkpoint-2, saying so."""
    shutil.copytree(killed, tmp_path, dirs_exist_ok=True)
    torn = tmp_path / "checkpoints" / "checkpoint-4"
    if tear == "no trainer state":
        (torn / "trainer_state.json").unlink()
    else:
        weights = torn / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-100])
    with caplog.at_level(logging.WARNING, logger="fireact_bench.adapters.finetune"):
        manifest = _rerun(config, killed, tmp_path)
    assert manifest["resumed_from"] == "checkpoint-2"
    assert any("checkpoint-4 is incomplete" in record.getMessage() for record in caplog.records)
    assert manifest["wall_time_s"] >= 2 * STEP_SECONDS  # steps 1-2 slept in the killed run
