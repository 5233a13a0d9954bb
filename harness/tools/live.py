"""What the web APIs share: the key from the environment, retries with backoff, and one rule for failures:
whatever goes wrong inside a backend leaves it as a SearchError (redacted), never as a raw exception."""
from __future__ import annotations

import http.client
import logging
import os
import time

from fireact_bench.harness.tools import secrets
from fireact_bench.harness.tools.base import MAX_OBSERVATION_CHARS, SearchBackend, SearchError, truncate

logger = logging.getLogger(__name__)


class Retryable(Exception):
    """A failure a backend judged worth another try (rate limits, server errors)."""


# Failures a second try may not meet: time-outs and connections cut mid-answer.
TRANSIENT = (Retryable, TimeoutError, ConnectionResetError, ConnectionAbortedError, http.client.IncompleteRead)


def _reason(err: Exception) -> str:
    if isinstance(err, (Retryable, SearchError)):
        return str(err)
    if isinstance(err, TimeoutError):
        return f"time-out ({err})"
    return f"{type(err).__name__}: {err}"  # anything else: a malformed answer, a broken connection, ...


class LiveBackend(SearchBackend):
    """Shared by the web APIs: credentials from the environment, retries, failures as SearchError."""

    key_env = ""

    def __init__(self, *, max_retries: int = 5, base_delay: float = 1.0, timeout: float = 30.0):
        super().__init__()
        # timeout: seconds for one whole request, its answer read to the end included
        self.max_retries, self.base_delay, self.timeout = max_retries, base_delay, timeout
        # Read at construction, checked at first use: a replay_only cache in front needs no key.
        self._key = secrets.register(os.environ.get(self.key_env, ""))

    def _api_key(self) -> str:
        if not self._key:
            raise SearchError(f"no API key: set the environment variable {self.key_env}")
        return self._key

    def _with_retries(self, query: str, call):
        """call() -> the answer. It raises Retryable (or a TRANSIENT error) to be tried again with doubling backoff,
        SearchError(reason) for a failure that another try would not mend; anything else it raises is a failure too."""
        self.stats["calls"] += 1
        for attempt in range(self.max_retries + 1):
            try:
                return truncate(secrets.redact(call()), MAX_OBSERVATION_CHARS)
            except TRANSIENT as err:
                reason = _reason(err)
                if attempt == self.max_retries:
                    failed = f"failed after {self.max_retries} retries"
                    break
                delay = self.base_delay * 2**attempt
                self.stats["retries"] += 1
                logger.warning("%s: %s; retry %d in %.2fs", self.name, reason, attempt + 1, delay)
                time.sleep(delay)
            except Exception as err:
                reason, failed = _reason(err), "failed"
                break
        self.stats["errors"] += 1
        # from None: no chained traceback that could show a request URL
        raise SearchError(f"{self.name} search for {query!r} {failed}: {reason}", reason) from None
