"""Fine-tune a backbone on trajectories (LoRA, QLoRA or full) with a manifest that makes runs reproducible.

`finetune(data, config, out_dir)` writes out_dir/model (adapter or full model), out_dir/checkpoints
(resumable) and out_dir/manifest.json (atomic, written last). A finished run with the same config and
data hash is not retrained. `main(argv)`: FireAct release -> validation report -> training set -> run.
`training_speed(config)`: tokens/s of a few steps, to compare recipes (BASELINE_RECIPE is the one before the
speed levers: the same losses, 2.5-3x slower on CPU).

Several devices: `main([..., "--num-processes", "N"])` runs itself again under torchrun, one process per device
(DDP; `--fsdp` shards a full fine-tuning). The recipe's global batch (micro_batch x grad_accum) is kept: each
process accumulates grad_accum / N micro-batches, so every optimizer step sees the same examples at any world size.
Rank 0 alone writes the model, the manifest and the checkpoints' run marker; the others wait for it.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import random
import resource
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fireact_bench.adapters.sft_data import IGNORE, TrainingSet, build_training_set, tokenize_set, write_training_jsonl
from fireact_bench.adapters.trajectories import Trajectory, load_validated
from fireact_bench.harness.data.release import data_file
from fireact_bench.harness.files import write_json, write_text
from fireact_bench.harness.lmeval.backbones import DEFAULT_BACKBONE, model_fingerprint, resolve_model
from fireact_bench.harness.provenance import versions
from fireact_bench.harness.settings import cache_dir
from fireact_bench.harness.study import METHOD_MIXES, TASK_MIXES

log = logging.getLogger(__name__)


@dataclass
class FinetuneConfig:
    base_model: str = DEFAULT_BACKBONE
    method: str = "lora"  # lora | qlora | full
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"
    lr: float = 1e-3
    epochs: float = 2
    micro_batch: int = 2
    grad_accum: int = 8
    max_len: int = 1024
    seed: int = 0
    # Speed levers that keep the losses (tests/test_training_speed.py); BASELINE_RECIPE turns them all off.
    # Recomputing activations costs a third more time; a 135M model's fit in memory without (fireact-7b turns it on)
    gradient_checkpointing: bool = False
    packing: bool = True  # each micro-batch as one row without padding, positions restarting per example
    label_only_logits: bool = True  # the output layer and the loss only at positions that predict a label
    # onednn: fp32 matmuls through oneDNN (2x MKL on AMD CPUs) where a check at start-up finds them fp32-accurate
    # (on CPUs with AMX oneDNN may compute them in bf16: then the default is kept); default: PyTorch's (MKL)
    fp32_matmul: str = "onednn"
    cpu_bf16: bool = False  # bf16 autocast on CPU too (opt-in: ~15% faster, shifts the loss); a GPU always uses bf16
    train_on: str = "model"  # model: thoughts and actions only; all: every token (FireAct's original)
    # alpaca (FireAct's template) | chat (the model's chat template) | auto: chat when the model has a
    # template, as the `ft` method decides at evaluation, so training and evaluation formats agree
    fmt: str = "auto"
    save_steps: int = 50
    max_steps: int = -1  # > 0 caps the run (smoke tests); -1: the epochs decide


# FireAct's 7B recipe (Llama-2 / CodeLlama LoRA in the paper's code).
PRESETS = {
    "fireact-7b": dict(method="lora", r=8, alpha=16, dropout=0.05, target_modules=["q_proj", "v_proj"], lr=3e-4,
                       gradient_checkpointing=True),
    # The embedded 135M backbone: more capacity per parameter (all linear layers), larger lr, 2 epochs.
    "small": dict(method="lora", r=16, alpha=32, dropout=0.05, target_modules="all-linear", lr=1e-3, epochs=2),
}


# The recipe before the speed levers (for comparisons): padded micro-batches, logits at every position,
# activations recomputed, PyTorch's default fp32 matmuls.
BASELINE_RECIPE = dict(gradient_checkpointing=True, packing=False, label_only_logits=False, fp32_matmul="default")
# An fp32 matmul's error relative to its largest result, against fp64: ~1e-6 in fp32, ~4e-3 when computed in bf16.
MATMUL_TOLERANCE = 1e-5


def preset(name: str, **overrides) -> FinetuneConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    return FinetuneConfig(**{**PRESETS[name], **overrides})


def run_id(config: FinetuneConfig, data_hash: str, *, fsdp: bool = False) -> str:
    """The run's identity: its recipe and data. Not the world size: the global batch, the examples of each step and the
    schedule are the same at any process count, which changes only the order of float reductions (as another GPU
    does). FSDP enters it: under bf16 it keeps fp32 master weights (accelerate upcasts them), another arithmetic."""
    body = json.dumps([dataclasses.asdict(config), data_hash, *(["fsdp"] if fsdp else [])], sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


# Distributed training. torchrun (torch.distributed.run) starts the processes: it ships with torch, starts N local
# processes on CPUs (gloo) and GPUs (nccl) alike, and reads no configuration file, unlike `accelerate launch`, whose
# --cpu starts one process (several only through mpirun) and which applies a user's default accelerate config.
# FSDP is set in TrainingArguments by the workers, so it works under any launcher (a Slurm job's own torchrun).
MODULE = "fireact_bench.adapters.finetune"
WORKER_ENV = ("WORLD_SIZE", "LOCAL_RANK")  # set by torchrun (and accelerate, srun wrappers) in every worker


def is_worker() -> bool:
    """Whether this process is one of a distributed launch's workers."""
    return any(name in os.environ for name in WORKER_ENV)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def grad_accum_per_device(config: FinetuneConfig, processes: int) -> int:
    """Each process's accumulation steps, so that micro_batch x grad_accum stays the global batch of the recipe."""
    if processes < 1:
        raise ValueError(f"the number of processes must be at least 1, not {processes}")
    if config.grad_accum % processes:
        raise ValueError(f"grad_accum {config.grad_accum} cannot be split over {processes} processes: the recipe's global batch "
                         f"(micro_batch {config.micro_batch} x grad_accum {config.grad_accum}) is kept by giving each process "
                         f"grad_accum / processes; use a process count that divides {config.grad_accum}")
    return config.grad_accum // processes


