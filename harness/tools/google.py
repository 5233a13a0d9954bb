"""Google Custom Search JSON API through google-api-python-client."""
from __future__ import annotations

import os

from fireact_bench.harness.files import digest
from fireact_bench.harness.tools.base import NO_RESULTS, SearchError
from fireact_bench.harness.tools.live import LiveBackend, Retryable


class GoogleSearch(LiveBackend):
    """Google Custom Search JSON API; observation = snippet of the first result."""

    name = "google"
    key_env = "GOOGLE_API_KEY"

    def __init__(self, *, http=None, cse_id: str | None = None, **retry_options):
        super().__init__(**retry_options)
        self._http = http
        self.cse_id = cse_id or os.environ.get("GOOGLE_CSE_ID", "")
        self._service = None

    def _client(self):
        if self._service is None:
            import googleapiclient.discovery
            import httplib2

            if not self.cse_id:
                raise SearchError("no search engine id: set the environment variable GOOGLE_CSE_ID")
            http = self._http or httplib2.Http(timeout=self.timeout)
            self._service = googleapiclient.discovery.build(
                "customsearch", "v1", developerKey=self._api_key(), http=http, static_discovery=True
            )
        return self._service

    def search(self, query: str, *, key: str = "") -> str:
        from googleapiclient.errors import HttpError

        def call():
            try:
                result = self._client().cse().list(q=query, cx=self.cse_id, num=1).execute()
            except HttpError as err:  # its str() holds the request URL, key included: only status and reason
                if err.resp.status == 429 or err.resp.status >= 500:
                    raise Retryable(f"HTTP {err.resp.status}") from None
                raise SearchError(f"HTTP {err.resp.status} {err.reason}") from None
            # a malformed answer fails here, and leaves as a SearchError like every failure (LiveBackend)
            items = result.get("items") or []
            return " ".join(items[0].get("snippet", "").split()) if items else NO_RESULTS

        return self._with_retries(query, call)

    def fingerprint(self) -> str:
        return digest([self.name, self.cse_id])  # the engine id shapes answers; the key does not

