"""Hooks the task YAMLs name with !function: the dataset loader, the answer filter and the scorer."""
from __future__ import annotations

import re

from fireact_bench import datasets
from fireact_bench.agent import read_summary
from fireact_bench.scoring import score

load = datasets.load
EPISODE_METRICS = ("steps", "finished", "format_errors", "tool_calls", "cache_hits", "prompt_tokens", "gen_tokens", "wall_s")


def _plain_answer(text: str) -> str | None:
    """A plain lm-eval model's single output (io/cot run without the agent): finish[...], Answer: ..., or line 1."""
    finish = re.findall(r"finish\[(.*?)\]", text, flags=re.IGNORECASE | re.DOTALL)
    if finish:
        return finish[0].strip()
    answer = re.search(r"Answer\s*:\s*(.*)", text)
    if answer:
        return answer.group(1).strip()
    first = text.strip().split("\n")[0].strip()
    return first or None


def episode_of(response: str) -> dict:
    """The episode summary of one response: the agent's own line, or one recovered from plain text."""
    transcript, summary = read_summary(response)
    if summary is not None:
        return summary
    answer = _plain_answer(transcript)
    return {"answer": answer, "finished": answer is not None, "steps": 1, "format_errors": int(answer is None),
            "tool_calls": 0, "cache_hits": 0, "prompt_tokens": 0, "gen_tokens": len(transcript.split()), "wall_s": 0.0}


def extract_episode(resps, docs):
    """lm-eval `custom` filter: each response (a whole trajectory) -> its episode summary with the answer."""
    return [[episode_of(r) for r in doc_resps] for doc_resps in resps]


def process_results(doc: dict, results: list) -> dict:
    episode = results[0]
    metrics = score(doc["kind"], episode.get("answer"), doc["answer"])
    metrics.update({k: float(episode.get(k, 0) or 0) for k in EPISODE_METRICS})
    return metrics
