"""Where things live: FireAct's data directory and the cache directory (settings, not constants).

FIREACT_DATA_DIR   FireAct's released data (default: ../shared/data/fireact when it exists,
                   else it is fetched once from the FireAct repository into the cache).
FIREACT_CACHE_DIR  models materialised from GGUF, BM25 indexes, search caches (default ~/.cache/fireact_bench).
"""
from __future__ import annotations

import os
import urllib.request
from pathlib import Path

# The FireAct commit the project's numbers refer to (see SOURCE.md in the shared data).
FIREACT_COMMIT = "94c6189f04b10fccae6bcd97a4632d6119266899"
FIREACT_RAW = f"https://raw.githubusercontent.com/anchen1011/FireAct/{FIREACT_COMMIT}/"
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


def data_file(relpath: str) -> Path:
    """One file of FireAct's release, fetched from the pinned commit on first use when not present locally."""
    path = data_dir() / relpath
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    url = FIREACT_RAW + relpath
    tmp = path.with_suffix(path.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            out.write(response.read())
    except OSError as err:
        raise FileNotFoundError(
            f"{relpath} is not in the FireAct data directory {data_dir()} and could not be fetched "
            f"from {url} ({err}); set FIREACT_DATA_DIR to a copy of FireAct's data"
        ) from err
    os.replace(tmp, path)
    return path
