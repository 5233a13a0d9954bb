"""Shared by the vLLM tests (test_vllm.py, test_vllm_lora.py): whether vLLM is here, the embedded backbone, and
LoRA adapters of it that change its turns but keep it fluent."""
import pytest

from fireact_bench.harness.lmeval import vllm_engine

BACKBONE = "smollm2-135m-instruct"


def has_vllm() -> bool:
    try:
        vllm_engine.vllm_version()
    except ModuleNotFoundError:
        return False
    return True


needs_vllm = pytest.mark.skipif(not has_vllm(), reason="vLLM is not installed (make install)")


def backbone_adapter(out, seed=0, r=16, scale=0.02):
    """A LoRA adapter of the embedded backbone on every linear layer, all its weights random (peft's default starts
    B at zero: no change) and B scaled down to `scale`: another model, still fluent. Returns its folder."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from fireact_bench.harness.lmeval.backbones import resolve_model

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(resolve_model(BACKBONE), dtype=torch.float32),
                           LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear", init_lora_weights=False))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(scale)
    model.save_pretrained(out)
    return out
