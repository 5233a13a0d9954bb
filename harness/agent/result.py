"""The per-question result: one definition, written by the task hooks (lm-eval's process_results) and read
by the benchmark (sweep, leaderboard, regress) from each cell's `per_question` list."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from fireact_bench.harness.agent.scoring import score


@dataclass(frozen=True)
class QuestionResult:
    id: str
    em: float
    f1: float
    answer: str | None = None
    finished: float = 0.0  # 1.0 when the episode ended with finish[...] (or io/cot gave an answer)
    steps: float = 1.0  # turns taken
    format_errors: float = 0.0
    tool_calls: float = 0.0
    tool_errors: float = 0.0  # searches the tool could not answer (the model saw a failure observation)
    cache_hits: float = 0.0
    prompt_tokens: float = 0.0
    gen_tokens: float = 0.0
    wall_s: float = 0.0  # the episode's share of the batched model and tool time

    # What lm-eval aggregates per task (mean over questions): every numeric field.
    METRICS = ("em", "f1", "finished", "steps", "format_errors", "tool_calls", "tool_errors", "cache_hits",
               "prompt_tokens", "gen_tokens", "wall_s")

    @classmethod
    def of(cls, doc: dict, episode: dict) -> QuestionResult:
        """Score an episode summary (Episode.summary()) against the question's gold answer."""
        counts = {k: float(episode.get(k, 0) or 0) for k in cls.METRICS if k not in ("em", "f1")}
        return cls(id=str(doc["id"]), answer=episode.get("answer"), **score(doc["kind"], episode.get("answer"), doc["answer"]),
                   **counts)

    def metrics(self) -> dict:
        return {k: getattr(self, k) for k in self.METRICS}

    @classmethod
    def from_sample(cls, sample: dict) -> QuestionResult:
        """From an lm-eval sample of a fireact task: its doc, its metrics, its filtered episode."""
        return cls(id=str(sample["doc"]["id"]), answer=sample["filtered_resps"][0].get("answer"),
                   **{k: float(sample.get(k, 0) or 0) for k in cls.METRICS})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> QuestionResult:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
