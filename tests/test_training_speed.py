"""The training's speed levers keep its numbers, on the real backbone (SmolLM2-135M) and FireAct's HotpotQA ReAct
trajectories in the chat format: packed rows lose what they lose unpacked, the label-only loss is the model's
loss, and runs of the default recipe follow BASELINE_RECIPE's losses step by step (2 steps without dropout here;
8 of the real recipe in the slow test).
"""
import json
from pathlib import Path

import pytest
import torch

from fireact_bench.adapters import finetune as ft
from fireact_bench.adapters.finetune import BASELINE_RECIPE, FinetuneConfig, finetune, plan_training, preset, training_speed
from fireact_bench.adapters.sft_data import IGNORE, tokenize_set

# (config overrides of the `small` preset, trajectories): every step takes micro_batch x grad_accum of them
SHORT = (dict(micro_batch=2, grad_accum=2, max_len=256, max_steps=2, save_steps=100), 8)
FULL = (dict(micro_batch=2, grad_accum=2, max_len=320, max_steps=8, save_steps=100), 32)


def _plan(overrides: dict, size: int):
    """(config, training set, tokenizer): the first `size` trajectories of the mix in its seeded order."""
    from transformers import AutoTokenizer

    config, ts, _ = plan_training(preset("small", **overrides), size=size)
    return config, ts, AutoTokenizer.from_pretrained(ft.resolve_model(config.base_model))


@pytest.fixture(scope="module")
def planned():
    return _plan(*SHORT)


@pytest.fixture(scope="module")
def model(planned):
    """The backbone with a LoRA adapter whose B matrices are random, so that the adapter changes the outputs."""
    config = planned[0]
    torch.manual_seed(0)
    model = ft._load_model(config, ft.resolve_model(config.base_model))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    return model.eval()


def _row_losses(logits, labels, lengths):
    """Per example: the sum of its tokens' losses (position i predicts label i+1), from [1, sum(lengths), V] logits
    and labels of the examples laid end to end."""
    out, start = [], 0
    for n in lengths:
        row_logits, row_labels = logits[0, start:start + n - 1].float(), labels[start + 1:start + n]
        out.append(torch.nn.functional.cross_entropy(row_logits, row_labels, ignore_index=IGNORE, reduction="sum").item())
        start += n
    return out


def test_packed_rows_lose_what_they_lose_unpacked(planned, model):
    """Packing (transformers' DataCollatorWithFlattening, SDPA attention): every example's loss equals its loss run
    alone, which shows the mask keeps the examples apart; with a KV cache they would see each other."""
    config, ts, tokenizer = planned
    rows = tokenize_set(ts, tokenizer, config.max_len)[0][:3]
    lengths = [len(r["input_ids"]) for r in rows]
    labels = torch.tensor([t for r in rows for t in r["labels"]])
    batch = ft._collator(config, tokenizer)(rows)
    assert set(batch) == {"input_ids", "labels", "position_ids"} and batch["input_ids"].shape == (1, sum(lengths))
    assert batch["position_ids"][0].tolist() == [i for n in lengths for i in range(n)]
    with torch.no_grad():
        alone = [_row_losses(model(input_ids=torch.tensor([r["input_ids"]]), use_cache=False).logits, torch.tensor(r["labels"]), [n])[0]
                 for r, n in zip(rows, lengths)]
        packed = _row_losses(model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits, labels, lengths)
        leaky = _row_losses(model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=True).logits, labels, lengths)
    assert model.config._attn_implementation == "sdpa"
    assert packed == pytest.approx(alone, rel=1e-5)
    assert leaky[0] == pytest.approx(alone[0], rel=1e-5) and leaky[1:] != pytest.approx(alone[1:], rel=1e-3)


@pytest.mark.parametrize("packing", [True, False])
def test_label_only_logits_give_the_model_s_loss(planned, model, packing):
    """The label-only loss (output layer at the label-bearing positions only) is the model's own loss, for packed and
    padded batches, normalised by the accumulated batch's label count as the Trainer passes it."""
    config, ts, tokenizer = planned
    config = FinetuneConfig(**{**config.__dict__, "packing": packing})
    rows = tokenize_set(ts, tokenizer, config.max_len)[0][1:3]
    batch = ft._collator(config, tokenizer)(rows)
    count = torch.tensor(100 + sum(label != IGNORE for r in rows for label in r["labels"][1:]))
    label_only = ft._trainer_class(FinetuneConfig(label_only_logits=True))
    with torch.no_grad():
        ours = label_only.compute_loss(None, model, dict(batch), num_items_in_batch=count)
        theirs = model(**batch, use_cache=False, num_items_in_batch=count).loss
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)


def test_an_inaccurate_onednn_matmul_is_not_used(monkeypatch):
    """oneDNN's fp32 matmuls are used only when the check finds them fp32-accurate (on AMX CPUs they may run in
    bf16); PyTorch's setting is restored afterwards."""
    settings = torch.backends.mkldnn.matmul
    before = settings.fp32_precision
    with ft._fp32_matmul("onednn", cuda=False) as record:  # fp32-accurate on AMD and AVX-512 CPUs without AMX
        accurate = record["error"] <= ft.MATMUL_TOLERANCE
        assert record["used"] == ("onednn" if accurate else "default") and settings.fp32_precision == ("bf16" if accurate else before)
    monkeypatch.setattr(ft, "matmul_error", lambda: 4e-3)  # what a bf16 matmul measures
    with ft._fp32_matmul("onednn", cuda=False) as record:
        assert record == {"requested": "onednn", "used": "default", "error": 4e-3, "tolerance": ft.MATMUL_TOLERANCE}
        assert settings.fp32_precision == before
    with ft._fp32_matmul("default", cuda=False) as record:
        assert record["used"] == "default" and record["error"] is None
    assert settings.fp32_precision == before


