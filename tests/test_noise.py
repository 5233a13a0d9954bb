import hashlib
import math
import random

import pytest

from fireact_bench.harness.tools.base import SearchBackend
from fireact_bench.harness.tools.factory import make_tool
from fireact_bench.harness.tools.noise import NoisyTool


class Echo(SearchBackend):
    """Deterministic stand-in backend whose true observation is known."""

    name = "echo"

    def search(self, query, *, key=""):
        self.stats["calls"] += 1
        return f"obs:{query}"

    def fingerprint(self):
        return "echo"


POOL = [f"obs:q{i}" for i in range(20)]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FIREACT_CACHE_DIR", str(tmp_path))


def _run(tool, keys):
    return {k: tool.search(f"q{int(k[1:]) % 20}", key=k) for k in keys}


def test_clean_passes_through():
    tool = NoisyTool(Echo(), "clean", p=1.0)
    assert tool.search("x") == "obs:x" and tool.stats["noised"] == 0


@pytest.mark.parametrize("kind", ["none", "random"])
def test_deterministic_across_instances_and_order(kind):
    keys = [f"q{i}" for i in range(300)]
    forward = _run(NoisyTool(Echo(), kind, p=0.5, seed=7, pool=POOL), keys)
    backward = _run(NoisyTool(Echo(), kind, p=0.5, seed=7, pool=POOL), reversed(keys))
    assert forward == backward
    other_seed = _run(NoisyTool(Echo(), kind, p=0.5, seed=8, pool=POOL), keys)
    assert forward != other_seed


def test_decision_is_sha256_of_seed_and_key():
    # Recomputed independently: not hash() (salted per process), not call order, not the query.
    tool = NoisyTool(Echo(), "none", p=0.5, seed=0)
    for i in range(64):
        digest = hashlib.sha256(f"0|q{i}:0".encode()).digest()
        expected = random.Random(int.from_bytes(digest[:8], "big")).random() < 0.5
        assert (tool.search(f"any query {i}", key=f"q{i}:0") == "None") == expected


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_rate_close_to_p(p):
    n = 2000
    tool = NoisyTool(Echo(), "none", p=p, seed=3)
    noised = sum(tool.search("q", key=f"q{i}:{i % 5}") == "None" for i in range(n))
    assert tool.stats["noised"] == noised
    assert abs(noised - n * p) <= 4.5 * math.sqrt(n * p * (1 - p))  # binomial, ~1e-5 false alarm


def test_none_skips_backend_when_noised():
    backend = Echo()
    tool = NoisyTool(backend, "none", p=1.0)
    assert tool.search("x", key="k") == "None" and backend.stats["calls"] == 0


def test_random_draws_other_pool_members():
    tool = NoisyTool(Echo(), "random", p=1.0, seed=1, pool=POOL)
    results = [(q, tool.search(q, key=f"k{i}")) for i, q in enumerate(f"q{i % 20}" for i in range(400))]
    assert all(obs in POOL and obs != f"obs:{q}" for q, obs in results)
    assert len({obs for _, obs in results}) > 10


def test_random_needs_pool_and_key():
    with pytest.raises(ValueError, match="pool"):
        NoisyTool(Echo(), "random")
    with pytest.raises(ValueError, match="key"):
        NoisyTool(Echo(), "none").search("x")
    with pytest.raises(ValueError, match="kind"):
        NoisyTool(Echo(), "loud")


def test_fingerprint_covers_settings():
    base = NoisyTool(Echo(), "random", p=0.5, seed=0, pool=POOL).fingerprint()
    assert base == NoisyTool(Echo(), "random", p=0.5, seed=0, pool=POOL).fingerprint()
    variants = [
        NoisyTool(Echo(), "none", p=0.5, seed=0, pool=POOL),
        NoisyTool(Echo(), "random", p=0.4, seed=0, pool=POOL),
        NoisyTool(Echo(), "random", p=0.5, seed=1, pool=POOL),
        NoisyTool(Echo(), "random", p=0.5, seed=0, pool=POOL[:-1]),
    ]
    assert len({base, *(v.fingerprint() for v in variants)}) == 5


def test_make_tool_random_uses_replay_pool(tmp_path):
    tool = make_tool("replay", noise="random", p=1.0, seed=0, cache=tmp_path / "c.sqlite")
    true = make_tool("replay").search("Malcolm Smith Most Valuable Player")
    noisy = tool.search("Malcolm Smith Most Valuable Player", key="q1:0")
    assert noisy != true and noisy in tool.pool and len(tool.pool) > 1000