def check_distributed(config: FinetuneConfig, processes: int, fsdp: bool) -> None:
    """A process count and FSDP request that this config can run with (ValueError naming the problem otherwise)."""
    grad_accum_per_device(config, processes)
    if fsdp and config.method != "full":
        raise ValueError(f"--fsdp shards a full fine-tuning (method full); this config's method is {config.method}: "
                         "LoRA and QLoRA runs use plain data parallelism (--num-processes without --fsdp)")
    if fsdp and processes < 2:
        raise ValueError("--fsdp shards the model over processes: it needs --num-processes 2 or more (or a torchrun launch)")


def launch_argv(argv: list[str], processes: int) -> list[str]:
    """The command that runs this fine-tuning in `processes` local processes: torchrun of this module with the same
    arguments, less --num-processes (the workers read the world size from torchrun's environment)."""
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--num-processes":
            skip = True
        elif not arg.startswith("--num-processes="):
            rest.append(arg)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", "-m", MODULE, *rest]


def fsdp_config(config: FinetuneConfig) -> dict:
    """FSDP2 full sharding, FireAct's `--fsdp "full_shard auto_wrap"`: one shard group per decoder layer (the model's
    _no_split_modules, LlamaDecoderLayer for Llama, which FireAct named), parameters resharded after the forward,
    activation checkpointing done by FSDP when the recipe asks for it (the Trainer's would gather the parameters once
    more), whole state dicts saved, so that the model folder and the checkpoints are ordinary ones."""
    return {"version": 2, "reshard_after_forward": True, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "state_dict_type": "FULL_STATE_DICT", "activation_checkpointing": config.gradient_checkpointing}


