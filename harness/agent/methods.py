"""Agent methods. A method is a prompt plus a parser; nothing else.

- io, cot:        one generation, few-shot (FireAct's prompts), no tool.
- react:          Thought / Action: search[q] / Observation ... / Action: finish[a], few-shot.
- reflexion:      react, and the agent is told to reflect at step 5 and to wrap up at step 9 (as FireAct).
- ft:             the fine-tuned format: zero-shot, FireAct's Alpaca template (base models) or the model's
                  chat template (chat models), with the same Thought/Action/Observation turns.

The parser is strict about what counts as an action (`search[...]` or `finish[...]`) and tolerant of
everything else: every deviation is named in `Step.errors` and counted, none raises.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from fireact_bench.harness.data import release
from fireact_bench.harness.files import digest
from fireact_bench.harness.study import PROMPT_SET, REFLECT_AT, SINGLE_METHODS

ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
# How FireAct's prompts (few-shot) and fine-tuning data (ft) introduce a question of each dataset.
QUESTION_PREFIX = {"strategyqa": {"fewshot": "Yes or no: ", "ft": ""}, "mmlu": {"fewshot": "Single choice: ", "ft": "Question: "}}
# Few-shot prompt files of FireAct's release per method ({} is the prompt set); reflexion uses ReAct's examples.
PROMPT_FILES = {"io": "io_{}", "cot": "cot_{}", "react": "react_{}_google", "reflexion": "react_{}_google"}


# The parser reads a lower-cased copy of the text with a newline put in front (see _lowered). Every search is
# case-sensitive and starts with a literal, so the regex engine skips ahead at C speed: linear time, also on
# megabytes of text. (`^\s*Action` with re.IGNORECASE | re.MULTILINE, the old form, rescanned the rest of the
# text from every line start: 9 s for 32 kB of blank lines.)
def _label(names: str) -> re.Pattern:
    """`Name:` or `Name 3:` (group 1: the name) at the start of a line, after spaces (never across lines)."""
    return re.compile(rf"\n[^\S\n]*+({names})(?:[^\S\n]*\d+)?[^\S\n]*:")


_THOUGHT, _ACTION_LABEL = _label("thought"), _label("action")
_ANY_LABEL, _AFTER_ACTION = _label("thought|action|observation"), _label("thought|observation")
# `search[` / `finish[` as a word (no word character before it): the check comes after the literal, so the search is literal-first
_ACTIONS = [re.compile(rf"{name}\[(?<!\w{name}\[)") for name in ("search", "finish")]


def _lowered(text: str) -> str:
    """A newline, then the text lower-cased char by char (U+0130 is the one char that lowers to two). Index i of
    the text is index i + 1 here, so a label match, which starts at the newline before its line, starts at its
    line's index in the text."""
    return "\n" + text.replace("\u0130", "I").lower()


@dataclass
class Step:
    thought: str = ""
    action: str | None = None  # "search" | "finish" | None (no valid action)
    argument: str | None = None
    observation: str | None = None
    errors: list[str] = field(default_factory=list)

    RECORD_FIELDS = ("thought", "action", "argument", "observation")

    def to_dict(self) -> dict:
        """The stored form of a step (a trajectory record's `steps` item); errors are the parser's, not stored."""
        return {name: getattr(self, name) for name in self.RECORD_FIELDS}

    @classmethod
    def from_dict(cls, data) -> Step:
        if not isinstance(data, dict):
            raise TypeError(f"a step is an object with {', '.join(cls.RECORD_FIELDS)}, not {type(data).__name__}")
        unknown = set(data) - set(cls.RECORD_FIELDS)
        if unknown:
            raise TypeError(f"a step has unknown fields {sorted(unknown)}")
        for name in cls.RECORD_FIELDS:
            value = data.get(name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"step field {name!r} must be text or null, not {type(value).__name__}")
        return cls(thought=data.get("thought") or "", action=data.get("action"), argument=data.get("argument"),
                   observation=data.get("observation"))

    def as_text(self) -> str:
        """The step as FireAct writes it: what the model wrote, then the observation."""
        return turn_text(self) + (f"\nObservation: {self.observation}" if self.observation is not None else "")


