"""Hooks the task YAMLs name with !function: the dataset loader, the answer filter and the scorer."""
from __future__ import annotations

from fireact_bench.harness.agent.loop import read_summary
from fireact_bench.harness.agent.methods import build_context, parse_answer
from fireact_bench.harness.agent.result import QuestionResult
from fireact_bench.harness.data import questions as datasets

load = datasets.load


def episode_of(response: str) -> dict:
    """The episode summary of one response: the agent's own line, or one recovered from plain text."""
    transcript, summary = read_summary(response)
    if summary is not None:
        return summary
    answer, errors = parse_answer("text", transcript)
    return {"answer": answer, "finished": answer is not None, "steps": 1, "format_errors": len(errors),
            "tool_calls": 0, "tool_errors": 0, "cache_hits": 0, "prompt_tokens": 0, "gen_tokens": len(transcript.split()), "wall_s": 0.0}


def io_prompt(doc: dict) -> str:
    return build_context("io", doc["dataset"], doc["question"], [])


def cot_prompt(doc: dict) -> str:
    return build_context("cot", doc["dataset"], doc["question"], [])


def extract_episode(resps, docs):
    """lm-eval `custom` filter: each response (a whole trajectory) -> its episode summary with the answer."""
    return [[episode_of(r) for r in doc_resps] for doc_resps in resps]


def process_results(doc: dict, results: list) -> dict:
    return QuestionResult.of(doc, results[0]).metrics()
