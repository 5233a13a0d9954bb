"""What a result was made with: package versions, and fingerprints of the project's own source files.

A source fingerprint goes into every cell id and adapter key (see benchmark/identity.py), so a change
to the code that produced a number re-runs it instead of reusing a stale one.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata as md
import platform
from pathlib import Path

PACKAGES = ("fireact-bench", "lm_eval", "transformers", "torch", "peft", "accelerate", "datasets", "bm25s",
            "vllm", "bitsandbytes")
PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # the folder holding harness/, adapters/, tasks/


@functools.lru_cache(maxsize=1)
def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


@functools.cache
def source_fingerprint(*relpaths: str) -> str:
    """Hash of the project's files under the given paths (relative to the package root: folders or files),
    .py and task .yaml files only, by relative path and content."""
    h = hashlib.sha256()
    for rel in relpaths:
        root = PACKAGE_ROOT / rel
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.suffix in (".py", ".yaml") or p.name.startswith("_fireact"))
        if not files:
            raise FileNotFoundError(f"no source files under {root}")
        for path in files:
            if "__pycache__" in path.parts:
                continue
            h.update(str(path.relative_to(PACKAGE_ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]
