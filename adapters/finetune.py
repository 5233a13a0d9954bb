"""Fine-tune a backbone on trajectories (LoRA, QLoRA or full) with a manifest that makes runs reproducible.

`finetune(data, config, out_dir)` writes out_dir/model (adapter or full model), out_dir/checkpoints
(resumable) and out_dir/manifest.json (atomic, written last). A finished run with the same config and
data hash is not retrained. `main(argv)`: FireAct release -> validation report -> training set -> run.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import random
import resource
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fireact_bench.adapters.sft_data import IGNORE, TrainingSet, build_training_set, tokenize_set, write_training_jsonl
from fireact_bench.adapters.trajectories import Trajectory, load_validated
from fireact_bench.harness.data.release import data_file
from fireact_bench.harness.files import write_json
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
    gradient_checkpointing: bool = True
    train_on: str = "model"  # model: thoughts and actions only; all: every token (FireAct's original)
    # alpaca (FireAct's template) | chat (the model's chat template) | auto: chat when the model has a
    # template, as the `ft` method decides at evaluation, so training and evaluation formats agree
    fmt: str = "auto"
    save_steps: int = 50
    max_steps: int = -1  # > 0 caps the run (smoke tests); -1: the epochs decide


# FireAct's 7B recipe (Llama-2 / CodeLlama LoRA in the paper's code).
PRESETS = {
    "fireact-7b": dict(method="lora", r=8, alpha=16, dropout=0.05, target_modules=["q_proj", "v_proj"], lr=3e-4),
    # The embedded 135M backbone: more capacity per parameter (all linear layers), larger lr, 2 epochs.
    "small": dict(method="lora", r=16, alpha=32, dropout=0.05, target_modules="all-linear", lr=1e-3, epochs=2),
}


def preset(name: str, **overrides) -> FinetuneConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    return FinetuneConfig(**{**PRESETS[name], **overrides})


def run_id(config: FinetuneConfig, data_hash: str) -> str:
    body = json.dumps([dataclasses.asdict(config), data_hash], sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


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
             callbacks: list | None = None) -> Path:
    """Train and return out_dir. `data`: a TrainingSet, or trajectories built into one with size/methods/tasks.

    Reruns: a finished run with the same config and data hash returns at once; an interrupted one
    resumes from its last checkpoint; a finished run of another config in out_dir is an error.
    """
    import torch
    from transformers import AutoTokenizer, Trainer, TrainingArguments, set_seed

    out_dir = Path(out_dir)
    base_path = resolve_model(config.base_model)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    config = dataclasses.replace(config, fmt=resolve_fmt(config.fmt, tokenizer))
    if not isinstance(data, TrainingSet):
        data = build_training_set(data, size=size, methods=methods, tasks=tasks, seed=config.seed,
                                  fmt=config.fmt, tokenizer=tokenizer)
    rid = run_id(config, data.data_hash)
    manifest_path = out_dir / "manifest.json"
    if manifest_path.exists():
        previous = json.loads(manifest_path.read_text())
        if previous.get("run_id") == rid and previous.get("finished"):
            return out_dir
        raise FileExistsError(f"{out_dir} holds another finished run ({previous.get('run_id')}); use another out_dir")

    rows, token_summary = tokenize_set(data, tokenizer, config.max_len, config.train_on)
    if not rows:
        raise ValueError("no training example has a trained token")
    random.seed(config.seed)
    set_seed(config.seed)
    model = _load_model(config, base_path)
    ckpt_dir = out_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    marker = ckpt_dir / "run_id"  # checkpoints of another config must never be resumed
    if marker.exists() and marker.read_text() != rid:
        raise FileExistsError(f"{ckpt_dir} holds checkpoints of another run ({marker.read_text()}); use another out_dir")
    marker.write_text(rid)
    resume = _resumable_checkpoint(ckpt_dir)
    cuda = torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=str(ckpt_dir), per_device_train_batch_size=config.micro_batch,
        gradient_accumulation_steps=config.grad_accum, learning_rate=config.lr, num_train_epochs=config.epochs,
        max_steps=config.max_steps, lr_scheduler_type="cosine", warmup_steps=0, logging_steps=1,
        save_steps=config.save_steps, save_total_limit=2, seed=config.seed, data_seed=config.seed,
        bf16=cuda, use_cpu=not cuda, report_to=[], remove_unused_columns=False,
        gradient_checkpointing=config.gradient_checkpointing,
        # non-reentrant checkpointing works with frozen embeddings (LoRA) without extra hooks
        gradient_checkpointing_kwargs={"use_reentrant": False}, dataloader_num_workers=0, disable_tqdm=True,
        include_num_input_tokens_seen="non_padding")
    clock = _clock()
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=_Padded(tokenizer.pad_token_id
                      if tokenizer.pad_token_id is not None else tokenizer.eos_token_id), callbacks=[clock, *(callbacks or [])])
    trainer.train(resume_from_checkpoint=resume)
    wall = clock.total()

    staging = out_dir / "model.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    shutil.rmtree(out_dir / "model", ignore_errors=True)
    os.replace(staging, out_dir / "model")
    steps = trainer.state.global_step
    losses = [{"step": e["step"], "loss": e["loss"]} for e in trainer.state.log_history if "loss" in e]
    manifest = {
        "run_id": rid, "finished": True, "output": "adapter" if config.method != "full" else "full_model",
        "base_model": config.base_model, "base_model_path": base_path,
        "base_fingerprint": model_fingerprint(config.base_model),
        "data_hash": data.data_hash, "composition": data.composition, "tokens": token_summary,
        "config": dataclasses.asdict(config),
        # the whole run's history: a resumed trainer's log holds the steps before its checkpoint too (its own
        # training_loss averages only the steps run since the resume, and is 0.0 when none were left)
        "loss_history": losses, "train_loss": sum(e["loss"] for e in losses) / len(losses) if losses else None,
        "global_step": steps,
        "tokens_seen": trainer.state.num_input_tokens_seen,  # non-padding, resumed part included
        "resumed_from": Path(resume).name if resume else None,
        "wall_time_s": round(wall, 2), "seconds_per_step": round(wall / max(1, steps), 3),
        # ru_maxrss is KiB on Linux: the peak of this whole process, model loading included
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
        "device": "cuda" if cuda else "cpu", "versions": versions(), "argv": sys.argv,
    }
    write_json(manifest_path, manifest)
    return out_dir


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
    for name, kind in (("r", int), ("alpha", int), ("lr", float), ("epochs", float), ("micro_batch", int),
                       ("grad_accum", int), ("max_len", int), ("seed", int), ("max_steps", int), ("save_steps", int)):
        parser.add_argument("--" + name.replace("_", "-"), type=kind)
    parser.add_argument("--out", help="output folder (default: <cache>/finetuned/<run id>)")
    parser.add_argument("--prepare-only", action="store_true", help="write the training JSONL and the report, no training")
    args = parser.parse_args(argv)

    overrides = {k: v for k, v in vars(args).items() if v is not None and k in {f.name for f in dataclasses.fields(FinetuneConfig)}}
    try:
        return _run(args, preset(args.preset, **overrides))
    except ValueError as err:  # a bad file or setting: one line that names it (file:line), no traceback
        print(f"{parser.prog}: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, config: FinetuneConfig) -> int:
    config, ts, report = plan_training(config, methods=args.methods, tasks=args.tasks, size=args.size, data=args.data)
    print(json.dumps({"validation": report}, indent=2))
    out = Path(args.out) if args.out else cache_dir() / "finetuned" / run_id(config, ts.data_hash)
    out.mkdir(parents=True, exist_ok=True)
    if args.prepare_only:
        write_training_jsonl(out / "train.jsonl", ts)
        write_json(out / "validation_report.json", report)
        print(out / "train.jsonl")
        return 0
    write_json(out / "validation_report.json", report)
    print(finetune(ts, config, out))
    return 0