class _Padded:
    """Right padding; labels padded with IGNORE so padding never carries loss."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        ids, labels, mask = [], [], []
        for r in rows:
            pad = width - len(r["input_ids"])
            ids.append(r["input_ids"] + [self.pad_id] * pad)
            labels.append(r["labels"] + [IGNORE] * pad)
            mask.append([1] * len(r["input_ids"]) + [0] * pad)
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}


def _collator(config: FinetuneConfig, tokenizer):
    if config.packing:
        # One row per micro-batch: input_ids and labels concatenated, position_ids restarting at 0 per example and
        # no attention mask, from which the model's mask keeps the examples apart (block-diagonal causal; the
        # model must run without a KV cache, as the Trainer sets). Each example's first label becomes IGNORE: it
        # is never predicted anyway. A row's losses equal its unpacked ones (tests/test_training_speed.py).
        from transformers import DataCollatorWithFlattening

        return DataCollatorWithFlattening(return_tensors="pt")
    return _Padded(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)


def _trainer_class(config: FinetuneConfig):
    """The Trainer, or with label_only_logits one whose loss applies the output layer only where a label is
    predicted (position i predicts label i+1): the causal LM loss itself (a sum over the label tokens divided by
    the accumulated batch's count, as the model's loss does) without the logits nobody reads."""
    import torch
    from transformers import Trainer

    if not config.label_only_logits:
        return Trainer

    class LabelOnlyLogits(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            targets = inputs["labels"][:, 1:]
            keep = (targets != IGNORE).any(0).nonzero().squeeze(1)  # positions (of any row) that predict a label
            outputs = model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False, logits_to_keep=keep)
            logits = outputs.logits.float()
            if logits.shape[1] != keep.numel():  # a model that does not take logits_to_keep as indices
                logits = logits[:, keep]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets[:, keep].reshape(-1),
                                                     ignore_index=IGNORE, reduction="sum")
            count = num_items_in_batch if num_items_in_batch is not None else (targets != IGNORE).sum()
            loss = loss / torch.as_tensor(count, device=loss.device)
            if num_items_in_batch is not None and getattr(getattr(self, "args", None), "average_tokens_across_devices", False):
                # as Trainer.compute_loss: the count is the sum over all processes and DDP averages the gradients, so
                # each process's share is scaled by their number (a no-op on one process)
                loss = loss * self.accelerator.num_processes
            return (loss, outputs) if return_outputs else loss

    return LabelOnlyLogits


def matmul_error() -> float:
    """The largest error of fp32 matmuls of a training's shapes (a linear layer, its weight gradient) against fp64,
    relative to the largest result, under the current settings."""
    import torch

    gen = torch.Generator().manual_seed(0)
    x, w, g = torch.randn(512, 576, generator=gen), torch.randn(1536, 576, generator=gen), torch.randn(512, 1536, generator=gen)
    worst = 0.0
    for out, ref in ((torch.nn.functional.linear(x, w), x.double() @ w.double().T), (g.T @ x, g.double().T @ x.double())):
        worst = max(worst, ((out.double() - ref).abs().max() / ref.abs().max()).item())
    return worst


@contextlib.contextmanager
def _fp32_matmul(choice: str, cuda: bool):
    """Routes fp32 matmuls to oneDNN while training if asked and measured fp32-accurate here; yields the record of
    the decision for the manifest. PyTorch's setting is restored afterwards."""
    import torch

    if choice not in ("onednn", "default"):
        raise ValueError(f"fp32_matmul must be onednn or default, not {choice!r}")
    record = {"requested": choice, "used": "default", "error": None, "tolerance": MATMUL_TOLERANCE}
    settings = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
    if choice == "default" or cuda or settings is None or not torch.backends.mkldnn.is_available():
        yield record
        return
    before = settings.fp32_precision
    try:
        # "bf16" lets PyTorch hand fp32 matmuls to oneDNN, which may then compute them in bf16: hence the check
        settings.fp32_precision = "bf16"
        record["error"] = float(f"{matmul_error():.3g}")
        if record["error"] <= MATMUL_TOLERANCE:
            record["used"] = "onednn"
        else:
            settings.fp32_precision = before
            log.warning("oneDNN's fp32 matmuls are not fp32-accurate here (relative error %.2g > %.0g): PyTorch's default kept",
                        record["error"], MATMUL_TOLERANCE)
        yield record
    finally:
        settings.fp32_precision = before


