"""SerpAPI's Google engine: the FireAct paper's search tool."""
from __future__ import annotations

import json
import socket
import urllib.error
import urllib.parse
import urllib.request

from fireact_bench.harness.files import digest
from fireact_bench.harness.tools.base import NO_RESULTS, SearchError
from fireact_bench.harness.tools.live import LiveBackend, Retryable


class SerpAPISearch(LiveBackend):
    """SerpAPI's Google engine, as in FireAct: answer box first, then the first organic snippet."""

    name = "serpapi"
    key_env = "SERPAPI_API_KEY"

    def __init__(self, *, base_url: str = "https://serpapi.com", **retry_options):
        super().__init__(**retry_options)
        self.base_url = base_url.rstrip("/")

    def search(self, query: str, *, key: str = "") -> str:
        def call():
            params = urllib.parse.urlencode({"engine": "google", "q": query, "api_key": self._api_key()})
            try:
                with urllib.request.urlopen(f"{self.base_url}/search.json?{params}", timeout=self.timeout) as resp:
                    return self._observation(json.load(resp))
            except urllib.error.HTTPError as err:
                if err.code == 429 or err.code >= 500:
                    raise Retryable(f"HTTP {err.code}") from None
                raise SearchError(f"serpapi search for {query!r} failed: HTTP {err.code} {err.reason}") from None
            except TimeoutError as err:
                raise Retryable(f"time-out ({err})") from None
            except urllib.error.URLError as err:
                if isinstance(err.reason, (TimeoutError, socket.timeout)):
                    raise Retryable(f"time-out ({err.reason})") from None
                raise SearchError(f"serpapi search for {query!r} failed: {self._redact(str(err.reason))}") from None

        return self._with_retries(query, call)

    @staticmethod
    def _observation(result: dict) -> str:
        box = result.get("answer_box") or {}
        candidates = [box.get("answer"), box.get("snippet"), (box.get("snippet_highlighted_words") or [None])[0]]
        organic = result.get("organic_results") or []
        candidates.append(organic[0].get("snippet") if organic else None)
        return next((str(c) for c in candidates if c), NO_RESULTS)

    def fingerprint(self) -> str:
        return digest([self.name, self.base_url])

