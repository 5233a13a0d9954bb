"""What the web APIs share: the key from the environment, retries with backoff, and redaction of keys."""
from __future__ import annotations

import logging
import os
import re
import time

from fireact_bench.harness.tools.base import SearchBackend, SearchError

logger = logging.getLogger(__name__)

_KEY_IN_URL = re.compile(r"((?:api_key|key)=)[^&\s'\"]+")


class LiveBackend(SearchBackend):
    """Shared by the web APIs: credentials from the environment, retries, redaction."""

    key_env = ""

    def __init__(self, *, max_retries: int = 5, base_delay: float = 1.0, timeout: float = 30.0):
        super().__init__()
        self.max_retries, self.base_delay, self.timeout = max_retries, base_delay, timeout
        # Read at construction, checked at first use: a replay_only cache in front needs no key.
        self._key = os.environ.get(self.key_env, "")

    def _api_key(self) -> str:
        if not self._key:
            raise SearchError(f"{self.name} search needs an API key in the environment variable {self.key_env}")
        return self._key

    def _redact(self, text: str) -> str:
        if self._key:
            text = text.replace(self._key, "***")
        return _KEY_IN_URL.sub(r"\1***", text)

    def _with_retries(self, query: str, call):
        """call() -> observation; it raises Retryable for rate limits / time-outs. Backoff doubles."""
        self.stats["calls"] += 1
        for attempt in range(self.max_retries + 1):
            try:
                return call()
            except Retryable as err:
                reason = self._redact(str(err))
                if attempt == self.max_retries:
                    self.stats["errors"] += 1
                    raise SearchError(
                        f"{self.name} search for {query!r} failed after {self.max_retries} retries: {reason}"
                    ) from None
                delay = self.base_delay * 2**attempt
                self.stats["retries"] += 1
                logger.warning("%s: %s; retry %d in %.2fs", self.name, reason, attempt + 1, delay)
                time.sleep(delay)
            except SearchError:
                self.stats["errors"] += 1
                raise


class Retryable(Exception):
    pass


class _RedactFilter(logging.Filter):
    """googleapiclient logs request URLs (with key=...) at DEBUG; rewrite those records."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = _KEY_IN_URL.sub(r"\1***", record.getMessage()), ()
        return True


for _name in ("googleapiclient.discovery", "googleapiclient.http"):
    logging.getLogger(_name).addFilter(_RedactFilter())