def _load_model(config: FinetuneConfig, path: str):
    import torch
    from transformers import AutoModelForCausalLM

    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32
    if config.method == "qlora":
        try:
            import bitsandbytes  # noqa: F401  (only to fail early with a clear message)
        except ImportError as err:
            raise RuntimeError("QLoRA needs the bitsandbytes package (pip install bitsandbytes)") from err
        if not cuda:
            raise RuntimeError("QLoRA needs a CUDA GPU; use method='lora' on CPU")
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
                                   bnb_4bit_use_double_quant=True)
        model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant, dtype=dtype)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    elif config.method in ("lora", "full"):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    else:
        raise ValueError(f"method must be lora, qlora or full, not {config.method!r}")
    if config.method != "full":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
                          target_modules=config.target_modules, task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    return model


def finetune(data: list[Trajectory] | TrainingSet, config: FinetuneConfig, out_dir: str | os.PathLike,
             *, size: int | None = None, methods: str = "react", tasks: str = "hotpotqa",
             callbacks: list | None = None, fsdp: bool = False) -> Path:
    """Train and return out_dir. `data`: a TrainingSet, or trajectories built into one with size/methods/tasks.

    Reruns: a finished run with the same config and data hash returns at once; an interrupted one
    resumes from its last checkpoint; a finished run of another config in out_dir is an error.
    In a distributed launch (torchrun: WORLD_SIZE in the environment) every process calls it; each accumulates
    grad_accum / world size micro-batches, rank 0 writes the files and the others wait for it. fsdp: shard the model
    (full fine-tuning only).
    """
    import torch
    from transformers import AutoTokenizer, TrainingArguments, set_seed

    out_dir = Path(out_dir)
    base_path = resolve_model(config.base_model)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    config = dataclasses.replace(config, fmt=resolve_fmt(config.fmt, tokenizer))
    if not isinstance(data, TrainingSet):
        data = build_training_set(data, size=size, methods=methods, tasks=tasks, seed=config.seed,
                                  fmt=config.fmt, tokenizer=tokenizer)
    processes = world_size()
    check_distributed(config, processes, fsdp)
    rid = run_id(config, data.data_hash, fsdp=fsdp)
    manifest_path = out_dir / "manifest.json"
    if _finished(manifest_path, rid):
        return out_dir

    rows, token_summary = tokenize_set(data, tokenizer, config.max_len, config.train_on)
    if not rows:
        raise ValueError("no training example has a trained token")
    random.seed(config.seed)
    set_seed(config.seed)
    ckpt_dir = out_dir / "checkpoints"
    cuda = torch.cuda.is_available()
    # The arguments first: under torchrun they join the process group and pick this process's device (gloo on CPUs,
    # nccl on GPUs), before the model is loaded.
    args = TrainingArguments(
        output_dir=str(ckpt_dir), per_device_train_batch_size=config.micro_batch,
        gradient_accumulation_steps=grad_accum_per_device(config, processes), learning_rate=config.lr, num_train_epochs=config.epochs,
        max_steps=config.max_steps, lr_scheduler_type="cosine", warmup_steps=0, logging_steps=1,
        save_steps=config.save_steps, save_total_limit=2, seed=config.seed, data_seed=config.seed,
        bf16=cuda or config.cpu_bf16, use_cpu=not cuda, report_to=[], remove_unused_columns=False,
        use_cache=False,  # a KV cache would also let packed examples see each other
        gradient_checkpointing=config.gradient_checkpointing and not fsdp,
        fsdp=fsdp or None, fsdp_config=fsdp_config(config) if fsdp else None,
        # non-reentrant checkpointing works with frozen embeddings (LoRA) without extra hooks
        gradient_checkpointing_kwargs={"use_reentrant": False}, dataloader_num_workers=0, disable_tqdm=True,
        # a packed batch has no padding and no attention mask: all its tokens are the non-padding ones
        include_num_input_tokens_seen="all" if config.packing else "non_padding",
        # every trainable parameter takes part in every step (LoRA's, or all of them): DDP need not search for others
        ddp_find_unused_parameters=False)
    args.device  # noqa: B018  (sets up the process group and this process's device now, as the Trainer would)
    if args.world_size != processes:
        raise RuntimeError(f"the trainer sees {args.world_size} processes, the environment says WORLD_SIZE={processes}")
    main_process = args.process_index == 0
    reset_peak_rss()  # the manifest's peak is this training's (model loading included), not what ran before it
    model = _load_model(config, base_path)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    marker = ckpt_dir / "run_id"  # checkpoints of another config must never be resumed
    if marker.exists() and marker.read_text() != rid:
        raise FileExistsError(f"{ckpt_dir} holds checkpoints of another run ({marker.read_text()}); use another out_dir")
    if main_process:
        write_text(marker, rid)  # atomic: another process reads this run's id or none
    resume = _resumable_checkpoint(ckpt_dir)
    clock = _clock()
    trainer = _trainer_class(config)(model=model, args=args, train_dataset=rows, data_collator=_collator(config, tokenizer),
                                     callbacks=[clock, *(callbacks or [])])
    with _fp32_matmul(config.fp32_matmul, cuda) as matmul:
        trainer.train(resume_from_checkpoint=resume)
    wall = clock.total()

    staging = out_dir / "model.tmp"
    if main_process:
        shutil.rmtree(staging, ignore_errors=True)
    if fsdp:
        trainer.save_model(str(staging))  # every process takes part in gathering the shards; rank 0 writes
    elif main_process:
        model.save_pretrained(staging)
    if main_process:
        (staging / "training_args.bin").unlink(missing_ok=True)  # what the Trainer's save_model adds to a model
        tokenizer.save_pretrained(staging)
        shutil.rmtree(out_dir / "model", ignore_errors=True)
        os.replace(staging, out_dir / "model")
        write_json(manifest_path, _manifest(trainer, model, config, data, rid=rid, base_path=base_path, token_summary=token_summary,
                                            resume=resume, wall=wall, matmul=matmul, fsdp=fsdp))
    trainer.accelerator.wait_for_everyone()  # the other processes return once rank 0 has written the run
    return out_dir


