"""The one reader of FireAct's release (github.com/anchen1011/FireAct at FIREACT_COMMIT).

Files are read from the data directory setting (harness/settings.py) and, when absent there, fetched
once from the pinned commit into the cache. Every reader here names the file and line (or item) of a
record it cannot read.

  questions      data/hotpotqa/dev.json, data/bamboogle/test.csv, data/strategyqa/*.json, data/mmlu/<split>/*.csv
  prompts        prompts/<method>_<dataset>[_google].txt
  fine-tuning    data/finetune/alpaca_format/*.json ({instruction, input, output}),
                 data/finetune/gpt_format/*.jsonl ({"messages": [...]})
  evaluation     trajs/*.json ({question id: {"gt", "traj", ...}})
"""
from __future__ import annotations

import glob
import json
import os
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from fireact_bench.harness.settings import data_dir

# The FireAct commit the project's numbers refer to (see SOURCE.md in the shared data).
FIREACT_COMMIT = "94c6189f04b10fccae6bcd97a4632d6119266899"
FIREACT_RAW = f"https://raw.githubusercontent.com/anchen1011/FireAct/{FIREACT_COMMIT}/"


def data_file(relpath: str) -> Path:
    """One file of FireAct's release, fetched from the pinned commit on first use when not present locally."""
    path = data_dir() / relpath
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    url = FIREACT_RAW + relpath
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            out.write(response.read())
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise FileNotFoundError(
            f"{relpath} is not in the FireAct data directory {data_dir()} and could not be fetched "
            f"from {url} ({err}); set FIREACT_DATA_DIR to a copy of FireAct's data"
        ) from err
    os.replace(tmp, path)
    return path


def read_json(path: Path):
    data = Path(path).read_bytes()
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None


def jsonl_records(path: Path) -> Iterator[tuple[int, object]]:
    """(line number, JSON value) of each non-blank line of a JSONL file; a line that is not UTF-8 JSON is a
    ValueError that names the file and line."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                value = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not UTF-8 text (byte {err.start} of the line)") from None
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({err.msg}, column {err.colno})") from None
            yield lineno, value


def prompt(stem: str) -> str:
    """A few-shot prompt file's text, e.g. prompt("react_hotpotqa_google")."""
    return data_file(f"prompts/{stem}.txt").read_text(encoding="utf-8")


# -- fine-tuning trajectories ----------------------------------------------------------------------------

def alpaca_records(path: Path) -> Iterator[tuple[int, str, str]]:
    """(item index, question, trajectory text) of an alpaca-format file."""
    rows = read_json(path)
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list of {{instruction, input, output}}")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not {"instruction", "output"} <= row.keys():
            raise ValueError(f"{path}: item {i} is not an {{instruction, input, output}} record")
        if not all(isinstance(row.get(k, ""), str) for k in ("instruction", "input", "output")):
            raise ValueError(f"{path}: item {i}: instruction, input and output must be text")
        yield i, row["instruction"] + (f"\n{row['input']}" if row.get("input") else ""), row["output"]


def gpt_records(path: Path) -> Iterator[tuple[int, list[dict]]]:
    """(line number, messages) of a gpt-format (OpenAI chat fine-tuning) JSONL file."""
    for lineno, record in jsonl_records(path):
        messages = record.get("messages") if isinstance(record, dict) else None
        if not isinstance(messages, list) or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages):
            raise ValueError(f"{path}:{lineno}: not a {{\"messages\": [...]}} record: messages must be a list of "
                             "{role, content} objects with text content")
        yield lineno, messages


def finetune_files() -> list[Path]:
    root = data_dir()
    return [Path(p) for pattern in ("data/finetune/gpt_format/*.jsonl", "data/finetune/alpaca_format/*.json")
            for p in sorted(glob.glob(str(root / pattern)))]


# -- evaluation trajectories -----------------------------------------------------------------------------

def eval_trajectories(path: Path) -> dict:
    """FireAct's trajs/*.json: {question id: {"gt", "traj": transcript or messages, ...}}."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected FireAct's {{id: record}} trajectory file")
    for qid, rec in data.items():
        if not isinstance(rec, dict) or "traj" not in rec:
            raise ValueError(f"{path}: record {qid!r} has no 'traj'")
    return data


def eval_files() -> list[Path]:
    return [Path(p) for p in sorted(glob.glob(str(data_dir() / "trajs" / "*.json")))]


def transcript_of(traj) -> str:
    """A recorded trajectory as one text: a transcript string, or chat messages joined by newlines."""
    return traj if isinstance(traj, str) else "\n".join(m["content"] for m in traj)


# FireAct's evaluation files are named <dataset>_<split>_<start>_<end>_...: the question set they ran on.
EVAL_FILE_NAME = re.compile(r"^(?P<dataset>[a-z]+)_(?P<split>[a-z]+)_(?P<start>\d+)_(?P<end>\d+)_")


def all_transcripts(root: Path | None = None) -> Iterator[str]:
    """Every transcript in FireAct's release (fine-tuning and evaluation), in a fixed file order."""
    root = Path(root or data_dir())
    for path in sorted(glob.glob(str(root / "data/finetune/gpt_format/*.jsonl"))):
        for _, messages in gpt_records(Path(path)):
            yield "\n".join(m["content"] for m in messages)
    for path in sorted(glob.glob(str(root / "data/finetune/alpaca_format/*.json"))):
        for _, _, output in alpaca_records(Path(path)):
            yield output
    for path in sorted(glob.glob(str(root / "trajs/*.json"))):
        for record in eval_trajectories(Path(path)).values():
            yield transcript_of(record["traj"])
