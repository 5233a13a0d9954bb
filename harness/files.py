"""The two helpers every stored result uses: one atomic writer and one content digest.

Atomic: the text goes to a temp file beside the target, is fsync'd, then renamed over it, so a reader
(or a rerun after a kill) sees the old file or the new one, never half of one.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def write_text(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)  # a full disk or a kill must not leave a temp file behind forever
        if isinstance(err, OSError):  # one line that names the file, not a chain of tracebacks
            raise OSError(err.errno, f"cannot write {path}: {err.strerror or err}") from None
        raise
    return path


def check_writable(folder: str | os.PathLike) -> None:
    """Fail now, naming the folder, rather than after hours of work whose result cannot be stored."""
    write_text(Path(folder) / f".write-probe.{os.getpid()}", "")
    (Path(folder) / f".write-probe.{os.getpid()}").unlink()


def write_json(path: str | os.PathLike, data) -> Path:
    return write_text(path, json.dumps(data, indent=1, ensure_ascii=False, default=str))


def write_lines(path: str | os.PathLike, lines) -> Path:
    """One JSON document a line (JSONL)."""
    return write_text(path, "".join(json.dumps(line, ensure_ascii=False, default=str) + "\n" for line in lines))


def digest(value) -> str:
    """16 hex digits identifying a JSON-able value (dict keys sorted); the one digest of the project."""
    body = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(body.encode("utf-8")).hexdigest()[:16]


def file_digest(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]
