"""One schema for teacher trajectories, FireAct's release imported into it, validation, and a safe JSONL store.

A trajectory is one question answered by one teacher with one method (ReAct, CoT, Reflexion):
a list of steps {thought, action, argument, observation}, the final answer and the reward.
FireAct's release (alpaca json, gpt jsonl) has known defects; `validate` names them and
`load_validated` counts every excluded trajectory under its reasons (nothing is dropped silently).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from fireact_bench.harness.agent.methods import Step, split_trajectory
from fireact_bench.harness.data import release
from fireact_bench.harness.files import write_text
from fireact_bench.harness.study import EPISODE_FINISHED, TEACHER_METHODS, TRAJECTORY_DATASETS

log = logging.getLogger(__name__)

ACTIONS = ("search", "finish")
# Phrases FireAct's Reflexion-style runs inject after 5 / 9 unsolved steps.
REFLEXION_MARKERS = ("let me do a reflection", "how to improve my strategy",
                     "I need to wrap up", "haven't solved the task within")
# Line patterns, searched in "\n" + text: a literal first character keeps the search linear and fast (a `^` with
# re.M is tried at every position; the old lazy `(.*?)\s*$` rescanned each run of spaces: quadratic time).
_REWARD_LINE = re.compile(rf"\nObservation: {EPISODE_FINISHED}, reward = ([^\n]*)")
_OPTION_LINE = re.compile(r"\n[A-D]\. ")

# The JSON type of each stored field that is not text (steps: Step.from_dict checks each step).
_FIELD_TYPES = {"seed": int, "answer": (str, type(None)), "reward": (bool, type(None)), "steps": list, "problems": list,
                "reasons": list}
_JSON_NAMES = {str: "text", int: "an integer", (str, type(None)): "text or null", (bool, type(None)): "true, false or null",
               list: "a list"}


@dataclass
class Trajectory:
    question_id: str
    dataset: str
    split: str
    method: str
    teacher: str
    search_backend: str
    seed: int  # sample index: the n-th trajectory of this teacher/method for this question
    question: str
    steps: list[Step]  # stored as {thought, action, argument, observation}
    answer: str | None
    reward: bool | None
    source: str  # file:line it came from
    problems: list[str] = field(default_factory=list)  # defects seen while parsing (not visible in steps)
    reasons: list[str] = field(default_factory=list)  # set by load_validated(keep_invalid=True)

    @property
    def key(self) -> str:
        """Identity in a JSONL store: a rerun with the same key is skipped, never duplicated."""
        return trajectory_key(self.question_id, self.method, self.teacher, self.search_backend, self.seed)

    def content_hash(self) -> str:
        body = json.dumps([self.question, [s.to_dict() for s in self.steps], self.answer], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(body.encode()).hexdigest()

    def to_dict(self) -> dict:
        return {**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
                "steps": [s.to_dict() for s in self.steps]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data) -> Trajectory:
        """A stored record. Every field must have its JSON type: a reward is true, false or null, so 0, 1.0,
        "False" or "yes" are rejected (with the file and line, by read_jsonl), never read as correct."""
        if not isinstance(data, dict):
            raise TypeError(f"a record is a JSON object, not {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING} - data.keys()
        if missing or data.keys() - names:
            raise ValueError(f"missing fields {sorted(missing)}, unknown fields {sorted(data.keys() - names)}")
        for name, value in data.items():
            expected = _FIELD_TYPES.get(name, str)
            if not isinstance(value, expected):
                raise TypeError(f"field {name!r} must be {_JSON_NAMES[expected]}, not {json.dumps(value)[:40]}")
        for name in ("problems", "reasons"):
            if not all(isinstance(item, str) for item in data.get(name, [])):
                raise TypeError(f"field {name!r} must be a list of text")
        return cls(**{**data, "steps": [Step.from_dict(s) for s in data["steps"]]})


def trajectory_key(question_id: str, method: str, teacher: str, search_backend: str, seed: int) -> str:
    return f"{question_id}:{method}:{teacher}:{search_backend}:{seed}"


def question_id(dataset: str, question: str) -> str:
    return hashlib.sha1(f"{dataset}\n{question.strip()}".encode()).hexdigest()[:16]


# ---------------------------------------------------------------- import of FireAct's release

def import_fireact(path: str | os.PathLike) -> list[Trajectory]:
    """FireAct's alpaca .json or gpt .jsonl as Trajectories (teacher gpt-4, search backend serpapi, split train).

    Dataset heuristic (the release has no dataset field):
      * mmlu: the question starts with "Question:" / "Single choice" or carries lettered option lines
        ("A. ..."); the alpaca files put those option lines at the start of the output, they are moved
        back into the question;
      * hotpotqa: any question of a hotpotqa* file, and in multitask files a question that also occurs in
        a sibling hotpotqa*.json(l) file (the multitask release is the HotpotQA release plus the others);
        without such a sibling, a True/False reward (the HotpotQA environment's EM) or a non yes/no answer;
      * strategyqa: the remaining multitask questions (yes/no answers, 1/0 rewards).
    Method: reflexion when a Reflexion marker phrase occurs, cot when no search was made, else react.
    """
    path = Path(path)
    records = list(_read_release(path))
    hotpot_questions = _sibling_hotpot_questions(path)
    seen: Counter = Counter()
    out = []
    for line, question, body in records:
        option_prefix, body = _split_option_prefix(body)
        if option_prefix:
            question = f"{question.rstrip()}\n{option_prefix.rstrip()}"
        traj = _parse_body(path, line, question, body, hotpot_questions)
        occurrence = (traj.question_id, traj.method)
        traj.seed = seen[occurrence]
        seen[occurrence] += 1
        out.append(traj)
    return out


def _read_release(path: Path) -> Iterable[tuple[int, str, str]]:
    """(line or item, question, trajectory text) from either release format."""
    if path.suffix == ".json":
        yield from release.alpaca_records(path)
    elif path.suffix == ".jsonl":
        for lineno, messages in release.gpt_records(path):
            # A record may start with the assistant (the question was lost in the release).
            question = messages[0]["content"] if messages and messages[0]["role"] == "user" else ""
            turns = messages[1:] if question else messages
            yield lineno, question, "".join(m["content"].rstrip("\n") + "\n" for m in turns)
    else:
        raise ValueError(f"{path}: unknown FireAct format (expected .json alpaca or .jsonl gpt)")


def _split_option_prefix(body: str) -> tuple[str, str]:
    """Lettered option lines that precede the first Thought (alpaca MMLU records) and the rest."""
    start = body.find("Thought:")
    prefix = body[:start] if start > 0 else ""
    if prefix and _OPTION_LINE.search("\n" + prefix):
        return prefix, body[start:]
    return "", body


def _sibling_hotpot_questions(path: Path) -> set[str] | None:
    if path.name.startswith("hotpotqa"):
        return None
    siblings = sorted(path.parent.glob(f"hotpotqa*{path.suffix}"))
    questions = set()
    for sibling in siblings:
        questions |= {q.strip() for _, q, _ in _read_release(sibling)}
    return questions if siblings else None


def _infer_dataset(path: Path, question: str, answer: str | None, reward_text: str | None,
                   hotpot_questions: set[str] | None) -> str:
    if question.lstrip().startswith(("Question:", "Single choice")) or _OPTION_LINE.search("\n" + question):
        return "mmlu"
    if path.name.startswith("hotpotqa"):
        return "hotpotqa"
    if hotpot_questions is not None:
        return "hotpotqa" if question.strip() in hotpot_questions else "strategyqa"
    if reward_text in ("True", "False") or (answer or "").strip().lower() not in ("yes", "no"):
        return "hotpotqa"
    return "strategyqa"


def _infer_method(body: str, steps: list[Step]) -> str:
    if any(marker in body for marker in REFLEXION_MARKERS):
        return "reflexion"
    return "react" if any(s.action == "search" for s in steps) else "cot"


def _parse_reward(text: str) -> bool | None:
    value = text.strip().rstrip(".").strip()
    if value in ("True", "1"):
        return True
    if value in ("False", "0"):
        return False
    return None


def _parse_body(path: Path, line: int, question: str, body: str, hotpot_questions) -> Trajectory:
    problems = []
    rewards = [reward.strip() for reward in _REWARD_LINE.findall("\n" + body)]
    if len(set(rewards)) > 1:
        problems.append("multiple_reward")
    reward = _parse_reward(rewards[-1]) if rewards else None
    steps = []
    for step in split_trajectory(body):
        if step.errors:
            problems.append("malformed_action")
        step.errors = []
        steps.append(step)
    finishes = [s for s in steps if s.action == "finish"]
    answer = finishes[-1].argument if finishes else None
    dataset = _infer_dataset(path, question, answer, rewards[-1] if rewards else None, hotpot_questions)
    return Trajectory(
        question_id=question_id(dataset, question), dataset=dataset, split="train",
        method=_infer_method(body, steps), teacher="gpt-4", search_backend="serpapi", seed=0,
        question=question, steps=steps, answer=answer, reward=reward,
        source=f"{path}:{line}", problems=sorted(set(problems)))


# ---------------------------------------------------------------- validation

def validate(traj: Trajectory) -> list[str]:
    """Reasons this trajectory is unfit for fine-tuning ([] when fit). Duplicates need the whole set: load_validated."""
    if not traj.question.strip() or not traj.steps:
        return ["empty"]
    reasons = set(traj.problems)
    # GPT-4 sometimes wrote "Action: finish[..]" on its thought line and then again as the action.
    finishes = sum(s.action == "finish" for s in traj.steps)
    finishes += sum("Action: finish[" in (s.thought or "") for s in traj.steps)
    if finishes == 0:
        reasons.add("no_finish")
    elif finishes > 1 or traj.steps[-1].action != "finish":
        reasons.add("multiple_finish")
    if any(s.action not in ACTIONS or s.argument is None for s in traj.steps):
        reasons.add("malformed_action")
    if traj.reward is None:
        reasons.add("missing_reward")
    elif traj.reward is not True:  # only True is correct (a stored reward other than true/false/null fails to load)
        reasons.add("incorrect")
    # a training set selects by method and dataset: any other would be dropped there while counted as kept here
    if traj.method not in TEACHER_METHODS:
        reasons.add("unknown_method")
    if traj.dataset not in TRAJECTORY_DATASETS:
        reasons.add("unknown_dataset")
    return sorted(reasons)


def load_validated(paths: Iterable[str | os.PathLike] | str | os.PathLike, keep_invalid: bool = False
                   ) -> tuple[list[Trajectory], dict]:
    """Trajectories of FireAct release files or our JSONL stores, validated.

    The report counts every trajectory: total == kept + excluded, and each excluded one is counted under
    each of its reasons (by_reason). keep_invalid keeps them all, with `reasons` filled in.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    report = {"files": [], "total": 0, "kept": 0, "excluded": 0, "by_reason": Counter(),
              "kept_by_dataset": Counter(), "kept_by_method": Counter()}
    seen: set[str] = set()
    kept = []
    for path in paths:
        trajs = load_any(path)
        report["files"].append(str(path))
        for traj in trajs:
            reasons = validate(traj)
            digest = traj.content_hash()
            if digest in seen:
                reasons = sorted(set(reasons) | {"duplicate"})
            seen.add(digest)
            traj.reasons = reasons
            report["total"] += 1
            report["by_reason"].update(reasons)
            if reasons:
                report["excluded"] += 1
            else:
                report["kept"] += 1
                report["kept_by_dataset"][traj.dataset] += 1
                report["kept_by_method"][traj.method] += 1
            if keep_invalid or not reasons:
                kept.append(traj)
    for name in ("by_reason", "kept_by_dataset", "kept_by_method"):
        report[name] = dict(sorted(report[name].items()))
    return kept, report


def load_any(path: str | os.PathLike) -> list[Trajectory]:
    """Our JSONL store (its first record has "question_id") or one of FireAct's release files; never empty."""
    path = Path(path)
    if path.suffix == ".jsonl":
        with open(path, "rb") as fh:
            first = next((line for line in fh if line.strip()), b"")
        trajs = read_jsonl(path) if b'"question_id"' in first else import_fireact(path)
    else:
        trajs = import_fireact(path)
    if not trajs:
        raise ValueError(f"{path}: no trajectory records")
    return trajs


# ---------------------------------------------------------------- JSONL store

def read_jsonl(path: str | os.PathLike) -> list[Trajectory]:
    out = []
    for lineno, record in release.jsonl_records(Path(path)):
        try:
            out.append(Trajectory.from_dict(record))
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}:{lineno}: not a trajectory record ({err})") from None
    return out