def turn_text(step: Step) -> str:
    """What the model wrote in one turn, in canonical form (also what fine-tuning trains on)."""
    lines = [f"Thought: {step.thought}"] if step.thought else []
    if step.action:
        lines.append(f"Action: {step.action}[{step.argument}]")
    return "\n".join(lines)


def _next_action(text: str, low: str, pos: int = 0) -> tuple[str, str, int, int] | None:
    """The first `search[...]` or `finish[...]` in text[pos:] (low = _lowered(text)): (action, argument, start, end).

    The argument runs to the last `]` of the line that holds its first `]`: FireAct's parser takes the action
    line up to its last `]`, so `search[the film [2004] director]` keeps its inner brackets (and
    `search[a] or search[b]` reads as one search for `a] or search[b`, as FireAct reads it). An argument may
    span lines when its first line has no `]`."""
    found = [match for pattern in _ACTIONS if (match := pattern.search(low, pos + 1))]
    if not found:
        return None
    first = min(found, key=lambda match: match.start())
    start, open_ = first.start() - 1, first.end() - 1
    close = text.find("]", open_)
    if close < 0:  # no `]` after the first `search[`: none after any later one either
        return None
    line_end = text.find("\n", close)
    close = text.rfind("]", close, len(text) if line_end < 0 else line_end)
    return low[first.start():first.end() - 1], text[open_:close], start, close + 1


def _strip_thought_label(text: str) -> str:
    text = text.strip()
    label = _THOUGHT.match(_lowered(text)) if text[:7].lower() == "thought" else None
    return text[label.end() - 1:].strip() if label else text


def parse_turn(text: str, *, truncated: bool = False) -> Step:
    """One model turn ("Thought: ...\\nAction: search[q]") -> Step. Never raises; linear in len(text)."""
    low = _lowered(text)
    label = _ACTION_LABEL.search(low)
    return _parse_turn(text, low, (label.start(), label.end() - 1) if label else None, truncated)


def _parse_turn(text: str, low: str, label: tuple[int, int] | None, truncated: bool = False) -> Step:
    """parse_turn, given where the turn's first Action label starts and ends in text (None: it has none)."""
    step = Step()
    if truncated:
        step.errors.append("runaway")  # hit the token limit before a stop sequence
    if not text.strip():
        step.errors.append("empty")
        return step
    step.thought = _strip_thought_label(text[:label[0]] if label else text)
    first = _next_action(text, low, label[1] if label else 0)
    if first is None:
        step.errors.append("malformed_action" if label else "missing_action")
        return step
    action, argument, start, end = first
    if not label:
        step.errors.append("missing_action_label")
        step.thought = _strip_thought_label(text[:start])
    step.action, step.argument = action, argument.strip()
    if _next_action(text, low, end):
        step.errors.append("multiple_actions")
    if text[end:].strip() and step.action == "finish":
        step.errors.append("text_after_finish")
    if step.action == "search" and not step.argument:
        step.errors.append("empty_search")
        step.action = None
    return step


def split_trajectory(text: str) -> list[Step]:
    """A whole transcript (Thought/Action/Observation lines, FireAct's format) -> steps with observations.

    A step starts at each line that starts with a Thought label; its turn ends at its first Observation label.
    One pass: each search starts where the previous one ended and looks only for the labels that can come next."""
    text = text.strip()
    low = _lowered(text)
    found = [[0, None, None]]  # per step: where it starts, its Action label, its Observation label
    pattern, pos = _ANY_LABEL, 0
    while label := pattern.search(low, pos):
        name, pos = label.group(1), label.end()
        if name == "thought":
            if label.start() > found[-1][0]:
                found.append([label.start(), None, None])
            pattern = _ANY_LABEL
        elif name == "action":
            found[-1][1], pattern = label, _AFTER_ACTION
        else:
            found[-1][2], pattern = label, _THOUGHT
    steps = []
    for (start, action, observation), end in zip(found, [f[0] for f in found[1:]] + [len(text)]):
        if not text[start:end].strip():
            continue
        turn_end = observation.start() if observation else end  # low[start] is the newline before the step's line
        step = _parse_turn(text[start:turn_end], low[start:turn_end + 1],
                           (action.start() - start, action.end() - 1 - start) if action else None)
        if observation:
            step.observation = text[observation.end() - 1:end].strip()
        steps.append(step)
    return steps