def _manifest(trainer, model, config: FinetuneConfig, data: TrainingSet, *, rid: str, base_path: str, token_summary: dict,
              resume: str | None, wall: float, matmul: dict, fsdp: bool) -> dict:
    """The manifest of a finished run (rank 0 writes it)."""
    import torch

    cuda = torch.cuda.is_available()
    steps = trainer.state.global_step
    # per step: its loss, and the training's running time and tokens at its end (for rates that skip warm-up)
    losses = [{"step": e["step"], "loss": e["loss"], "wall_time_s": e.get("wall_time_s"), "tokens_seen": e.get("num_input_tokens_seen")}
              for e in trainer.state.log_history if "loss" in e]
    return {
        "run_id": rid, "finished": True, "output": "adapter" if config.method != "full" else "full_model",
        "base_model": config.base_model, "base_model_path": base_path,
        "base_fingerprint": model_fingerprint(config.base_model),
        "data_hash": data.data_hash, "composition": data.composition, "tokens": token_summary,
        "config": dataclasses.asdict(config),
        # the whole run's history: a resumed trainer's log holds the steps before its checkpoint too (its own
        # training_loss averages only the steps run since the resume, and is 0.0 when none were left)
        "loss_history": losses, "train_loss": sum(e["loss"] for e in losses) / len(losses) if losses else None,
        "global_step": steps,
        "tokens_seen": trainer.state.num_input_tokens_seen,  # non-padding, resumed part included, all processes
        "resumed_from": Path(resume).name if resume else None,
        "wall_time_s": round(wall, 2), "seconds_per_step": round(wall / max(1, steps), 3),
        "tokens_per_s": round(trainer.state.num_input_tokens_seen / wall, 1) if wall > 0 else None,
        # how this run computed (config holds what was asked): the matmul check's measured error and decision,
        # the attention that separates packed examples, the allocator (tcmalloc when make preloads it)
        "recipe": {"packing": config.packing, "label_only_logits": config.label_only_logits,
                   "gradient_checkpointing": config.gradient_checkpointing, "precision": "bf16" if cuda or config.cpu_bf16 else "fp32",
                   "fp32_matmul": matmul, "attn_implementation": getattr(model.config, "_attn_implementation", None),
                   "allocator": "tcmalloc" if "tcmalloc" in os.environ.get("LD_PRELOAD", "") else "default",
                   "torch_threads": torch.get_num_threads(),
                   # the weights the optimizer updates (FSDP under bf16 keeps fp32 ones; one GPU trains bf16 weights)
                   "trained_dtype": str(next(p.dtype for p in model.parameters() if p.requires_grad)).removeprefix("torch.")},
        # the processes that trained it: each took micro_batch x grad_accum_per_device examples of a step's
        # global_batch (micro_batch x grad_accum, the recipe's at any world size)
        "distributed": {"world_size": trainer.args.world_size,
                        # (one process: none, even where another library, vLLM in the same process, made a group)
                        "backend": torch.distributed.get_backend() if trainer.args.world_size > 1 else None,
                        "micro_batch_per_device": config.micro_batch, "grad_accum_per_device": trainer.args.gradient_accumulation_steps,
                        "global_batch": config.micro_batch * config.grad_accum,
                        "fsdp": {**fsdp_config(config), "wrapped": list(getattr(model, "_no_split_modules", None) or [])}
                        if fsdp else None},
        # rank 0's resident peak since reset_peak_rss (model loading included)
        "peak_rss_mib": peak_rss_mib(),
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
        "device": "cuda" if cuda else "cpu", "versions": versions(), "argv": sys.argv,
    }


