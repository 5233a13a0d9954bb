"""Fine-tune a backbone on trajectories (LoRA, QLoRA or full) with a manifest that makes runs reproducible.

`finetune(data, config, out_dir)` writes out_dir/model (adapter or full model), out_dir/checkpoints
(resumable) and out_dir/manifest.json (atomic, written last). A finished run with the same config and
data hash is not retrained. `main(argv)`: FireAct release -> validation report -> training set -> run.
`training_speed(config)`: tokens/s of a few steps, to compare recipes (BASELINE_RECIPE is the one before the
speed levers: the same losses, 2.5-3x slower on CPU).
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
             callbacks: list | None = None) -> Path:
    """Train and return out_dir. `data`: a TrainingSet, or trajectories built into one with size/methods/tasks.

    Reruns: a finished run with the same config and data hash returns at once; an interrupted one
    resumes from its last checkpoint; a finished run of another config in out_dir is an error.
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
        bf16=cuda or config.cpu_bf16, use_cpu=not cuda, report_to=[], remove_unused_columns=False,
        use_cache=False,  # a KV cache would also let packed examples see each other
        gradient_checkpointing=config.gradient_checkpointing,
        # non-reentrant checkpointing works with frozen embeddings (LoRA) without extra hooks
        gradient_checkpointing_kwargs={"use_reentrant": False}, dataloader_num_workers=0, disable_tqdm=True,
        # a packed batch has no padding and no attention mask: all its tokens are the non-padding ones
        include_num_input_tokens_seen="all" if config.packing else "non_padding")
    clock = _clock()
    trainer = _trainer_class(config)(model=model, args=args, train_dataset=rows, data_collator=_collator(config, tokenizer),
                                     callbacks=[clock, *(callbacks or [])])
    with _fp32_matmul(config.fp32_matmul, cuda) as matmul:
        trainer.train(resume_from_checkpoint=resume)
    wall = clock.total()

    staging = out_dir / "model.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    shutil.rmtree(out_dir / "model", ignore_errors=True)
    os.replace(staging, out_dir / "model")
    steps = trainer.state.global_step
    # per step: its loss, and the training's running time and tokens at its end (for rates that skip warm-up)
    losses = [{"step": e["step"], "loss": e["loss"], "wall_time_s": e.get("wall_time_s"), "tokens_seen": e.get("num_input_tokens_seen")}
              for e in trainer.state.log_history if "loss" in e]
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
        "tokens_per_s": round(trainer.state.num_input_tokens_seen / wall, 1) if wall > 0 else None,
        # how this run computed (config holds what was asked): the matmul check's measured error and decision,
        # the attention that separates packed examples, the allocator (tcmalloc when make preloads it)
        "recipe": {"packing": config.packing, "label_only_logits": config.label_only_logits,
                   "gradient_checkpointing": config.gradient_checkpointing, "precision": "bf16" if cuda or config.cpu_bf16 else "fp32",
                   "fp32_matmul": matmul, "attn_implementation": getattr(model.config, "_attn_implementation", None),
                   "allocator": "tcmalloc" if "tcmalloc" in os.environ.get("LD_PRELOAD", "") else "default",
                   "torch_threads": torch.get_num_threads()},
        # ru_maxrss is KiB on Linux: the peak of this whole process, model loading included
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
        "device": "cuda" if cuda else "cpu", "versions": versions(), "argv": sys.argv,
    }
    write_json(manifest_path, manifest)
    return out_dir


def training_speed(config: FinetuneConfig, out_dir: str | os.PathLike, *, steps: int = 5, size: int | None = None,
                   methods: str = "react", tasks: str = "hotpotqa", data: list | None = None) -> dict:
    """Training speed of `config` over `steps` optimizer steps on the mix's FireAct trajectories (the first `size`
    of its seeded order; default: the steps' worth), a fresh run in out_dir: tokens/s and s/step from the end of
    step 1 to the end of the last (step 1 warms up), and the losses, to set recipes side by side, e.g.
    training_speed(preset("small"), a) against training_speed(preset("small", **BASELINE_RECIPE), b).
    peak_rss_mib is the process's: run each recipe in a process of its own to compare memory."""
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
    for name, kind in (("r", int), ("alpha", int), ("lr", float), ("epochs", float), ("micro_batch", int),
                       ("grad_accum", int), ("max_len", int), ("seed", int), ("max_steps", int), ("save_steps", int)):
        parser.add_argument("--" + name.replace("_", "-"), type=kind)
    parser.add_argument("--baseline-recipe", action="store_true", help="without the speed levers (same losses, slower)")
    parser.add_argument("--cpu-bf16", action="store_true", default=None, help="bf16 autocast on CPU (faster, shifts the loss)")
    parser.add_argument("--out", help="output folder (default: <cache>/finetuned/<run id>)")
    parser.add_argument("--prepare-only", action="store_true", help="write the training JSONL and the report, no training")
    args = parser.parse_args(argv)

    overrides = {k: v for k, v in vars(args).items() if v is not None and k in {f.name for f in dataclasses.fields(FinetuneConfig)}}
    if args.baseline_recipe:
        overrides = {**BASELINE_RECIPE, **overrides}
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