def _runs(planned, tmp_path_factory, **recipes) -> dict:
    """Manifests of runs on the same data: name -> the recipe's config overrides."""
    config, ts, _ = planned
    out = {}
    for name, recipe in recipes.items():
        folder = finetune(ts, FinetuneConfig(**{**config.__dict__, **recipe}), tmp_path_factory.mktemp(name))
        out[name] = json.loads((folder / "manifest.json").read_text())
    return out


def _losses(runs: dict, name: str) -> list[float]:
    return [e["loss"] for e in runs[name]["loss_history"]]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """training_speed's runs of the default recipe and of BASELINE_RECIPE without dropout (so that a run's losses
    are a function of the data and the arithmetic alone): 2 steps of two micro-batches, on SHORT's trajectories."""
    out = {}
    for name, recipe in (("default", {}), ("baseline", BASELINE_RECIPE)):
        config = preset("small", **SHORT[0], dropout=0.0, **recipe)
        speed = training_speed(config, tmp_path_factory.mktemp(name), steps=config.max_steps)
        out[name] = {**json.loads((Path(speed["out_dir"]) / "manifest.json").read_text()), "speed": speed}
    return out


def test_the_default_recipe_computes_the_baseline_s_losses(runs):
    """Every lever at once: the same per-step losses to float error (1e-4), the same tokens (none of them padding)."""
    new, old = _losses(runs, "default"), _losses(runs, "baseline")
    assert len(new) == len(old) == SHORT[0]["max_steps"]
    assert new == pytest.approx(old, abs=1e-4)
    assert runs["default"]["tokens_seen"] == runs["baseline"]["tokens_seen"]


@pytest.mark.slow
def test_eight_steps_of_the_small_recipe_keep_the_baseline_s_losses(tmp_path_factory):
    """The real recipe (LoRA dropout 0.05), 8 steps of 4 trajectories. Without packing the levers give the baseline's
    losses to float error (the same dropout masks are drawn). Packing draws other masks (the batch has another
    shape): step 1 is still exact (the adapter is zero, dropout does not matter yet), later steps move within the
    dropout noise of 4-trajectory steps (measured up to 2.5e-3; 3e-4 with the preset's 16-trajectory steps, make perf)."""
    runs = _runs(_plan(*FULL), tmp_path_factory, default={}, unpacked={"packing": False}, baseline=BASELINE_RECIPE)
    new, unpacked, old = _losses(runs, "default"), _losses(runs, "unpacked"), _losses(runs, "baseline")
    assert len(new) == len(old) == FULL[0]["max_steps"]
    assert unpacked == pytest.approx(old, abs=1e-4)
    assert new[0] == pytest.approx(old[0], abs=1e-5)
    assert new == pytest.approx(old, abs=4e-3) and new[-1] < 0.5 * new[0]
    assert runs["default"]["tokens_seen"] == runs["baseline"]["tokens_seen"]


def test_the_manifest_records_the_recipe(runs):
    recipe, baseline = runs["default"]["recipe"], runs["baseline"]["recipe"]
    assert {k: recipe[k] for k in ("packing", "label_only_logits", "gradient_checkpointing", "precision")} == {
        "packing": True, "label_only_logits": True, "gradient_checkpointing": False, "precision": "fp32"}
    assert recipe["fp32_matmul"]["requested"] == "onednn" and recipe["fp32_matmul"]["error"] is not None
    assert recipe["fp32_matmul"]["used"] == ("onednn" if recipe["fp32_matmul"]["error"] <= ft.MATMUL_TOLERANCE else "default")
    assert baseline["fp32_matmul"] == {"requested": "default", "used": "default", "error": None, "tolerance": ft.MATMUL_TOLERANCE}
    assert (baseline["packing"], baseline["label_only_logits"], baseline["gradient_checkpointing"]) == (False, False, True)
    assert recipe["attn_implementation"] == "sdpa" and recipe["allocator"] in ("tcmalloc", "default")
    history = runs["default"]["loss_history"]
    assert [e["step"] for e in history] == list(range(1, SHORT[0]["max_steps"] + 1))
    assert all(a["tokens_seen"] < b["tokens_seen"] and a["wall_time_s"] <= b["wall_time_s"] for a, b in zip(history, history[1:]))
    assert history[-1]["tokens_seen"] == runs["default"]["tokens_seen"] and runs["default"]["tokens_per_s"] > 0


def test_training_speed_reports_tokens_per_second(runs):
    """What `make perf` builds on: a few steps of a recipe -> tokens/s past the warm-up step, and the losses."""
    for run in runs.values():
        speed = run["speed"]
        assert speed["steps"] == 2 and speed["losses"] == [e["loss"] for e in run["loss_history"]]
        assert speed["tokens_per_s"] > 0 and speed["seconds_per_step"] > 0 and speed["tokens_seen"] == run["tokens_seen"]
        assert speed["recipe"] == run["recipe"] and run["composition"]["size"] == SHORT[1]
