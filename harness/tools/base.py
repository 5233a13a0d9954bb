"""What every search backend is: one `search(query, key=) -> observation` and a fingerprint of what shapes
its answers (for cell identity). Backends live one per file beside this one; `factory.make_tool` builds them."""
from __future__ import annotations

import collections
import unicodedata

from fireact_bench.harness.tools.secrets import redact

NO_RESULTS = "No results found."
# The longest observation a backend returns. FireAct's recorded Google observations are at most 495 characters
# (median 154): twice that keeps every real snippet whole, while a runaway answer (a 30 MB field) cannot flood the
# model's context or the samples. Live backends cut their answers to it; replay returns FireAct's own recordings
# unchanged (all shorter) and bm25 cuts to its own max_chars (600 by default).
MAX_OBSERVATION_CHARS = 1000


class SearchError(RuntimeError):
    """A search that could not be answered (after retries). `reason` is the short cause, which the agent's
    observation shows; message and reason are redacted and put on one line here, so no API key survives in either."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(" ".join(redact(message).split()))
        self.reason = truncate(" ".join(redact(reason).split()), 200) or str(self)


class CacheMiss(KeyError):
    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


def normalize_query(query: str) -> str:
    """Lowercase, drop punctuation (any Unicode P* character, so the trailing '?' too), squeeze spaces."""
    kept = "".join(ch for ch in query.lower() if not unicodedata.category(ch).startswith("P"))
    return " ".join(kept.split())


def truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return cut + " ..."


class SearchBackend:
    name = "base"

    def __init__(self) -> None:
        self.stats: collections.Counter = collections.Counter()

    def search(self, query: str, *, key: str = "") -> str:
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:  # deliberately shows no configuration: it may hold credentials
        return f"<{type(self).__name__} {self.name} {self.fingerprint()}>"