def reset_peak_rss() -> None:
    """Starts this process's resident-memory peak (VmHWM) afresh. ru_maxrss cannot be reset and an exec'd process
    inherits its parent's: a training started by a sweep would report the peak of the sweep's vLLM engine."""
    with contextlib.suppress(OSError):  # Linux only (and /proc may be read-only): peak_rss_mib then falls back
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mib() -> float:
    """This process's resident-memory peak in MiB since reset_peak_rss (VmHWM); ru_maxrss where /proc has none."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)  # kB
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def _finished(manifest_path: Path, rid: str) -> bool:
    """Whether the folder of manifest_path holds this run, finished; another finished run there is an error."""
    if not manifest_path.exists():
        return False
    previous = json.loads(manifest_path.read_text())
    if previous.get("run_id") == rid and previous.get("finished"):
        return True
    raise FileExistsError(f"{manifest_path.parent} holds another finished run ({previous.get('run_id')}); use another out_dir")


def training_speed(config: FinetuneConfig, out_dir: str | os.PathLike, *, steps: int = 5, size: int | None = None,
                   methods: str = "react", tasks: str = "hotpotqa", data: list | None = None) -> dict:
    """Training speed of `config` over `steps` optimizer steps on the mix's FireAct trajectories (the first `size`
    of its seeded order; default: the steps' worth), a fresh run in out_dir: tokens/s and s/step from the end of
    step 1 to the end of the last (step 1 warms up), and the losses, to set recipes side by side, e.g.
    training_speed(preset("small"), a) against training_speed(preset("small", **BASELINE_RECIPE), b).
    peak_rss_mib is the training's own (from model loading to the end)."""
    if steps < 2:
        raise ValueError("steps must be at least 2 (the first warms up)")
    size = size or steps * config.micro_batch * config.grad_accum
    config, ts, _ = plan_training(dataclasses.replace(config, max_steps=steps, save_steps=steps), methods=methods,
                                  tasks=tasks, size=size, data=data)
    manifest = json.loads((Path(finetune(ts, config, out_dir)) / "manifest.json").read_text())
    first, last = manifest["loss_history"][0], manifest["loss_history"][-1]
    seconds = last["wall_time_s"] - first["wall_time_s"]
    return {"tokens_per_s": round((last["tokens_seen"] - first["tokens_seen"]) / seconds, 1),
            "seconds_per_step": round(seconds / (last["step"] - first["step"]), 3), "steps": manifest["global_step"],
            "tokens_seen": manifest["tokens_seen"], "wall_time_s": manifest["wall_time_s"],
            "losses": [e["loss"] for e in manifest["loss_history"]], "peak_rss_mib": manifest["peak_rss_mib"],
            "config": manifest["config"], "recipe": manifest["recipe"], "out_dir": str(out_dir)}


