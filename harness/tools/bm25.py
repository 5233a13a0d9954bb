"""BM25 over a local passage corpus (bm25s); the index is built once per content hash and cached on disk."""
from __future__ import annotations

import collections
import hashlib
import json
import os
import shutil
from pathlib import Path

from fireact_bench.harness.files import digest
from fireact_bench.harness.settings import cache_dir
from fireact_bench.harness.tools.base import NO_RESULTS, SearchBackend, truncate


class BM25Index:
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
        self._index = BM25Index(texts, self._hash, self.stats)

    def search(self, query: str, *, key: str = "") -> str:
        self.stats["calls"] += 1
        top = self._index.top(query)
        return truncate(top, self.max_chars) if top else NO_RESULTS

    def fingerprint(self) -> str:
        return digest([self.name, self._hash, self.max_chars])

