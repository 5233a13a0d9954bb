"""The agent loop: every live episode advances together, one batched model call per step.

`generate(contexts, gen_kwargs) -> outputs` is the only thing asked of a model, so any lm-eval LM
(or a scripted one in tests) drives it. A malformed turn never ends an episode early: it is counted
and answered with an "Invalid action" observation, as in ReAct. An episode that reaches the step
limit without finish[...] has no answer, scores 0 and stays in the denominator. A search the tool fails
to answer does not end the run either: the model is told, as a flaky API would tell it, and the failure is
counted; only when failures pass AgentOptions.max_tool_error_rate does the run stop (ToolFailureRateExceeded).
"""
from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from fireact_bench.harness.agent import methods
from fireact_bench.harness.agent.methods import Step
from fireact_bench.harness.study import EPISODE_FINISHED, MAX_STEPS, METHODS, NOISE_P, NOISES, SINGLE_METHODS, TOOL_METHODS
from fireact_bench.harness.tools.base import SearchError

log = logging.getLogger(__name__)
# Worded without a literal finish[...]: small models copy an example action straight into their answer.
INVALID_ACTION = "Invalid action: the Action line must be search or finish with its argument in square brackets."
EPISODE_LINE = "Episode: "  # last line of a returned trajectory: the machine-readable summary
SEARCH_FAILED = "Search failed: "  # the observation of a search the tool could not answer, then the short reason
# max_tool_error_rate applies from this many searches of a run on: an early flake (1 of 1) never stops a run,
# while a dead key or a service that is down stops it at its 4th search.
MIN_TOOL_CALLS = 4


class ToolFailureRateExceeded(RuntimeError):
    """Too many of the run's searches failed for its scores to mean anything; the message is one line."""