def _resumable_checkpoint(ckpt_dir: Path) -> str | None:
    """The newest checkpoint saved whole. A kill inside a save leaves one without trainer_state.json (the
    Trainer writes it last) or with a weights file cut short: it is skipped, with a log line, never resumed."""
    from safetensors import SafetensorError, safe_open

    numbered = [path for path in ckpt_dir.glob("checkpoint-*") if path.is_dir() and path.name.removeprefix("checkpoint-").isdigit()]
    for path in sorted(numbered, key=lambda path: int(path.name.removeprefix("checkpoint-")), reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
            weights = sorted(path.glob("*.safetensors"))
            for weight in weights:
                with safe_open(str(weight), "pt"):  # reads the header and checks that the file covers it
                    pass
            if not weights:
                raise ValueError("no weights file")
        except (OSError, ValueError, SafetensorError) as err:
            log.warning("%s is incomplete, not resumed from: %s", path, err)
            continue
        return str(path)
    return None


def _clock():
    """A Trainer callback that times training across resumed runs: every log entry carries the running total, so
    each checkpoint's trainer_state.json holds the time of the training it contains, and a run resumed from it
    continues from there. (transformers is imported here, when training, not with this module.)"""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.before = next((e["wall_time_s"] for e in reversed(state.log_history) if "wall_time_s" in e), 0.0)
            self.started = time.time()

        def on_log(self, args, state, control, **kwargs):
            state.log_history[-1]["wall_time_s"] = round(self.total(), 2)

        def total(self) -> float:
            return self.before + time.time() - self.started

    return Clock()


def _release_file(methods: str, tasks: str) -> Path:
    """FireAct's alpaca file that holds a mix: multimethod files hold CoT and Reflexion runs too."""
    stem = "hotpotqa" if tasks == "hotpotqa" else "multitask"
    suffix = "" if methods == "react" else "_multimethod"
    return data_file(f"data/finetune/alpaca_format/{stem}{suffix}.json")


def plan_training(config: FinetuneConfig, *, methods: str = "react", tasks: str = "hotpotqa", size: int | None = None,
                  data: list | None = None) -> tuple[FinetuneConfig, TrainingSet, dict]:
    """(config with its format resolved, training set, validation report), before any training.

    data: FireAct release files or trajectory JSONL; default: FireAct's release file of the mix."""
    from transformers import AutoTokenizer

    trajs, report = load_validated(data or [_release_file(methods, tasks)])
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(config.base_model))
    config = dataclasses.replace(config, fmt=resolve_fmt(config.fmt, tokenizer))
    ts = build_training_set(trajs, size=size, methods=methods, tasks=tasks, seed=config.seed, fmt=config.fmt,
                            tokenizer=tokenizer)
    if not ts.examples:
        raise ValueError(f"no valid trajectory of methods={methods} tasks={tasks} in {', '.join(report['files'])} "
                         f"(excluded: {report['by_reason']})")
    return config, ts, report


