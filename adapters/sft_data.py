"""Validated trajectories -> a fine-tuning set: method/task mix, nested sizes, rendering, loss masks.

An example is a list of segments (text, trained). The prompt and the observations are not trained by
default (the model never writes them); `train_on="all"` trains on every token as FireAct did.
Token ids are the concatenation of the segments tokenized one by one, so mask boundaries are exact.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from fireact_bench.adapters.trajectories import Trajectory
from fireact_bench.harness.agent.methods import ALPACA_TEMPLATE, chat_messages, turn_text
from fireact_bench.harness.files import write_json, write_lines
from fireact_bench.harness.study import METHOD_MIXES, TASK_MIXES

FORMATS = ("alpaca", "chat")
TRAIN_ON = ("model", "all")
IGNORE = -100  # label of tokens that carry no loss


@dataclass
class Example:
    question_id: str
    dataset: str
    method: str
    segments: list[tuple[str, bool]]  # (text, trained by default)

    @property
    def text(self) -> str:
        return "".join(text for text, _ in self.segments)


@dataclass
class TrainingSet:
    examples: list[Example]
    fmt: str
    composition: dict = field(default_factory=dict)

    @property
    def data_hash(self) -> str:
        body = json.dumps([self.fmt] + [e.segments for e in self.examples], ensure_ascii=False)
        return hashlib.sha256(body.encode()).hexdigest()


def select(trajs: list[Trajectory], size: int | None = None, methods: str = "react",
           tasks: str = "hotpotqa", seed: int = 0) -> list[Trajectory]:
    """`size` trajectories of the mix (None: all). One seeded permutation of the pool, cut at `size`,
    so for a fixed seed and mix the smaller sets are prefixes (subsets) of the larger ones."""
    if methods not in METHOD_MIXES or tasks not in TASK_MIXES:
        raise ValueError(f"methods must be one of {list(METHOD_MIXES)}, tasks one of {list(TASK_MIXES)}")
    pool = [t for t in trajs if t.method in METHOD_MIXES[methods] and t.dataset in TASK_MIXES[tasks]]
    pool.sort(key=lambda t: (t.key, t.content_hash()))  # input order must not change the sample
    random.Random(seed).shuffle(pool)
    if size is not None and size > len(pool):
        raise ValueError(f"asked for {size} trajectories of methods={methods} tasks={tasks}, only {len(pool)} exist")
    return pool[:size]


def render_alpaca(traj: Trajectory) -> list[tuple[str, bool]]:
    """FireAct's Alpaca template: instruction = question, response = Thought/Action/Observation lines."""
    segments = [(ALPACA_TEMPLATE.format(instruction=traj.question), False)]
    for step in traj.steps:
        segments.append((turn_text(step) + "\n", True))
        if step.observation is not None:
            segments.append((f"Observation: {step.observation}\n", False))
    return segments


def render_chat(traj: Trajectory, tokenizer) -> list[tuple[str, bool]]:
    """The model's chat template over methods.chat_messages; each assistant turn (with its end-of-turn
    marker, so the model learns to stop) is trained. Segments are differences of rendered prefixes."""
    messages = chat_messages(traj.question, traj.steps)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    segments, done = [], ""
    for i, message in enumerate(messages):
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
        after = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if message["role"] == "assistant":
            if not (before.startswith(done) and after.startswith(before)):
                raise ValueError("the chat template does not render message prefixes as text prefixes")
            segments += [(before[len(done):], False), (after[len(before):], True)]
            done = after
    segments.append((full[len(done):], False))
    return [(text, trained) for text, trained in segments if text]


def build_training_set(trajs: list[Trajectory], *, size: int | None = None, methods: str = "react",
                       tasks: str = "hotpotqa", seed: int = 0, fmt: str = "alpaca", tokenizer=None) -> TrainingSet:
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}")
    if fmt == "chat" and tokenizer is None:
        raise ValueError("the chat format needs the model's tokenizer (its chat template)")
    chosen = select(trajs, size, methods, tasks, seed)
    examples = [Example(t.question_id, t.dataset, t.method,
                        render_alpaca(t) if fmt == "alpaca" else render_chat(t, tokenizer)) for t in chosen]
    composition = {
        "size": len(examples), "methods": methods, "tasks": tasks, "seed": seed, "format": fmt,
        "by_method": dict(sorted(Counter(e.method for e in examples).items())),
        "by_dataset": dict(sorted(Counter(e.dataset for e in examples).items())),
    }
    return TrainingSet(examples, fmt, composition)


def tokenize(example: Example, tokenizer, max_len: int, train_on: str = "model") -> dict:
    """input_ids and labels (IGNORE where no loss), cut at max_len tokens."""
    if train_on not in TRAIN_ON:
        raise ValueError(f"train_on must be one of {TRAIN_ON}")
    input_ids, labels = [], []
    for text, trained in example.segments:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        input_ids += ids
        labels += ids if trained or train_on == "all" else [IGNORE] * len(ids)
    return {"input_ids": input_ids[:max_len], "labels": labels[:max_len]}


def tokenize_set(ts: TrainingSet, tokenizer, max_len: int, train_on: str = "model") -> tuple[list[dict], dict]:
    """Tokenized examples and a summary; examples left with no trained token after truncation are
    counted and dropped (they would only add a zero-loss step)."""
    rows, truncated, dropped = [], 0, 0
    for example in ts.examples:
        row = tokenize(example, tokenizer, max_len, train_on)
        full_len = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t, _ in example.segments)
        truncated += full_len > max_len
        if all(label == IGNORE for label in row["labels"]):
            dropped += 1
            continue
        rows.append(row)
    summary = {"examples": len(rows), "truncated": truncated, "dropped_no_target": dropped,
               "tokens": sum(len(r["input_ids"]) for r in rows),
               "trained_tokens": sum(sum(label != IGNORE for label in r["labels"]) for r in rows)}
    return rows, summary


def write_training_jsonl(path: str | os.PathLike, ts: TrainingSet) -> Path:
    """The rendered set, one example a line, with a sidecar <path>.meta.json (hash, composition); atomic."""
    write_lines(path, ({"question_id": e.question_id, "dataset": e.dataset, "method": e.method, "segments": e.segments}
                       for e in ts.examples))
    write_json(Path(path).with_name(Path(path).name + ".meta.json"), {"data_hash": ts.data_hash, "composition": ts.composition})
    return Path(path)