def write_jsonl(path: str | os.PathLike, trajs: Iterable[Trajectory]) -> Path:
    """Replace the whole file atomically (temp file + os.replace): readers never see half a file."""
    return write_text(path, "".join(traj.to_json() + "\n" for traj in trajs))


def stored_keys(path: str | os.PathLike) -> set[str]:
    """The keys in a JSONL store (none when there is no file yet), read after repairing its last line.

    A crash (a kill, a full disk) can cut the last line short, without its newline: it is cut away (or, when it
    is a whole record, given its newline) so that a rerun continues instead of failing to read the store."""
    path = Path(path)
    if not path.exists():
        return set()
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        start = data.rfind(b"\n") + 1
        try:
            Trajectory.from_dict(json.loads(data[start:]))
            whole = True
        except (ValueError, TypeError):  # json and UTF-8 errors are ValueErrors
            whole = False
        with open(path, "r+b") as fh:
            if whole:
                fh.seek(0, os.SEEK_END)
                fh.write(b"\n")
            else:
                log.warning("%s: cut its last line, torn by a crash (%d bytes)", path, len(data) - start)
                fh.truncate(start)
    return {t.key for t in read_jsonl(path)}


def append_jsonl(path: str | os.PathLike, trajs: Iterable[Trajectory]) -> int:
    """Append the trajectories whose key is not yet in the file (fsync'd); returns how many were written.
    Resumable: a rerun after a crash skips what is already stored (see stored_keys)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    present = stored_keys(path)
    written = 0
    with open(path, "a", encoding="utf-8") as fh:
        for traj in trajs:
            if traj.key in present:
                continue
            fh.write(traj.to_json() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
            present.add(traj.key)
            written += 1
    return written
