"""Search tools for the agents: one interface (`SearchBackend`), several backends, an sqlite cache.

Backends: "google" (Custom Search JSON API), "serpapi" (the FireAct paper's tool), "bm25" (a local
passage corpus) and "replay" (the real Google observations recorded in FireAct's data).
"""
from __future__ import annotations

import collections
import functools
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import sqlite3
import threading
import time
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from fireact_bench import paths
from fireact_bench.paths import cache_dir

logger = logging.getLogger(__name__)

NO_RESULTS = "No results found."


class SearchError(RuntimeError):
    """A search that could not be answered (after retries); messages never contain API keys."""


class CacheMiss(KeyError):
    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


def normalize_query(query: str) -> str:
    """Lowercase, drop punctuation (any Unicode P* character, so the trailing '?' too), squeeze spaces."""
    kept = "".join(ch for ch in query.lower() if not unicodedata.category(ch).startswith("P"))
    return " ".join(kept.split())


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


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


# --------------------------------------------------------------------------- live backends

_KEY_IN_URL = re.compile(r"((?:api_key|key)=)[^&\s'\"]+")


class _LiveBackend(SearchBackend):
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
        """call() -> observation; it raises _Retryable for rate limits / time-outs. Backoff doubles."""
        self.stats["calls"] += 1
        for attempt in range(self.max_retries + 1):
            try:
                return call()
            except _Retryable as err:
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


class _Retryable(Exception):
    pass


class _RedactFilter(logging.Filter):
    """googleapiclient logs request URLs (with key=...) at DEBUG; rewrite those records."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = _KEY_IN_URL.sub(r"\1***", record.getMessage()), ()
        return True


for _name in ("googleapiclient.discovery", "googleapiclient.http"):
    logging.getLogger(_name).addFilter(_RedactFilter())


class GoogleSearch(_LiveBackend):
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
                raise SearchError("google search needs a search engine id in the environment variable GOOGLE_CSE_ID")
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
            except HttpError as err:
                if err.resp.status == 429 or err.resp.status >= 500:
                    raise _Retryable(f"HTTP {err.resp.status}") from None
                raise SearchError(f"google search for {query!r} failed: {self._redact(str(err))}") from None
            except (TimeoutError, socket.timeout) as err:
                raise _Retryable(f"time-out ({err})") from None
            items = result.get("items") or []
            return " ".join(items[0].get("snippet", "").split()) if items else NO_RESULTS

        return self._with_retries(query, call)

    def fingerprint(self) -> str:
        return _digest(self.name, self.cse_id)  # the engine id shapes answers; the key does not


class SerpAPISearch(_LiveBackend):
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
                    raise _Retryable(f"HTTP {err.code}") from None
                raise SearchError(f"serpapi search for {query!r} failed: HTTP {err.code} {err.reason}") from None
            except (TimeoutError, socket.timeout) as err:
                raise _Retryable(f"time-out ({err})") from None
            except urllib.error.URLError as err:
                if isinstance(err.reason, (TimeoutError, socket.timeout)):
                    raise _Retryable(f"time-out ({err.reason})") from None
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
        return _digest(self.name, self.base_url)


# --------------------------------------------------------------------------- BM25 (local)


class _BM25Index:
    """bm25s over a list of texts, saved under cache_dir()/bm25/<content hash> and loaded when present."""

    def __init__(self, texts: list[str], content_hash: str, stats: collections.Counter):
        import bm25s
        import Stemmer

        self.texts = texts
        self._stemmer = Stemmer.Stemmer("english")
        self.path = cache_dir() / "bm25" / content_hash
        if not self.path.is_dir():
            retriever = bm25s.BM25()
            retriever.index(self._tokenize(texts), show_progress=False)
            # Build beside, then rename: a concurrent or killed build never leaves a half index.
            tmp = self.path.with_name(f"{content_hash}.tmp{os.getpid()}")
            retriever.save(str(tmp))
            try:
                tmp.rename(self.path)
            except OSError:  # another process won the race; its index is the same
                shutil.rmtree(tmp, ignore_errors=True)
            stats["index_builds"] += 1
        self._retriever = bm25s.BM25.load(str(self.path))

    def _tokenize(self, texts: list[str]) -> list[list[str]]:
        import bm25s

        return bm25s.tokenize(texts, stopwords="en", stemmer=self._stemmer, return_ids=False, show_progress=False)

    def top(self, query: str) -> str | None:
        # Tokens unknown to the corpus are dropped by bm25s; an all-unknown query scores 0 everywhere.
        docs, scores = self._retriever.retrieve(self._tokenize([query]), k=1, show_progress=False)
        return self.texts[int(docs[0, 0])] if scores[0, 0] > 0 else None


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return cut + " ..."


class BM25Search(SearchBackend):
    """Top passage of a local JSONL corpus ({"id"?, "title"?, "text"} per line)."""

    name = "bm25"

    def __init__(self, corpus: str | os.PathLike, *, max_chars: int = 600):
        super().__init__()
        self.corpus, self.max_chars = Path(corpus), max_chars
        raw = self.corpus.read_bytes()
        self._hash = hashlib.sha256(raw).hexdigest()[:16]
        texts = []
        for lineno, line in enumerate(raw.decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                texts.append(str(record["text"]))
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{self.corpus}:{lineno}: not a passage object with a \"text\" field ({err})") from None
        if not texts:
            raise ValueError(f"{self.corpus}: no passages")
        self._index = _BM25Index(texts, self._hash, self.stats)

    def search(self, query: str, *, key: str = "") -> str:
        self.stats["calls"] += 1
        top = self._index.top(query)
        return _truncate(top, self.max_chars) if top else NO_RESULTS

    def fingerprint(self) -> str:
        return _digest(self.name, self._hash, str(self.max_chars))


# --------------------------------------------------------------------------- replay of FireAct's recordings

# An action line, then its observation up to the next Thought/Action/Observation line (or the end).
_PAIR = re.compile(
    r"^Action:[ \t]*search\[([^\n]*)\][ \t]*\n+Observation:[ \t]*(.*?)[ \t]*(?=\n(?:Thought|Action|Observation)\b|\Z)",
    re.M | re.S,
)


def _transcripts(root: Path):
    """Every transcript in FireAct's data as one text (chat messages joined by newlines)."""
    for path in sorted(glob.glob(str(root / "data/finetune/gpt_format/*.jsonl"))):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield "\n".join(m["content"] for m in json.loads(line)["messages"])
    for path in sorted(glob.glob(str(root / "data/finetune/alpaca_format/*.json"))):
        with open(path, encoding="utf-8") as f:
            for record in json.load(f):
                yield record["output"]
    for path in sorted(glob.glob(str(root / "trajs/*.json"))):
        with open(path, encoding="utf-8") as f:
            for record in json.load(f).values():
                traj = record["traj"]
                yield traj if isinstance(traj, str) else "\n".join(m["content"] for m in traj)


