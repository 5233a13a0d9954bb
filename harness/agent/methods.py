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

_ACTION = re.compile(r"\b(search|finish)\[(.*?)\]", re.IGNORECASE | re.DOTALL)
_LABELLED = re.compile(r"^\s*Action(?:\s*\d+)?\s*:\s*(.*)$", re.IGNORECASE | re.MULTILINE)


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


def parse_turn(text: str, *, truncated: bool = False) -> Step:
    """One model turn ("Thought: ...\\nAction: search[q]") -> Step. Never raises."""
    step = Step()
    if truncated:
        step.errors.append("runaway")  # hit the token limit before a stop sequence
    if not text.strip():
        step.errors.append("empty")
        return step
    thought = re.split(r"^\s*Action(?:\s*\d+)?\s*:", text, maxsplit=1, flags=re.IGNORECASE | re.MULTILINE)[0]
    step.thought = re.sub(r"^\s*Thought(?:\s*\d+)?\s*:\s*", "", thought.strip(), flags=re.IGNORECASE).strip()
    labelled = _LABELLED.search(text)
    region = text[labelled.start(1):] if labelled else text
    actions = list(_ACTION.finditer(region))
    if not actions:
        step.errors.append("malformed_action" if labelled else "missing_action")
        return step
    if not labelled:
        step.errors.append("missing_action_label")
        step.thought = re.sub(r"^\s*Thought\s*:\s*", "", text[: text.find(actions[0].group(0))].strip(), flags=re.I).strip()
    first = actions[0]
    step.action, step.argument = first.group(1).lower(), first.group(2).strip()
    if len(actions) > 1:
        step.errors.append("multiple_actions")
    trailing = region[first.end():].strip()
    if trailing and step.action == "finish":
        step.errors.append("text_after_finish")
    if step.action == "search" and not step.argument:
        step.errors.append("empty_search")
        step.action = None
    return step


def split_trajectory(text: str) -> list[Step]:
    """A whole transcript (Thought/Action/Observation lines, FireAct's format) -> steps with observations."""
    steps = []
    for chunk in re.split(r"\n(?=\s*Thought(?:\s*\d+)?\s*:)", "\n" + text.strip()):
        if not chunk.strip():
            continue
        parts = re.split(r"^\s*Observation(?:\s*\d+)?\s*:\s*", chunk, maxsplit=1, flags=re.MULTILINE)
        step = parse_turn(parts[0])
        if len(parts) > 1:
            step.observation = parts[1].strip()
        steps.append(step)
    return steps


def parse_answer(method: str, text: str) -> tuple[str | None, list[str]]:
    """The final answer of a single-generation method (io, cot, text) and its format errors."""
    if method == "text":  # either style: an Answer: line or a finish[...] marks CoT, else IO's first line
        return parse_answer("cot" if re.search(r"Answer\s*:|finish\[", text, re.I) else "io", text)
    if method == "cot":
        match = re.search(r"Answer\s*:\s*(.*)", text)
        if match:
            return match.group(1).strip(), []
        finish = _ACTION.search(text)  # FireAct's CoT fine-tuning data ends in finish[...]
        if finish and finish.group(1).lower() == "finish":
            return finish.group(2).strip(), []
        return None, ["missing_answer"]
    if method == "io":
        answer = re.sub(r"^\s*Answer\s*:\s*", "", text.strip().split("\n")[0]).strip()
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
