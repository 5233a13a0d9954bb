"""Per-key lock files, so that two sweeps on one results folder never run the same cell or train the same adapter.

    cells/<cell id>.lock         held while a cell is evaluated
    adapters/<adapter key>.lock  held while an adapter is trained

A lock is a file created with O_EXCL (atomic on a local disk and on NFS v3+) that holds its owner's host, pid
and start time. While the owner works, a heartbeat thread refreshes the file's mtime every `heartbeat_s`.
The lock is stale, and the next comer takes it over, when its owner is gone:
  - a pid that is no longer alive on this host (a killed sweep is taken over at once), or
  - no heartbeat for `stale_s` seconds, from any host (the only sign a dead job on another node leaves).
Taking over goes through a second O_EXCL file (<lock>.break): of two processes that find the same stale
lock, one removes it and the other then sees the new owner's lock, never two owners at once.

Locks only save work. Correctness still rests on what it rested on before: results are content-addressed
and written atomically (harness/files.py), so even a lock lost to a long stall cannot corrupt a result.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

HEARTBEAT_S = 30   # how often an owner touches its lock
STALE_S = 300      # a lock untouched this long has no live owner anywhere
POLL_S = 5         # how often a waiter looks again
HOST = socket.gethostname()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    try:  # a killed child that nobody has reaped yet is a zombie: dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class Lock:
    def __init__(self, path: str | os.PathLike, heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S):
        self.path, self.heartbeat_s, self.stale_s = Path(path), heartbeat_s, stale_s
        self.token = uuid.uuid4().hex  # tells our lock from a later owner's at the same path
        self.holder: dict | None = None  # the live owner found by a failed acquire
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # ------------------------------------------------------------------------------ taking and giving back

    def acquire(self, wait: bool = False) -> bool:
        """Take the lock; False if a live owner holds it (with wait: poll until it is ours)."""
        told = False
        while True:
            if self._create():
                self._stop.clear()
                self._beat = threading.Thread(target=self._heartbeat, daemon=True, name=f"heartbeat {self.path.name}")
                self._beat.start()
                return True
            owner = self.read()
            if owner is None:  # released between our create and our read: try again at once
                continue
            if self.is_stale(owner):
                log.warning("taking over stale lock %s (owner %s)", self.path, describe(owner))
                self._break()
                continue
            self.holder = owner
            if not wait:
                return False
            if not told:
                log.warning("waiting for %s: held by %s", self.path, describe(owner))
                told = True
            time.sleep(POLL_S)

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
        if (self.read() or {}).get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> Lock:
        self.acquire(wait=True)
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # ------------------------------------------------------------------------------ the file

    def read(self) -> dict | None:
        """The owner record with the file's mtime as `beat`; {} for a lock being written; None if there is none."""
        try:
            beat, text = self.path.stat().st_mtime, self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            owner = json.loads(text)
        except ValueError:  # created, content not yet written: a live owner, judged by mtime alone
            owner = {}
        return {**owner, "beat": beat}

    def is_stale(self, owner: dict) -> bool:
        if time.time() - owner["beat"] > self.stale_s:
            return True
        return owner.get("host") == HOST and isinstance(owner.get("pid"), int) and not _alive(owner["pid"])

    def _create(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            json.dump({"host": HOST, "pid": os.getpid(), "started": time.time(), "token": self.token}, fh)
        return True

    def _break(self) -> None:
        """Remove the lock if it is still stale, holding <lock>.break while deciding."""
        breaker = self.path.with_name(self.path.name + ".break")
        try:
            os.close(os.open(breaker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:  # another process is breaking it; one that died doing so (a millisecond's work) left this
            try:
                if time.time() - breaker.stat().st_mtime > 60:
                    breaker.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
            time.sleep(0.1)
            return
        try:
            owner = self.read()  # again, under the breaker: a new owner's fresh lock is not stale
            if owner is not None and self.is_stale(owner):
                self.path.unlink(missing_ok=True)
        finally:
            breaker.unlink(missing_ok=True)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if (self.read() or {}).get("token") != self.token:
                log.warning("lost lock %s (taken over after a stall?); the work goes on, its result is written atomically", self.path)
                return
            os.utime(self.path)


def describe(owner: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner["started"])) if owner.get("started") else "?"
    return f"{owner.get('host', '?')}:{owner.get('pid', '?')} since {started}"