def _is_real_observation(text: str) -> bool:
    return bool(text) and text != "None" and not text.startswith("Episode finished")


@functools.lru_cache(maxsize=4)
def _load_pairs(root: Path) -> tuple[tuple[str, str], ...]:
    return tuple(
        (q.strip(), obs)
        for text in _transcripts(root)
        for q, obs in _PAIR.findall(text)
        if _is_real_observation(obs)
    )


def recorded_pairs(data_dir: str | os.PathLike) -> list[tuple[str, str]]:
    """All (query, observation) pairs recorded in FireAct's data, with repeats, in file order."""
    return list(_load_pairs(Path(data_dir).resolve()))


class ReplaySearch(SearchBackend):
    """Exact (normalized) query → its recorded observation; otherwise BM25 over all recorded observations."""

    name = "replay"

    def __init__(self, data_dir: str | os.PathLike | None = None):
        super().__init__()
        pairs = _load_pairs(Path(data_dir or paths.data_dir()).resolve())
        by_query: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        for query, obs in pairs:
            by_query[normalize_query(query)][obs] += 1
        # Several recordings of one query: the most frequent, ties to the lexicographically first.
        self._exact = {q: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for q, c in by_query.items()}
        self._pool = sorted({obs for _, obs in pairs})
        self._hash = _digest(*(f"{q}\t{o}" for q, o in sorted(pairs)))
        self._index: _BM25Index | None = None  # built on the first query that needs it

    def recorded_observations(self) -> list[str]:
        return list(self._pool)

    def search(self, query: str, *, key: str = "") -> str:
        self.stats["calls"] += 1
        exact = self._exact.get(normalize_query(query))
        if exact is not None:
            self.stats["exact"] += 1
            return exact
        if self._index is None:
            self._index = _BM25Index(self._pool, f"replay-{self._hash}", self.stats)
        self.stats["bm25"] += 1
        return self._index.top(query) or NO_RESULTS

    def fingerprint(self) -> str:
        return _digest(self.name, self._hash)


# --------------------------------------------------------------------------- persistent cache


class SearchCache(SearchBackend):
    """sqlite cache in front of a backend, keyed by (backend.name, normalized query).

    mode "record": misses go to the backend and are stored (one commit per write, so a kill loses
    nothing); "replay_only": a miss raises CacheMiss, so a run provably uses only cached answers.
    WAL mode lets several processes share the file.
    """

    MODES = ("record", "replay_only")

    def __init__(self, backend: SearchBackend, path: str | os.PathLike, mode: str = "record"):
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"cache mode {mode!r}: expected one of {', '.join(self.MODES)}")
        self.backend, self.path, self.mode = backend, Path(path), mode
        self.name = backend.name
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS searches (backend TEXT, query TEXT, observation TEXT, PRIMARY KEY (backend, query))"
        )
        self._db.commit()

    def search(self, query: str, *, key: str = "") -> str:
        self.stats["calls"] += 1
        norm = normalize_query(query)
        with self._lock:
            row = self._db.execute(
                "SELECT observation FROM searches WHERE backend=? AND query=?", (self.name, norm)
            ).fetchone()
        if row:
            self.stats["cache_hits"] += 1
            return row[0]
        if self.mode == "replay_only":
            raise CacheMiss(f"{self.name} search {query!r} is not in the cache {self.path} (mode replay_only)")
        observation = self.backend.search(query, key=key)
        with self._lock:
            # OR IGNORE: another process may have stored the same query meanwhile; first one wins.
            self._db.execute("INSERT OR IGNORE INTO searches VALUES (?, ?, ?)", (self.name, norm, observation))
            self._db.commit()
        self.stats["cache_misses"] += 1
        return observation

    def fingerprint(self) -> str:
        with self._lock:
            rows = self._db.execute(
                "SELECT query, observation FROM searches WHERE backend=? ORDER BY query", (self.name,)
            ).fetchall()
        content = _digest(*(f"{q}\t{o}" for q, o in rows))
        return _digest("cache", self.mode, content, self.backend.fingerprint())

    def close(self) -> None:
        self._db.close()


# --------------------------------------------------------------------------- registry

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
