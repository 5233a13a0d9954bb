"""A persistent sqlite cache in front of any backend."""
from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from pathlib import Path

from fireact_bench.harness.files import digest
from fireact_bench.harness.tools.base import CacheMiss, SearchBackend, normalize_query


class SearchCache(SearchBackend):
    """sqlite cache in front of a backend, keyed by (backend.name, normalized query).

    mode "record": misses go to the backend and are stored (one commit per write, so a kill loses
    nothing); "replay_only": a miss raises CacheMiss, so a run provably uses only cached answers, and the
    file is opened read-only, so a cache on a read-only file or folder replays. WAL mode lets several
    processes share the file. Every sqlite error names the file.
    """

    MODES = ("record", "replay_only")

    def __init__(self, backend: SearchBackend, path: str | os.PathLike, mode: str = "record"):
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"cache mode {mode!r}: expected one of {', '.join(self.MODES)}")
        self.backend, self.path, self.mode = backend, Path(path), mode
        self.name = backend.name
        self._lock = threading.Lock()
        with self._named():
            if mode == "replay_only":
                self._db = sqlite3.connect(self._read_only_uri(), uri=True, timeout=60, check_same_thread=False)
                self._db.execute("SELECT 1 FROM searches LIMIT 1")  # not a cache (or corrupt): fail now, not mid-run
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS searches (backend TEXT, query TEXT, observation TEXT, PRIMARY KEY (backend, query))"
                )
                self._db.commit()

    def _read_only_uri(self) -> str:
        uri = self.path.resolve().as_uri() + "?mode=ro"
        # A WAL database is read through its -shm file, which a read-only folder cannot take. There, with no -wal
        # file beside it, no writer can be at work on the file: open it as immutable, which needs neither.
        if not os.access(self.path.parent, os.W_OK) and not Path(f"{self.path}-wal").exists():
            uri += "&immutable=1"
        return uri

    @contextlib.contextmanager
    def _named(self):
        """sqlite's errors say "file is not a database" or "attempt to write a readonly database", but not which."""
        try:
            yield
        except sqlite3.Error as err:
            raise type(err)(f"search cache {self.path} (mode {self.mode}): {err}") from None

    def search(self, query: str, *, key: str = "") -> str:
        self.stats["calls"] += 1
        norm = normalize_query(query)
        with self._lock, self._named():
            row = self._db.execute(
                "SELECT observation FROM searches WHERE backend=? AND query=?", (self.name, norm)
            ).fetchone()
        if row:
            self.stats["cache_hits"] += 1
            return row[0]
        if self.mode == "replay_only":
            raise CacheMiss(f"{self.name} search {query!r} is not in the cache {self.path} (mode replay_only)")
        observation = self.backend.search(query, key=key)
        with self._lock, self._named():
            # OR IGNORE: another process may have stored the same query meanwhile; first one wins.
            self._db.execute("INSERT OR IGNORE INTO searches VALUES (?, ?, ?)", (self.name, norm, observation))
            self._db.commit()
        self.stats["cache_misses"] += 1
        return observation

    def fingerprint(self) -> str:
        with self._lock, self._named():
            rows = self._db.execute(
                "SELECT query, observation FROM searches WHERE backend=? ORDER BY query", (self.name,)
            ).fetchall()
        content = digest(rows)
        return digest(["cache", self.mode, content, self.backend.fingerprint()])

    def close(self) -> None:
        self._db.close()
