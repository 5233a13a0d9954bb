"""One factory: a backend by name, an optional sqlite cache in front, the noise wrapper around it."""
from __future__ import annotations

import os

from fireact_bench.harness.tools.base import SearchBackend
from fireact_bench.harness.tools.bm25 import BM25Search
from fireact_bench.harness.tools.cache import SearchCache
from fireact_bench.harness.tools.google import GoogleSearch
from fireact_bench.harness.tools.noise import NoisyTool
from fireact_bench.harness.tools.replay import ReplaySearch
from fireact_bench.harness.tools.serpapi import SerpAPISearch

BACKENDS: dict[str, type[SearchBackend]] = {
    "google": GoogleSearch,
    "serpapi": SerpAPISearch,
    "bm25": BM25Search,
    "replay": ReplaySearch,
}


def make_search(name: str, *, cache: str | os.PathLike | None = None, cache_mode: str = "record", **options) -> SearchBackend:
    """A backend by name; with cache=path, wrapped in a SearchCache."""
    if name not in BACKENDS:
        raise ValueError(f"unknown search backend {name!r}; known: {', '.join(sorted(BACKENDS))}")
    backend = BACKENDS[name](**options)
    return SearchCache(backend, cache, cache_mode) if cache is not None else backend


def make_tool(name: str, noise: str = "clean", p: float = 0.5, seed: int = 0, **options) -> NoisyTool:
    """make_search(name, **options) wrapped in NoisyTool(kind=noise, p=p, seed=seed)."""
    return NoisyTool(make_search(name, **options), kind=noise, p=p, seed=seed)
