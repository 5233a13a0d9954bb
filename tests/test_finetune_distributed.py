"""Fine-tuning in several processes (`fireact-bench finetune --num-processes N [--fsdp]`): torchrun starts N copies of
the command, each accumulates grad_accum / N micro-batches, so the global batch and each step's examples are the
recipe's. On CPU the processes talk through gloo: 2 processes against 1 on the real backbone (SmolLM2-135M), 2 steps
of 2 x 2 FireAct trajectories without LoRA dropout, so that a step's loss depends on the data and the arithmetic only;
FSDP's full fine-tuning on a tiny random Llama (the sharding, saving and resuming, in seconds). The launch itself is
checked without torch.
"""
import json
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from fireact_bench.adapters import finetune as ft
from fireact_bench.harness.cli import main as cli

# SHORT of tests/test_training_speed.py through the command line, with a checkpoint at each step
ARGS = ["--preset", "small", "--micro-batch", "2", "--grad-accum", "2", "--max-len", "256", "--max-steps", "2", "--save-steps", "1",
        "--size", "8", "--dropout", "0"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


@pytest.fixture
def launched(monkeypatch, tmp_path):
    """main() as the command a user types (no WORLD_SIZE), with the planning and the launch stubbed: what it would run."""
    for name in ft.WORKER_ENV + ("RANK",):
        monkeypatch.delenv(name, raising=False)
    calls = []
    monkeypatch.setattr(ft, "_prepare", lambda args, config: (config, SimpleNamespace(data_hash="d" * 64), {}, tmp_path))
    monkeypatch.setattr(ft.subprocess, "call", lambda command: calls.append(command) or 0)
    return calls


def test_launch_argv():
    argv = ["--preset", "small", "--num-processes", "4", "--out", "x"]
    assert ft.launch_argv(argv, 4) == [*TORCHRUN, "--nproc-per-node=4", "-m", "fireact_bench.adapters.finetune", "--preset", "small", "--out", "x"]
    assert ft.launch_argv(["--num-processes=2", "--method", "full", "--fsdp"], 2)[-6:] == [
        "--nproc-per-node=2", "-m", "fireact_bench.adapters.finetune", "--method", "full", "--fsdp"]


def test_the_command_relaunches_itself_under_torchrun(launched):
    assert ft.main(["--method", "full", "--num-processes", "2", "--fsdp", "--grad-accum", "4"]) == 0
    assert launched == [[*TORCHRUN, "--nproc-per-node=2", "-m", "fireact_bench.adapters.finetune", "--method", "full", "--fsdp",
                         "--grad-accum", "4"]]
    assert ft.main(["--grad-accum", "4", "--num-processes", "2"]) == 0 and launched[-1][-2:] == ["--grad-accum", "4"]


def test_a_finished_run_starts_no_process(launched, tmp_path, capsys):
    config = ft.preset("small")
    (tmp_path / "manifest.json").write_text(json.dumps({"run_id": ft.run_id(config, "d" * 64), "finished": True}))
    assert ft.main(["--num-processes", "2"]) == 0 and launched == []
    assert capsys.readouterr().out.strip() == str(tmp_path)
    with pytest.raises(FileExistsError):  # an FSDP run is another run (fp32 master weights under bf16)
        ft.main(["--method", "full", "--num-processes", "2", "--fsdp"])


@pytest.mark.parametrize("argv, message", [
    (["--num-processes", "2", "--fsdp"], "--fsdp shards a full fine-tuning (method full); this config's method is lora"),
    (["--preset", "fireact-7b", "--method", "qlora", "--num-processes", "2", "--fsdp"], "this config's method is qlora"),
    (["--method", "full", "--fsdp"], "it needs --num-processes 2 or more"),
    (["--num-processes", "3"], "grad_accum 8 cannot be split over 3 processes"),
    (["--num-processes", "0"], "the number of processes must be at least 1"),
])
def test_settings_that_cannot_run_stop_before_any_process_starts(launched, capsys, argv, message):
    assert ft.main(argv) == 2 and launched == []
    err = capsys.readouterr().err
    assert err.splitlines() == [err.strip()] and err.startswith("fireact-finetune: ") and message in err


def test_a_worker_s_process_count_is_torchrun_s(monkeypatch, launched, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert ft.main(["--num-processes", "4"]) == 2 and launched == []
    assert "--num-processes 4, but this process is one of 2 (WORLD_SIZE)" in capsys.readouterr().err


def test_the_run_id_is_the_recipe_s_at_any_world_size():
    """World size is not part of a run's identity (nor of an adapter's key); FSDP is."""
    config = ft.preset("small")
    assert ft.run_id(config, "d") == ft.run_id(config, "d", fsdp=False) != ft.run_id(config, "d", fsdp=True)
    assert ft.grad_accum_per_device(config, 1) == 8 and ft.grad_accum_per_device(config, 4) == 2


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same run in 1 process and in 2 (through `fireact-bench finetune`), with their wall times."""
    out, seconds = {}, {}
    for processes in (1, 2):
        folder = tmp_path_factory.mktemp(f"world{processes}")
        started = time.time()
        assert cli(["finetune", *ARGS, "--out", str(folder), *(["--num-processes", "2"] if processes > 1 else [])]) == 0
        seconds[processes] = round(time.time() - started, 1)
        out[processes] = folder
    print(f"\n1 process {seconds[1]} s, 2 processes {seconds[2]} s (command to command)")
    return out


@pytest.mark.slow
def test_two_processes_train_the_one_process_run(runs):
    """Same global batch and examples per step: the same tokens, the same per-step losses and the same adapter, to
    float error. Measured: identical to the bit (two processes' gradients add as the two accumulated micro-batches
    did, and the loss's x2 / DDP's /2 are exact); more processes may associate the sum differently, hence 1e-5."""
    one, two = _manifest(runs[1]), _manifest(runs[2])
    assert one["distributed"] == {"world_size": 1, "backend": None, "micro_batch_per_device": 2, "grad_accum_per_device": 2,
                                  "global_batch": 4, "fsdp": None}
    assert two["distributed"] == {"world_size": 2, "backend": "gloo", "micro_batch_per_device": 2, "grad_accum_per_device": 1,
                                  "global_batch": 4, "fsdp": None}
    assert two["run_id"] == one["run_id"] and two["config"] == one["config"] and two["config"]["grad_accum"] == 2
    assert two["tokens_seen"] == one["tokens_seen"] > 0
    assert [e["tokens_seen"] for e in two["loss_history"]] == [e["tokens_seen"] for e in one["loss_history"]]
    losses = {n: [e["loss"] for e in m["loss_history"]] for n, m in ((1, one), (2, two))}
    assert len(losses[2]) == 2 and losses[2] == pytest.approx(losses[1], abs=1e-5)
    from safetensors.numpy import load_file

    weights = {n: load_file(runs[n] / "model" / "adapter_model.safetensors") for n in (1, 2)}
    assert weights[2].keys() == weights[1].keys()
    assert max(abs(weights[2][k] - weights[1][k]).max() for k in weights[1]) < 1e-5


@pytest.mark.slow
def test_rank_0_writes_the_run(runs):
    out = runs[2]
    assert (out / "model" / "adapter_config.json").exists() and not (out / "model.tmp").exists()
    assert (out / "checkpoints" / "run_id").read_text() == _manifest(out)["run_id"]
    checkpoint = out / "checkpoints" / "checkpoint-2"
    assert {"rng_state_0.pth", "rng_state_1.pth", "adapter_model.safetensors"} <= {p.name for p in checkpoint.iterdir()}


@pytest.mark.slow
def test_a_finished_distributed_run_is_not_retrained(runs):
    stamp = (runs[2] / "manifest.json").stat().st_mtime_ns
    started = time.time()
    assert cli(["finetune", *ARGS, "--num-processes", "2", "--out", str(runs[2])]) == 0
    assert time.time() - started < 30 and (runs[2] / "manifest.json").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_a_distributed_run_resumes_from_its_checkpoint(runs, tmp_path):
    """A run killed after step 1's checkpoint (manifest, model and checkpoint-2 gone) resumes in 2 processes: step 2
    trains again on the same examples and the manifest covers both steps."""
    shutil.copytree(runs[2], tmp_path, dirs_exist_ok=True)
    for gone in ("manifest.json", "model", "checkpoints/checkpoint-2"):
        path = tmp_path / gone
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    assert cli(["finetune", *ARGS, "--num-processes", "2", "--out", str(tmp_path)]) == 0
    resumed, whole = _manifest(tmp_path), _manifest(runs[2])
    assert resumed["resumed_from"] == "checkpoint-1" and resumed["global_step"] == 2
    assert resumed["tokens_seen"] == whole["tokens_seen"]
    assert [e["loss"] for e in resumed["loss_history"]] == pytest.approx([e["loss"] for e in whole["loss_history"]], abs=1e-6)


# A full fine-tuning of a tiny random Llama with SmolLM2's tokenizer (as in tests/test_finetune_resume.py)
FULL = ["--method", "full", "--micro-batch", "2", "--grad-accum", "2", "--max-len", "128", "--max-steps", "2", "--save-steps", "1",
        "--size", "8", "--lr", "1e-3"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> list[str]:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from fireact_bench.harness.lmeval.backbones import resolve_model

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 num_key_value_heads=1, max_position_embeddings=256, tie_word_embeddings=True)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return ["--base-model", str(folder), *FULL]


@pytest.mark.slow
def test_fsdp_shards_a_full_fine_tuning(tiny, tmp_path):
    """2 FSDP processes (one shard group per decoder layer) train what 1 process trains (measured: the same losses and
    weights, to the bit), save an ordinary model folder, and resume from their checkpoint."""
    from safetensors.numpy import load_file

    one, two, resumed = tmp_path / "one", tmp_path / "fsdp", tmp_path / "resumed"
    assert cli(["finetune", *tiny, "--out", str(one)]) == 0
    assert cli(["finetune", *tiny, "--num-processes", "2", "--fsdp", "--out", str(two)]) == 0
    single, sharded = _manifest(one), _manifest(two)
    assert sharded["distributed"]["fsdp"]["wrapped"] == ["LlamaDecoderLayer"] and sharded["distributed"]["grad_accum_per_device"] == 1
    assert sharded["output"] == "full_model" and sharded["recipe"]["trained_dtype"] == "float32"
    assert sharded["run_id"] != single["run_id"]  # FSDP is another run (under bf16 it trains fp32 master weights)
    assert sharded["tokens_seen"] == single["tokens_seen"]
    assert [e["loss"] for e in sharded["loss_history"]] == pytest.approx([e["loss"] for e in single["loss_history"]], abs=1e-5)
    assert {p.name for p in (two / "model").iterdir()} == {p.name for p in (one / "model").iterdir()}  # no training_args.bin
    weights = {n: load_file(folder / "model" / "model.safetensors") for n, folder in (("one", one), ("two", two))}
    assert max(abs(weights["two"][k] - weights["one"][k]).max() for k in weights["one"]) < 1e-5

    shutil.copytree(two, resumed)
    for gone in ("manifest.json", "model", "checkpoints/checkpoint-2"):
        path = resumed / gone
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    assert cli(["finetune", *tiny, "--num-processes", "2", "--fsdp", "--out", str(resumed)]) == 0
    again = _manifest(resumed)
    assert again["resumed_from"] == "checkpoint-1" and again["tokens_seen"] == sharded["tokens_seen"]
    assert [e["loss"] for e in again["loss_history"]] == pytest.approx([e["loss"] for e in sharded["loss_history"]], abs=1e-6)