def resolve_fmt(fmt: str, tokenizer) -> str:
    if fmt == "auto":
        return "chat" if getattr(tokenizer, "chat_template", None) else "alpaca"
    if fmt not in ("chat", "alpaca"):
        raise ValueError(f"fmt must be auto, chat or alpaca, got {fmt!r}")
    return fmt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fireact-finetune", description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="*", help="FireAct release files or trajectory JSONL (default: the release file of the mix)")
    parser.add_argument("--methods", choices=list(METHOD_MIXES), default="react")
    parser.add_argument("--tasks", choices=list(TASK_MIXES), default="hotpotqa")
    parser.add_argument("--size", type=int, help="number of trajectories (default: all)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    for name in ("base_model", "method", "fmt", "train_on"):
        parser.add_argument("--" + name.replace("_", "-"))
    for name, kind in (("r", int), ("alpha", int), ("dropout", float), ("lr", float), ("epochs", float), ("micro_batch", int),
                       ("grad_accum", int), ("max_len", int), ("seed", int), ("max_steps", int), ("save_steps", int)):
        parser.add_argument("--" + name.replace("_", "-"), type=kind)
    parser.add_argument("--baseline-recipe", action="store_true", help="without the speed levers (same losses, slower)")
    parser.add_argument("--cpu-bf16", action="store_true", default=None, help="bf16 autocast on CPU (faster, shifts the loss)")
    parser.add_argument("--out", help="output folder (default: <cache>/finetuned/<run id>)")
    parser.add_argument("--prepare-only", action="store_true", help="write the training JSONL and the report, no training")
    parser.add_argument("--num-processes", type=int, help="train in N processes, one per GPU (CPU: gloo), started by torchrun; "
                        "each accumulates grad_accum / N micro-batches, so the global batch stays the recipe's")
    parser.add_argument("--fsdp", action="store_true", help="shard the model over the processes (FSDP2, full fine-tuning only)")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)

    overrides = {k: v for k, v in vars(args).items() if v is not None and k in {f.name for f in dataclasses.fields(FinetuneConfig)}}
    if args.baseline_recipe:
        overrides = {**BASELINE_RECIPE, **overrides}
    try:
        config = preset(args.preset, **overrides)
        processes = world_size() if is_worker() else 1 if args.num_processes is None else args.num_processes
        if is_worker() and args.num_processes not in (None, processes):
            raise ValueError(f"--num-processes {args.num_processes}, but this process is one of {processes} (WORLD_SIZE)")
        check_distributed(config, processes, args.fsdp)
        if processes > 1 and not is_worker() and not args.prepare_only:
            return _launch(args, config, argv)
        return _run(args, config)
    except ValueError as err:  # a bad file or setting: one line that names it (file:line), no traceback
        print(f"{parser.prog}: {err}", file=sys.stderr)
        return 2


def _prepare(args: argparse.Namespace, config: FinetuneConfig) -> tuple[FinetuneConfig, TrainingSet, dict, Path]:
    """(config, training set, validation report, output folder) of the command's run."""
    config, ts, report = plan_training(config, methods=args.methods, tasks=args.tasks, size=args.size, data=args.data)
    out = Path(args.out) if args.out else cache_dir() / "finetuned" / run_id(config, ts.data_hash, fsdp=args.fsdp)
    return config, ts, report, out


def _run(args: argparse.Namespace, config: FinetuneConfig) -> int:
    """The run in this process: the only one, or one of a distributed launch's (rank 0 prints and writes the files)."""
    config, ts, report, out = _prepare(args, config)
    main_process = int(os.environ.get("RANK", 0)) == 0
    if main_process:
        print(json.dumps({"validation": report}, indent=2))
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "validation_report.json", report)
        if args.prepare_only:
            write_training_jsonl(out / "train.jsonl", ts)
            print(out / "train.jsonl")
    if args.prepare_only:
        return 0
    out = finetune(ts, config, out, fsdp=args.fsdp)
    if is_worker():
        import torch.distributed

        if torch.distributed.is_initialized():  # the launch's processes leave together, the group closed
            torch.distributed.destroy_process_group()
    if main_process:
        print(out)
    return 0


def _launch(args: argparse.Namespace, config: FinetuneConfig, argv: list[str]) -> int:
    """Runs the command in args.num_processes processes (torchrun) and returns its exit status. The run is planned here
    first: a bad file or setting stops it before any process starts, and a finished run starts none."""
    config, ts, _, out = _prepare(args, config)
    if _finished(out / "manifest.json", run_id(config, ts.data_hash, fsdp=args.fsdp)):
        print(out)
        return 0
    command = launch_argv(argv, args.num_processes)
    print(shlex.join(command), file=sys.stderr, flush=True)
    return subprocess.call(command)


if __name__ == "__main__":  # each process of a distributed run: python -m fireact_bench.adapters.finetune ...
    sys.exit(main())
