"""Question sets, each as a list of docs {id, question, answer, kind}; `kind` picks the scoring rule.

Sources: FireAct's data directory (default), the Hugging Face hub (`source="hub"`), or a user's JSONL
file (`path=...`, lines {"question", "answer", "id"?}). lm-eval calls `load(...)` as a task's
`custom_dataset`, passing the task's dataset_kwargs and the `--metadata` JSON.
"""
from __future__ import annotations

import csv
import hashlib
import json
import random

from fireact_bench.harness.data.release import data_file
from fireact_bench.harness.settings import data_dir

FIREACT_HOTPOTQA_SEED, FIREACT_HOTPOTQA_N = 233, 500
MMLU_LETTERS = "ABCD"
KINDS = ("qa", "yesno", "choice")  # the scoring rules (agent/scoring.py)


def _doc(id_, question, answer, kind="qa", **extra) -> dict:
    return {"id": str(id_), "question": question.strip(), "answer": str(answer).strip(), "kind": kind, **extra}


def hotpotqa(subset: str = "fireact500", source: str = "fireact") -> list[dict]:
    """HotpotQA (distractor). Subsets of dev: `fireact500` (FireAct's evaluation questions), `dev` (all),
    `dev_rest` (dev without the 500: training questions that never meet the evaluation); `train` (hub)."""
    if subset not in ("fireact500", "dev", "dev_rest", "train"):
        raise ValueError(f"hotpotqa subset {subset!r}: known fireact500, dev, dev_rest, train")
    if source == "hub" or subset == "train":
        import datasets

        split = "train" if subset == "train" else "validation"
        rows = datasets.load_dataset("hotpotqa/hotpot_qa", "distractor", split=split)
        dev = [{"question": r["question"], "answer": r["answer"]} for r in rows]
    else:
        dev = json.loads(data_file("data/hotpotqa/dev.json").read_text(encoding="utf-8"))
    indices = list(range(len(dev)))
    if subset in ("fireact500", "dev_rest"):
        random.Random(FIREACT_HOTPOTQA_SEED).shuffle(indices)
        indices = indices[:FIREACT_HOTPOTQA_N] if subset == "fireact500" else sorted(indices[FIREACT_HOTPOTQA_N:])
    return [_doc(i, dev[i]["question"], dev[i]["answer"]) for i in indices]