def parse_answer(method: str, text: str) -> tuple[str | None, list[str]]:
    """The final answer of a single-generation method (io, cot, text) and its format errors."""
    if method == "text":  # either style: an Answer: line or a finish[...] marks CoT, else IO's first line
        low = _lowered(text)
        return parse_answer("cot" if "finish[" in low or re.search(r"answer\s*:", low) else "io", text)
    if method == "cot":
        match = re.search(r"Answer\s*:\s*(.*)", text)
        if match:
            return match.group(1).strip(), []
        finish = _next_action(text, _lowered(text))  # FireAct's CoT fine-tuning data ends in finish[...]
        if finish and finish[0] == "finish":
            return finish[1].strip(), []
        return None, ["missing_answer"]
    if method == "io":
        answer = re.sub(r"^\s*Answer\s*:\s*", "", text.strip().partition("\n")[0]).strip()
        return (answer, []) if answer else (None, ["empty"])
    raise ValueError(f"method {method!r} has no single-generation answer; known: {SINGLE_METHODS}")


@cache
def fewshot_prompt(method: str, dataset: str) -> str:
    """FireAct's few-shot prompt text for a method and dataset (reflexion uses ReAct's examples)."""
    name = PROMPT_SET.get(dataset)
    if name is None:
        raise ValueError(f"no prompt for dataset {dataset!r}; known: {sorted(PROMPT_SET)}")
    return release.prompt(PROMPT_FILES[method].format(name)).rstrip("\n") + "\n\n\n"


def stop_sequences(method: str) -> list[str]:
    # A turn never holds a blank line: past one, small models start inventing the next question.
    return ["\n\n"] if method in SINGLE_METHODS else ["\nObservation", "Observation:", "\n\n"]


def build_context(method: str, dataset: str, question: str, steps: list[Step], *, chat=None) -> str:
    """The text the model continues at the next step. `chat` renders messages with the model's template."""
    if method == "text":
        raise ValueError("method 'text' has no prompt of its own: the task supplies the context")
    question = QUESTION_PREFIX.get(dataset, {}).get("ft" if method == "ft" else "fewshot", "") + question
    if method in ("io", "cot"):
        return fewshot_prompt(method, dataset) + question + ("\nAnswer:" if method == "io" else "\nThought:")
    prefix = turn_prefix(method, len(steps))
    if method == "ft" and chat is not None:
        return chat(chat_messages(question, steps)) + prefix
    head = ALPACA_TEMPLATE.format(instruction=question) if method == "ft" else fewshot_prompt(method, dataset) + question + "\n"
    return head + "".join(step.as_text() + "\n" for step in steps) + prefix


def turn_prefix(method: str, steps_done: int) -> str:
    """Text put in the model's mouth before it writes the next turn: Reflexion's reminders."""
    reminder = REFLECT_AT.get(steps_done + 1) if method == "reflexion" else None
    return f"Thought: {reminder} " if reminder else ""


def chat_messages(question: str, steps: list[Step]) -> list[dict]:
    """The fine-tuned chat format: user question, assistant turns, observations as user turns."""
    messages = [{"role": "user", "content": question}]
    for step in steps:
        messages.append({"role": "assistant", "content": turn_text(step)})
        if step.observation is not None:
            messages.append({"role": "user", "content": f"Observation: {step.observation}"})
    return messages


def fingerprint(method: str, dataset: str) -> str:
    """What a method contributes to a result: this module's source (every prompt constant, template and the
    parser) and the few-shot prompt text it reads. A change to any of them changes every cell id that uses it."""
    parts = [Path(__file__).read_text(encoding="utf-8"), method, dataset]
    if method in PROMPT_FILES:
        parts.append(fewshot_prompt(method, dataset))
    return digest(parts)
