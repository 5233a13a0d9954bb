"""SerpAPI's Google engine: the FireAct paper's search tool."""
from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request

from fireact_bench.harness.files import digest
from fireact_bench.harness.tools.base import NO_RESULTS, SearchError
from fireact_bench.harness.tools.live import LiveBackend, Retryable

# A SerpAPI result page is about 100 kB of JSON; an answer twenty times that is not a search result, and is not read.
MAX_RESPONSE_BYTES = 2_000_000


def _read(resp: http.client.HTTPResponse, deadline: float) -> bytes:
    """The body, a chunk at a time: urlopen's time-out bounds each socket read, this deadline the whole answer
    (a server trickling a byte at a time never trips the former), and at most MAX_RESPONSE_BYTES of it."""
    expected = int(resp.headers.get("Content-Length") or 0)
    if expected > MAX_RESPONSE_BYTES:
        raise SearchError(f"the answer is larger than {MAX_RESPONSE_BYTES:,} bytes ({expected:,})")
    body = bytearray()
    while chunk := resp.read1(65536):  # read1: what has arrived, where read(n) would wait for all n bytes
        body += chunk
        if len(body) > MAX_RESPONSE_BYTES:
            raise SearchError(f"the answer is larger than {MAX_RESPONSE_BYTES:,} bytes")
        if time.monotonic() > deadline:
            raise TimeoutError("the answer was still arriving at the deadline")
    if len(body) < expected:  # read1 does not check the length; read() would have raised this
        raise http.client.IncompleteRead(bytes(body), expected - len(body))
    return bytes(body)


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
            deadline = time.monotonic() + self.timeout
            try:
                with urllib.request.urlopen(f"{self.base_url}/search.json?{params}", timeout=self.timeout) as resp:
                    body = _read(resp, deadline)
            except urllib.error.HTTPError as err:
                if err.code == 429 or err.code >= 500:
                    raise Retryable(f"HTTP {err.code}") from None
                raise SearchError(f"HTTP {err.code} {err.reason}") from None
            except urllib.error.URLError as err:  # the request did not get through: its cause decides (time-outs retry)
                raise (err.reason if isinstance(err.reason, Exception) else SearchError(str(err.reason))) from None
            return self._observation(json.loads(body))

        return self._with_retries(query, call)

    @staticmethod
    def _observation(result) -> str:
        if not isinstance(result, dict):
            raise SearchError(f"the answer is a JSON {type(result).__name__}, not an object")
        if result.get("error"):  # SerpAPI's documented failure: HTTP 200 with {"error": "..."}
            if "hasn't returned any results" in str(result["error"]):
                return NO_RESULTS  # an answer, not a failure: Google found nothing
            raise SearchError(f"SerpAPI: {result['error']}")  # an invalid key, a used-up quota, ...
        box = result.get("answer_box") or {}
        candidates = [box.get("answer"), box.get("snippet"), (box.get("snippet_highlighted_words") or [None])[0]]
        organic = result.get("organic_results") or []
        candidates.append(organic[0].get("snippet") if organic else None)
        return next((str(c) for c in candidates if c), NO_RESULTS)

    def fingerprint(self) -> str:
        return digest([self.name, self.base_url])
