"""Replay: the real Google observations recorded in FireAct's data, looked up by query."""
from __future__ import annotations

import collections
import functools
import os
import re
from pathlib import Path

from fireact_bench.harness.data import release
from fireact_bench.harness.files import digest
from fireact_bench.harness.settings import data_dir
from fireact_bench.harness.study import EPISODE_FINISHED
from fireact_bench.harness.tools.base import NO_RESULTS, SearchBackend, normalize_query
from fireact_bench.harness.tools.bm25 import BM25Index

# An action line, then its observation up to the next Thought/Action/Observation line (or the end).
_PAIR = re.compile(
    r"^Action:[ \t]*search\[([^\n]*)\][ \t]*\n+Observation:[ \t]*(.*?)[ \t]*(?=\n(?:Thought|Action|Observation)\b|\Z)",
    re.M | re.S,
)


def _is_real_observation(text: str) -> bool:
    return bool(text) and text != "None" and not text.startswith(EPISODE_FINISHED)


@functools.lru_cache(maxsize=4)
def _load_pairs(root: Path) -> tuple[tuple[str, str], ...]:
    return tuple(
        (q.strip(), obs)
        for text in release.all_transcripts(root)
        for q, obs in _PAIR.findall(text)
        if _is_real_observation(obs)
    )


def recorded_pairs(data: str | os.PathLike) -> list[tuple[str, str]]:
    """All (query, observation) pairs recorded in FireAct's data, with repeats, in file order."""
    return list(_load_pairs(Path(data).resolve()))


class ReplaySearch(SearchBackend):
    """Exact (normalized) query → its recorded observation; otherwise BM25 over all recorded observations."""

    name = "replay"

    def __init__(self, data: str | os.PathLike | None = None):
        super().__init__()
        pairs = _load_pairs(Path(data or data_dir()).resolve())
        by_query: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        for query, obs in pairs:
            by_query[normalize_query(query)][obs] += 1
        # Several recordings of one query: the most frequent, ties to the lexicographically first.
        self._exact = {q: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for q, c in by_query.items()}
        self._pool = sorted({obs for _, obs in pairs})
        self._hash = digest(sorted(pairs))
        self._index: BM25Index | None = None  # built on the first query that needs it

    def recorded_observations(self) -> list[str]:
        return list(self._pool)

    def search(self, query: str, *, key: str = "") -> str:
        self.stats["calls"] += 1
        exact = self._exact.get(normalize_query(query))
        if exact is not None:
            self.stats["exact"] += 1
            return exact
        if self._index is None:
            self._index = BM25Index(self._pool, f"replay-{self._hash}", self.stats)
        self.stats["bm25"] += 1
        return self._index.top(query) or NO_RESULTS

    def fingerprint(self) -> str:
        return digest([self.name, self._hash])

