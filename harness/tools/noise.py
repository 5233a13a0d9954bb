"""Noisy search tool (FireAct's robustness study): with probability p the observation is replaced
by "None" (kind "none") or by a random other recorded response (kind "random").

Each decision comes from an RNG seeded by sha256(f"{seed}|{key}"), where key names the
(question, step). So it depends on neither call order, process (unlike hash()), nor the model's query.
"""
from __future__ import annotations

import hashlib
import random

from fireact_bench.harness.files import digest
from fireact_bench.harness.study import NOISES
from fireact_bench.harness.tools.base import SearchBackend

KINDS = NOISES


def _find_pool(backend: SearchBackend) -> list[str] | None:
    """recorded_observations() of the backend or of one it wraps (e.g. a SearchCache over replay)."""
    while backend is not None:
        if hasattr(backend, "recorded_observations"):
            return backend.recorded_observations()
        backend = getattr(backend, "backend", None)
    return None


class NoisyTool(SearchBackend):
    def __init__(self, backend: SearchBackend, kind: str = "clean", p: float = 0.5, seed: int = 0,
                 pool: list[str] | None = None):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"noise kind {kind!r}: expected one of {', '.join(KINDS)}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"noise probability p={p} is not in [0, 1]")
        self.backend, self.kind, self.p, self.seed = backend, kind, p, seed
        self.name = backend.name if kind == "clean" else f"{backend.name}+{kind}"
        self.pool = list(pool) if pool is not None else (_find_pool(backend) if kind == "random" else [])
        if kind == "random" and (not self.pool or len(set(self.pool)) < 2):
            raise ValueError(
                f"noise kind 'random' needs a pool of at least two distinct responses; "
                f"backend {backend.name!r} has no recorded_observations(), pass pool="
            )

    def _rng(self, key: str) -> random.Random:
        seed = hashlib.sha256(f"{self.seed}|{key}".encode()).digest()
        return random.Random(int.from_bytes(seed[:8], "big"))

    def search(self, query: str, *, key: str = "") -> str:
        self.stats["calls"] += 1
        if self.kind == "clean":
            return self.backend.search(query, key=key)
        if not key:
            # Without a key every step would share one decision, or the decision would follow the query.
            raise ValueError("NoisyTool.search needs key= naming the (question, step), e.g. 'q123:2'")
        rng = self._rng(key)
        if rng.random() >= self.p:
            return self.backend.search(query, key=key)
        self.stats["noised"] += 1
        if self.kind == "none":
            return "None"  # the true answer is not needed, so the backend is not asked
        true = self.backend.search(query, key=key)
        while True:  # terminates: the pool holds at least two distinct responses
            candidate = self.pool[rng.randrange(len(self.pool))]
            if candidate != true:
                return candidate

    def fingerprint(self) -> str:
        return digest(["noise", self.kind, self.p, self.seed, digest(self.pool), self.backend.fingerprint()])