def bamboogle(source: str = "fireact") -> list[dict]:
    if source == "hub":
        import datasets

        rows = list(datasets.load_dataset("chiayewken/bamboogle", split="test"))
    else:
        with open(data_file("data/bamboogle/test.csv"), newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    return [_doc(i, r["Question"], r["Answer"]) for i, r in enumerate(rows)]


def strategyqa(split: str = "dev", source: str = "fireact") -> list[dict]:
    """StrategyQA: FireAct's dev questions (evaluation) or its filtered train questions (teacher runs)."""
    files = {"dev": "strategyqa_dev.json", "train": "strategyqa_train_filtered.json"}
    if split not in files:
        raise ValueError(f"strategyqa split {split!r}: known {', '.join(files)}")
    if source == "hub":
        import datasets

        rows = list(datasets.load_dataset("ChilleD/StrategyQA", split="test" if split == "dev" else "train"))
    else:
        rows = json.loads(data_file(f"data/strategyqa/{files[split]}").read_text(encoding="utf-8"))
    return [_doc(r["qid"], r["question"], "yes" if r["answer"] else "no", kind="yesno") for r in rows]


def mmlu(subject: str = "all", split: str = "test", source: str = "fireact") -> list[dict]:
    """MMLU, one subject or all, split test (evaluation) or dev/val; the question carries its lettered options."""
    if split not in ("test", "dev", "val"):
        raise ValueError(f"mmlu split {split!r}: known test, dev, val")
    if source == "hub":
        import datasets

        rows = datasets.load_dataset("cais/mmlu", subject, split={"val": "validation"}.get(split, split))
        items = [(r.get("subject", subject), r["question"], r["choices"], MMLU_LETTERS[r["answer"]]) for r in rows]
    else:
        folder = data_dir() / "data" / "mmlu" / split
        files = sorted(folder.glob(f"*_{split}.csv")) if subject == "all" else [data_file(f"data/mmlu/{split}/{subject}_{split}.csv")]
        if not files:
            raise FileNotFoundError(f"no MMLU {split} files in {folder}")
        items = []
        for path in files:
            with open(path, newline="", encoding="utf-8") as fh:
                for line_no, row in enumerate(csv.reader(fh), 1):
                    if len(row) != 6 or row[5] not in MMLU_LETTERS:
                        raise ValueError(f"{path}:{line_no}: expected question, A, B, C, D, answer letter")
                    items.append((path.name[: -len(f"_{split}.csv")], row[0], row[1:5], row[5]))
    docs = []
    for i, (subj, question, choices, answer) in enumerate(items):
        options = "\n".join(f"{letter}. {choice}" for letter, choice in zip(MMLU_LETTERS, choices))
        docs.append(_doc(f"{subj}-{i}", f"{question}\n{options}", answer, kind="choice", subject=subj))
    return docs


def jsonl(path: str, kind: str = "qa") -> list[dict]:
    """A user's question file: one JSON object a line with "question" and "answer" (and optionally "id")."""
    docs, lines_of = [], {}
    try:
        with open(path, encoding="utf-8") as fh:
            rows = [(line_no, line) for line_no, line in enumerate(fh, 1) if line.strip()]
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start})") from None
    for line_no, line in rows:
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{line_no}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{line_no}: expected an object with \"question\" and \"answer\"")
        for key in ("question", "answer"):
            if not isinstance(row.get(key), (str, int, float)) or isinstance(row.get(key), bool) or not str(row[key]).strip():
                raise ValueError(f"{path}:{line_no}: field {key!r} is missing, empty or not text")
        if row.get("kind", kind) not in KINDS:
            raise ValueError(f"{path}:{line_no}: field 'kind' must be one of {', '.join(KINDS)}")
        doc = _doc(row.get("id", line_no), row["question"], row["answer"], kind=row.get("kind", kind))
        # the id seeds the tool noise and pairs the comparisons: it must name one question
        if doc["id"] in lines_of:
            raise ValueError(f"{path}:{line_no}: id {doc['id']!r} repeats line {lines_of[doc['id']]}")
        lines_of[doc["id"]] = line_no
        docs.append(doc)
    if not docs:
        raise ValueError(f"{path}: no questions")
    return docs


LOADERS = {"hotpotqa": hotpotqa, "bamboogle": bamboogle, "strategyqa": strategyqa, "mmlu": mmlu, "jsonl": jsonl}


def load_docs(dataset: str, **options) -> list[dict]:
    if dataset not in LOADERS:
        raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(LOADERS)}")
    return LOADERS[dataset](**options)


def docs_hash(docs: list[dict]) -> str:
    """Identifies a question set (ids, questions, answers) for comparability keys."""
    payload = json.dumps([[d["id"], d["question"], d["answer"]] for d in docs], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def load(dataset: str = "hotpotqa", **kwargs) -> dict:
    """lm-eval `custom_dataset` entry: kwargs are dataset_kwargs plus --metadata; unknown ones are ignored."""
    import datasets

    options = {k: kwargs[k] for k in ("subset", "split", "source", "subject", "path", "kind") if k in kwargs}
    if dataset == "jsonl" and "path" not in options:
        raise ValueError("the fireact_jsonl tasks need a question file: --metadata '{\"path\": \"questions.jsonl\"}'")
    docs = [{**doc, "dataset": dataset} for doc in load_docs(dataset, **options)]  # the prompt set to use
    return {"test": datasets.Dataset.from_list(docs)}
