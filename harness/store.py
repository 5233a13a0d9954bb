"""What every stored result shares: atomic JSON writes and the package versions it was made with."""
from __future__ import annotations

import functools
import importlib.metadata as md
import json
import os
import platform
from pathlib import Path

PACKAGES = ("fireact-bench", "lm_eval", "transformers", "torch", "peft", "accelerate", "datasets", "bm25s", "bitsandbytes")


def write_json(path: Path, data) -> None:
    """Atomic: a temp file beside the target, fsync'd, then renamed over it; readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1, ensure_ascii=False, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@functools.lru_cache(maxsize=1)
def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out
