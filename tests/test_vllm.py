"""vLLM as the engine (inner=vllm): adapters checked, merged once and cached by key; the engine's defaults; and,
with the real model (slow), the same trajectories twice, whatever else shares a batch, and the HF path's turns."""
import errno
import importlib.metadata as md
import json
import sys

import pytest
from vllm_testing import BACKBONE, backbone_adapter, needs_vllm

from fireact_bench.harness.agent.loop import EPISODE_LINE, AgentOptions, Episode
from fireact_bench.harness.lmeval import vllm_engine

# ------------------------------------------------------------------------------ adapters, no engine

@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A two-layer Llama with SmolLM2's tokenizer and tied embeddings: merges in a second."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from fireact_bench.harness.lmeval.backbones import resolve_model

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("tiny-base")
    LlamaForCausalLM(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(resolve_model(BACKBONE)).save_pretrained(path)
    return path


def make_adapter(base, out, seed=0, r=8):
    """A LoRA adapter whose weights are all random (peft's default starts B at zero: no change to merge)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear", init_lora_weights=False)).save_pretrained(out)
    return out


def logits(model_dir, ids, adapter=None):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


def test_a_lora_adapter_is_merged_once_next_to_it_and_again_when_it_changes(tiny_base, tmp_path, monkeypatch):
    import torch

    adapter = make_adapter(tiny_base, tmp_path / "model")
    merged = vllm_engine.merged_model(str(tiny_base), adapter)
    assert merged == adapter / vllm_engine.MERGED
    key = json.loads((merged / vllm_engine.MERGE_RECORD).read_text())["key"]
    ids = [1, 17, 400, 2048, 9]
    base, tuned, served = logits(tiny_base, ids), logits(tiny_base, ids, adapter), logits(merged, ids)
    assert torch.allclose(served, tuned, atol=1e-5)  # the merged weights compute what base + adapter compute
    assert not torch.allclose(served, base, atol=1e-3)  # and the adapter changed something
    assert (merged / "tokenizer.json").exists()  # vLLM loads the folder alone: the base model's tokenizer is in it

    monkeypatch.setattr(vllm_engine, "_merge", lambda *args: pytest.fail("merged again"))
    assert vllm_engine.merged_model(str(tiny_base), adapter) == merged  # cached
    monkeypatch.undo()

    make_adapter(tiny_base, adapter, seed=1)  # retrained in place: the cached merge is stale
    again = vllm_engine.merged_model(str(tiny_base), adapter)
    assert again == merged and json.loads((again / vllm_engine.MERGE_RECORD).read_text())["key"] != key
    assert torch.allclose(logits(again, ids), logits(tiny_base, ids, adapter), atol=1e-5)
    assert sorted(p.name for p in adapter.iterdir() if p.name.startswith(".")) == []  # no temp or stale folder left


def test_an_adapter_folder_that_cannot_be_written_merges_into_the_cache_dir(tiny_base, tmp_path, monkeypatch):
    adapter = make_adapter(tiny_base, tmp_path / "model")
    monkeypatch.setenv("FIREACT_CACHE_DIR", str(tmp_path / "cache"))
    real = vllm_engine._merge

    def read_only(base, adapter_dir, key, target):
        if target.parent == adapter_dir:
            raise OSError(errno.EROFS, "Read-only file system")
        return real(base, adapter_dir, key, target)

    monkeypatch.setattr(vllm_engine, "_merge", read_only)
    merged = vllm_engine.merged_model(str(tiny_base), adapter)
    assert merged.parent == tmp_path / "cache" / "merged" and (merged / "model.safetensors").exists()


def lora_config(**fields):
    return {"peft_type": "LORA", "r": 16, "target_modules": ["q_proj", "v_proj"], **fields}


@pytest.mark.parametrize("config, mode, named", [
    ({"peft_type": "PREFIX_TUNING"}, "merge", "LoRA adapters only"),
    (lora_config(modules_to_save=["lm_head"]), "lora", "modules_to_save"),
    (lora_config(use_dora=True), "lora", "DoRA"),
    (lora_config(r=1024), "lora", "rank 1024"),
    (lora_config(target_modules=["q_proj", "embed_tokens"]), "merge", "ties them"),
    (lora_config(modules_to_save=["lm_head"]), "merge", "ties them"),
])
def test_an_adapter_the_engine_cannot_serve_is_refused_before_it_reaches_the_engine(tmp_path, config, mode, named):
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=named):
        vllm_engine.check_adapter(tmp_path, mode, {"tie_word_embeddings": True})


def test_what_the_engine_can_serve_passes_with_the_smallest_rank_that_holds_it(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps(lora_config(modules_to_save=["lm_head"])))
    vllm_engine.check_adapter(tmp_path, "merge", {"tie_word_embeddings": False})  # merged, a saved module is fine
    assert vllm_engine.lora_rank(lora_config(r=8)) == 8
    assert vllm_engine.lora_rank(lora_config(r=12)) == 16
    assert vllm_engine.lora_rank(lora_config(r=8, rank_pattern={"q_proj": 40})) == 64


# ---------------------------------------------------------------------------- vLLM, no model run

@needs_vllm
def test_lm_eval_reads_the_cpu_builds_version_and_no_one_else_sees_the_change():
    model = vllm_engine.lm_eval_vllm()
    assert model.__name__ == "VLLM"
    assert sys.modules["lm_eval.models.vllm_causallms"].version("vllm") == vllm_engine.vllm_version()
    assert md.version is vllm_engine._version  # importlib's own lookup is back in place for everyone else


@needs_vllm
def test_the_cpu_builds_kernel_swap_skips_objects_that_answer_every_attribute():
    class AnswersAll:  # as llvmlite's ffi.lib does (numba loads it; bm25s loads numba), __dict__ included
        def __getattr__(self, name):
            return lambda: None

    class Holder:
        kernel = "a kernel"

    vllm_engine._tolerate_foreign_attributes()
    from vllm.triton_utils import dispatcher

    assert dispatcher.vars(AnswersAll()) == {} and dispatcher.vars(Holder)["kernel"] == "a kernel"


@needs_vllm
def test_engine_defaults_fp32_prefix_caching_one_call_per_step_and_bf16_only_when_asked(tiny_base, tmp_path, monkeypatch):
    for name in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CPU_NUM_OF_RESERVED_CPU"):
        monkeypatch.delenv(name, raising=False)  # restored after the test, whatever engine_args sets
    args, info = vllm_engine.engine_args({"pretrained": str(tiny_base)})
    assert args["dtype"] == "float32" and args["enable_prefix_caching"] is True and args["batch_size"] >= 1 << 20
    assert info["dtype"] == "float32" and info["adapter"] is None
    if info["device"] == "cpu":
        assert args["kv_cache_memory_bytes"] == 2 << 30 and args["enforce_eager"] is True and info["in_process"]
        assert vllm_engine.os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"

    args, info = vllm_engine.engine_args({"pretrained": str(tiny_base), "dtype": "bfloat16", "kv_cache_memory_bytes": 1 << 30})
    assert args["dtype"] == info["dtype"] == "bfloat16" and args["kv_cache_memory_bytes"] == 1 << 30

    adapter = make_adapter(tiny_base, tmp_path / "model", r=8)
    args, info = vllm_engine.engine_args({"pretrained": str(tiny_base), "peft": str(adapter), "peft_mode": "lora"})
    assert args["lora_local_path"] == str(adapter) and args["max_lora_rank"] == 8 and info["adapter"]["served_as"] == "lora"
    args, info = vllm_engine.engine_args({"pretrained": str(tiny_base), "peft": str(adapter)})
    assert args["pretrained"] == str(adapter / "merged") and info["adapter"]["served_as"] == "merged"
    assert "lora_local_path" not in args
    with pytest.raises(ValueError, match="peft_mode"):
        vllm_engine.engine_args({"pretrained": str(tiny_base), "peft": str(adapter), "peft_mode": "unmerged"})


@needs_vllm
def test_lm_evals_vllm_model_sends_each_agent_step_to_the_engine_as_one_batch(tiny_base, monkeypatch):
    from types import SimpleNamespace

    from lm_eval.api.model import TemplateLM
    from transformers import AutoTokenizer

    from fireact_bench.harness.lmeval.agent_lm import FireActLM

    model = vllm_engine.lm_eval_vllm()
    lm = model.__new__(model)  # lm-eval's own generate_until, with no engine behind it
    TemplateLM.__init__(lm)
    lm.tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    lm.add_bos_token = lm.custom_prefix_token_id = lm.think_end_token = lm.lora_request = None
    lm._max_gen_toks, lm._max_length, lm.truncation_side, lm.data_parallel_size = 256, 8192, "left", 1
    calls = []

    def engine_call(requests, generate, sampling_params):
        calls.append([len(r) for r in requests])
        return [SimpleNamespace(outputs=[SimpleNamespace(text=f" {len(r)}")]) for r in requests]

    lm._model_generate = engine_call
    agent = FireActLM(inner="vllm", inner_lm=lm)
    contexts = [f"Question {i}:" + " word" * ((7 * i) % 16) for i in range(16)]
    gen_kwargs = {"until": ["\n"], "max_gen_toks": 8, "do_sample": False}
    for name in ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CPU_NUM_OF_RESERVED_CPU"):
        monkeypatch.delenv(name, raising=False)  # restored after the test, whatever engine_args sets
    lm.batch_size = vllm_engine.engine_args({"pretrained": str(tiny_base)})[0]["batch_size"]
    outputs = agent._generate(contexts, gen_kwargs)
    assert len(calls) == 1 and len(calls[0]) == 16  # the whole step in one call
    assert calls[0] == sorted(calls[0], reverse=True)  # ordered by length: the batch's make-up is its contexts'
    assert outputs == [f" {len(lm.tok_encode(c))}" for c in contexts]  # and the answers back in the step's order
    calls.clear()
    lm.batch_size = 1  # what lm-eval's --batch_size 1 (the sweep's) would have made of it
    agent._generate(contexts, gen_kwargs)
    assert len(calls) == 16


# ------------------------------------------------------------------------------ the real model

def trajectories(out, task="fireact_hotpotqa"):
    """(transcript, summary without the time) of each question, in question order."""
    rows = []
    for sample in sorted(out["samples"][task], key=lambda s: s["doc_id"]):
        transcript, summary = sample["resps"][0][0].rsplit("\n" + EPISODE_LINE, 1)
        rows.append((transcript, {k: v for k, v in json.loads(summary).items() if k != "wall_s"}))
    return rows


@pytest.mark.slow
@needs_vllm
def test_a_cell_run_twice_gives_the_same_trajectories_whatever_shares_its_batches():
    from fireact_bench.harness.data.questions import load_docs
    from fireact_bench.harness.lmeval.agent_lm import FireActLM
    from fireact_bench.harness.lmeval.api import evaluate

    # the cell through lm-eval, as the sweep runs it
    # 12 questions: the batches still change make-up at every step (`make regress` runs 50 this way, and repeats them)
    first = trajectories(evaluate(["fireact_hotpotqa"], model="vllm", model_args={"pretrained": BACKBONE}, limit=12,
                                  batch_size=1))
    assert len(first) == 12
    assert sum(summary["steps"] for _, summary in first) > 24  # many steps, so many batches of changing make-up

    # run again in the same process, as the sweep's next cell would: the engine reused, its prefix cache emptied; and
    # in other batch make-ups: the questions in two halves, the second with the prefix cache warm from the first
    docs = load_docs("hotpotqa")[:12]
    lm = FireActLM(inner="vllm", pretrained=BACKBONE)
    episodes = []
    for part in (docs[:6], docs[6:]):
        episodes += lm.run([Episode(key=d["id"], question=d["question"]) for d in part], AgentOptions())
    assert [e.transcript() for e in episodes] == [t for t, _ in first]


@pytest.mark.slow
@needs_vllm
def test_vllm_gives_the_hf_paths_greedy_turns_and_prompts():
    from fireact_bench.harness.data.questions import load_docs
    from fireact_bench.harness.lmeval.agent_lm import FireActLM

    docs = load_docs("hotpotqa")[20:28]
    options = AgentOptions(max_steps=2, max_gen_toks=64)
    models = {inner: FireActLM(inner=inner, pretrained=BACKBONE, additional_config={"batch_size": 1}) for inner in ("vllm", "hf")}
    turns = {inner: [e.transcript() for e in lm.run([Episode(key=d["id"], question=d["question"]) for d in docs], options)]
             for inner, lm in models.items()}
    assert turns["vllm"] == turns["hf"]
    # what the fine-tuned format and the token counts see: the same chat prompt, the same tokens
    chat = [{"role": "user", "content": docs[0]["question"]}, {"role": "assistant", "content": "Thought: I need to search"}]
    assert models["vllm"].apply_chat_template(chat) == models["hf"].apply_chat_template(chat)
    assert models["vllm"]._count_tokens(turns["hf"][0]) == models["hf"]._count_tokens(turns["hf"][0])
    info = models["vllm"].get_model_info()["fireact_engine"]
    assert info["engine"] == "vllm" and info["dtype"] == "float32" and info["prefix_caching"]


@pytest.mark.slow
@needs_vllm
def test_a_fine_tuned_adapter_is_served_merged_with_hf_peft_turns(tmp_path):
    from fireact_bench.harness.data.questions import load_docs
    from fireact_bench.harness.lmeval import vllm_engine as engine_module
    from fireact_bench.harness.lmeval.agent_lm import FireActLM

    backbone_adapter(tmp_path / "model", seed=0, r=16)  # a small random change of every linear layer: another model, still fluent
    docs = load_docs("hotpotqa")[:4]
    options = AgentOptions(method="ft", max_steps=2, max_gen_toks=48)  # the fine-tuned format: the chat template
    base_lm = FireActLM(inner="vllm", pretrained=BACKBONE)
    base_engine = engine_module.running()
    base_turns = [e.transcript() for e in base_lm.run([Episode(key=d["id"], question=d["question"]) for d in docs], options)]
    turns = {}
    for inner in ("vllm", "hf"):
        lm = FireActLM(inner=inner, pretrained=BACKBONE, peft=str(tmp_path / "model"), additional_config={"batch_size": 1})
        turns[inner] = [e.transcript() for e in lm.run([Episode(key=d["id"], question=d["question"]) for d in docs], options)]
        if inner == "vllm":
            assert lm.get_model_info()["fireact_engine"]["adapter"]["served_as"] == "merged"
            assert engine_module.running() is not base_engine  # the merged model's engine took the base model's place
    assert turns["vllm"] == turns["hf"] and turns["vllm"] != base_turns
    # the base model's fireact model still runs: its engine is built again in place of the merged one's
    again = [e.transcript() for e in base_lm.run([Episode(key=d["id"], question=d["question"]) for d in docs], options)]
    assert again == base_turns