@dataclass(frozen=True)
class AgentOptions:
    """Everything that decides how an episode runs; a task sets them under its `fireact` generation key."""

    method: str = "react"
    dataset: str = "hotpotqa"  # the question set's prompt set (few-shot examples, question prefix)
    max_steps: int = 0  # 0: the method's limit in the study (8; 11 for Reflexion)
    max_gen_toks: int = 128  # per turn; a turn that uses them all is counted as runaway
    tool: str = "replay"
    noise: str = "clean"
    noise_p: float = NOISE_P
    seed: int = 0
    template: str = "auto"  # ft only: chat | alpaca | auto (chat when the model has a chat template)
    tool_args: str = ""  # JSON object of the backend's options, e.g. {"corpus": "passages.jsonl"} for bm25
    cache: str = ""  # sqlite search cache in front of the tool ("" = none)
    cache_mode: str = "record"
    # Stop the run once more than this share of its searches failed (from MIN_TOOL_CALLS on); 1.0: never stop.
    max_tool_error_rate: float = 0.5

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; known: {', '.join(METHODS)}")
        if self.noise not in NOISES:
            raise ValueError(f"unknown noise {self.noise!r}; known: {', '.join(NOISES)}")
        if self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 1 (or 0 for the method's default), got {self.max_steps}")
        if not 0.0 <= self.max_tool_error_rate <= 1.0:
            raise ValueError(f"max_tool_error_rate must be in [0, 1], got {self.max_tool_error_rate}")
        if not self.max_steps:
            object.__setattr__(self, "max_steps", MAX_STEPS[self.method])

    @property
    def uses_tool(self) -> bool:
        return self.method in TOOL_METHODS

    def make_tool(self):
        """The search tool these options ask for: backend, sqlite cache in front, noise around it."""
        from fireact_bench.harness.tools.factory import make_tool

        extra = json.loads(self.tool_args) if self.tool_args else {}
        if self.cache:
            extra.update(cache=self.cache, cache_mode=self.cache_mode)
        return make_tool(self.tool, noise=self.noise, p=self.noise_p, seed=self.seed, **extra)


@dataclass
class Episode:
    key: str  # stable question id: seeds the tool noise
    question: str
    context: str = ""  # method "text": the prompt as the task built it
    steps: list[Step] = field(default_factory=list)
    raw: str = ""  # the single generation of io/cot
    answer: str | None = None
    finished: bool = False
    format_errors: Counter = field(default_factory=Counter)
    tool_calls: int = 0
    tool_errors: int = 0  # searches the tool failed to answer (the model was told so)
    cache_hits: int = 0
    prompt_tokens: int = 0
    gen_tokens: int = 0
    wall_s: float = 0.0  # this episode's share of the batched model and tool time

    def transcript(self) -> str:
        if self.raw:
            return self.raw.strip()
        return "\n".join(step.as_text() for step in self.steps)

    def summary(self) -> dict:
        return {
            "answer": self.answer, "finished": self.finished, "steps": len(self.steps) or 1,
            "format_errors": sum(self.format_errors.values()), "format_error_kinds": dict(self.format_errors),
            "tool_calls": self.tool_calls, "tool_errors": self.tool_errors, "cache_hits": self.cache_hits,
            "prompt_tokens": self.prompt_tokens, "gen_tokens": self.gen_tokens, "wall_s": round(self.wall_s, 4),
        }

    def response(self) -> str:
        """What lm-eval stores: the whole trajectory, then one summary line the task's filter reads."""
        return self.transcript() + "\n" + EPISODE_LINE + json.dumps(self.summary(), ensure_ascii=False)


def _hits(tool) -> int:
    return tool.stats.get("cache_hits", 0) if tool is not None else 0


def run_episodes(
    episodes: list[Episode],
    generate: Callable[[list[str], dict], list[str]],
    config: AgentOptions,
    tool=None,
    count_tokens: Callable[[str], int] = lambda text: len(text.split()),
    chat: Callable[[list[dict]], str] | None = None,
) -> list[Episode]:
    """Run all episodes to the end; returns them (mutated) in the same order."""
    if config.uses_tool and tool is None:
        raise ValueError(f"method {config.method!r} needs a search tool")
    single = config.method in SINGLE_METHODS
    gen_kwargs = {"until": methods.stop_sequences(config.method), "max_gen_toks": config.max_gen_toks, "do_sample": False}
    live = list(episodes)
    rounds = 1 if single else config.max_steps
    for round_no in range(1, rounds + 1):
        if not live:
            break
        contexts = [ep.context or methods.build_context(config.method, config.dataset, ep.question, ep.steps, chat=chat) for ep in live]
        started = time.perf_counter()
        outputs = generate(contexts, gen_kwargs)
        share = (time.perf_counter() - started) / len(live)
        for ep, context, output in zip(live, contexts, outputs):
            ep.prompt_tokens += count_tokens(context)
            generated = count_tokens(output)
            ep.gen_tokens += generated
            ep.wall_s += share
            if single:
                ep.raw = output
                ep.answer, errors = methods.parse_answer(config.method, output)
                ep.format_errors.update(errors)
                ep.finished = ep.answer is not None
                continue
            tool_started = time.perf_counter()
            _advance(ep, output, generated >= config.max_gen_toks, config, tool)
            ep.wall_s += time.perf_counter() - tool_started
        live = [ep for ep in live if not ep.finished and not single]
        log.info("%s step %d/%d: %d episodes in %.1fs, %d still running",
                 config.method, round_no, rounds, len(outputs), share * len(outputs), len(live))
    return episodes


def _advance(ep: Episode, output: str, truncated: bool, config: AgentOptions, tool) -> None:
    step = methods.parse_turn(methods.turn_prefix(config.method, len(ep.steps)) + output, truncated=truncated)
    ep.format_errors.update(step.errors)
    ep.steps.append(step)
    if step.action == "finish":
        ep.answer, ep.finished = step.argument, True
        step.observation = EPISODE_FINISHED
    elif step.action == "search":
        before = _hits(tool)
        step.observation = _search(ep, step.argument, config, tool)
        ep.cache_hits += _hits(tool) - before
    else:
        step.observation = INVALID_ACTION


def _search(ep: Episode, query: str, config: AgentOptions, tool) -> str:
    """The tool's answer, or SEARCH_FAILED and the reason. Failures are counted for the episode and, on the
    tool's stats, for the whole run (a FireActLM keeps one tool per option set), whose failure rate decides."""
    stats = tool.stats
    calls = stats["run_tool_calls"] = stats.get("run_tool_calls", 0) + 1
    ep.tool_calls += 1
    try:
        return tool.search(query, key=f"{ep.key}:{len(ep.steps)}")
    except SearchError as err:  # CacheMiss is no SearchError: a replay_only run that needs the network stops
        ep.tool_errors += 1
        failed = stats["run_tool_errors"] = stats.get("run_tool_errors", 0) + 1
        log.warning("%s: %d of %d searches failed so far: %s", config.tool, failed, calls, err)
        if calls >= MIN_TOOL_CALLS and failed > config.max_tool_error_rate * calls:
            raise ToolFailureRateExceeded(
                f"{config.tool} search failed {failed} of {calls} times in this run, more than "
                f"max_tool_error_rate={config.max_tool_error_rate}; last: {err}") from None
        return SEARCH_FAILED + err.reason


def read_summary(response: str) -> tuple[str, dict | None]:
    """Split a returned trajectory into (transcript, summary); summary is None for a plain model's text."""
    head, sep, tail = response.rpartition("\n" + EPISODE_LINE)
    if not sep:
        return response, None
    try:
        return head, json.loads(tail)
    except json.JSONDecodeError:
        return response, None
