"""Where things live: settings read from the environment, never constants.

FIREACT_DATA_DIR   FireAct's released data (default: ../shared/data/fireact when it exists,
                   else each file is fetched once from the FireAct repository into the cache).
FIREACT_CACHE_DIR  models materialised from GGUF, BM25 indexes, search caches (default ~/.cache/fireact_bench).
"""
from __future__ import annotations

import os
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    path = Path(os.environ.get("FIREACT_CACHE_DIR", Path.home() / ".cache" / "fireact_bench"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir() -> Path:
    """FireAct's data directory: the setting, else ../shared beside the repo or cwd, else the download cache."""
    if os.environ.get("FIREACT_DATA_DIR"):
        path = Path(os.environ["FIREACT_DATA_DIR"]).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"FIREACT_DATA_DIR={path} is not a directory")
        return path
    for base in (Path.cwd(), _REPO_ROOT):
        candidate = base.parent / "shared" / "data" / "fireact"
        if candidate.is_dir():
            return candidate
    return cache_dir() / "fireact-data"
