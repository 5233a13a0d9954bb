"""Fine-tuned adapters served as LoRA requests (peft_mode=lora): every adapter of a base model on one vLLM engine,
each model's requests carrying its own adapter, the base model on that engine too; a grid chooses the mode per
model and the leaderboard says how each adapter was served; engine arguments (tensor/data parallel) pass through.
The real model (slow): two adapters on one engine answer as their merged models do."""
import itertools
import json
from types import SimpleNamespace

import pytest
import yaml
from vllm_testing import BACKBONE, backbone_adapter, needs_vllm

from fireact_bench.harness.lmeval import vllm_engine


@pytest.fixture
def no_device(monkeypatch, tmp_path):
    """engine_args on a GPU machine and engine() with a stand-in for lm-eval's vllm model: no vLLM import, no engine.
    Returns the args of every engine built and the base model's folder."""
    for name in ("VLLM_LOGGING_LEVEL", "VLLM_CPU_KVCACHE_SPACE"):
        monkeypatch.delenv(name, raising=False)  # restored after the test, whatever engine_args sets
    monkeypatch.setattr(vllm_engine, "_device", lambda: "cuda")
    monkeypatch.setattr(vllm_engine, "vllm_version", lambda: "0.32.0")
    monkeypatch.setattr(vllm_engine, "_tolerate_foreign_attributes", lambda: None)
    monkeypatch.setattr(vllm_engine, "_new_lora_request", lambda name, lora_id, path: SimpleNamespace(
        lora_name=name, lora_int_id=lora_id, lora_path=path))
    monkeypatch.setattr(vllm_engine, "_running", {})
    monkeypatch.setattr(vllm_engine, "_loras", {})
    monkeypatch.setattr(vllm_engine, "_lora_ids", itertools.count(1))
    built = []

    class StandIn:  # lm-eval's vllm model: builds an engine from its args, holds the request it was built with
        @staticmethod
        def create_from_arg_obj(args, extra):
            built.append(dict(args))
            engine = SimpleNamespace(reset_prefix_cache=lambda: None, llm_engine=SimpleNamespace(
                engine_core=SimpleNamespace(shutdown=lambda: None)))
            return SimpleNamespace(model=engine, lora_request="lm-eval's own")

    monkeypatch.setattr(vllm_engine, "lm_eval_vllm", lambda: StandIn)
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"tie_word_embeddings": True}))
    return built, str(base)


def fake_adapter(path, r=8, weights=b"A"):
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": r, "target_modules": ["q_proj", "v_proj"]}))
    (path / "adapter_model.safetensors").write_bytes(weights)
    return str(path)


# ------------------------------------------------------------------------------ no engine

def test_parallelism_and_other_model_args_reach_lm_evals_vllm_model_untouched(no_device, tmp_path):
    _, base = no_device
    asked = {"pretrained": base, "tensor_parallel_size": 2, "data_parallel_size": 4, "max_model_len": 4096, "dtype": "bfloat16"}
    args, info = vllm_engine.engine_args(asked)
    assert {k: args[k] for k in asked} == asked and info["dtype"] == "bfloat16"
    args, _ = vllm_engine.engine_args({**asked, "peft": fake_adapter(tmp_path / "a"), "peft_mode": "lora"})
    assert {k: args[k] for k in asked} == asked  # a LoRA engine too


def test_adapters_of_one_base_model_share_one_engine_each_request_carrying_its_own(no_device, tmp_path):
    built, base = no_device
    a, b = fake_adapter(tmp_path / "a", weights=b"A"), fake_adapter(tmp_path / "b", weights=b"B")
    lora = {path: vllm_engine.engine_args({"pretrained": base, "peft": path, "peft_mode": "lora"}) for path in (a, b)}
    args_a, info_a = lora[a]
    assert args_a["enable_lora"] is True and args_a["max_lora_rank"] == 8 and args_a["max_loras"] == 1
    assert info_a["adapter"]["served_as"] == "lora" and info_a["adapter"]["max_lora_rank"] == 8
    base_args, _ = vllm_engine.engine_args({"pretrained": base})

    lm = vllm_engine.engine(args_a, fresh=True)
    assert len(built) == 1 and built[0]["enable_lora"] and built[0]["lora_local_path"] == a
    assert (lm.lora_request.lora_path, lm.lora_request.lora_int_id) == (a, 1)
    assert vllm_engine.engine(lora[b][0], fresh=True) is lm and len(built) == 1  # the adapter is no part of the engine
    assert (lm.lora_request.lora_path, lm.lora_request.lora_int_id) == (b, 2)
    assert vllm_engine.engine(base_args, fresh=True) is lm and lm.lora_request is None  # the base model: no LoRARequest
    assert vllm_engine.lora_settings() == {"max_lora_rank": 8, "max_loras": 1}
    assert vllm_engine.engine(args_a) is lm and lm.lora_request.lora_int_id == 1 and len(built) == 1  # stable ids

    # the LoRA settings are the engine's: another rank class is another engine, and so is any other argument
    c = fake_adapter(tmp_path / "c", r=16, weights=b"C")
    args_c, _ = vllm_engine.engine_args({"pretrained": base, "peft": c, "peft_mode": "lora"})
    assert vllm_engine.engine(args_c) is not lm and len(built) == 2 and built[1]["max_lora_rank"] == 16
    wide_a, _ = vllm_engine.engine_args({"pretrained": base, "peft": a, "peft_mode": "lora", "max_lora_rank": 16})
    assert vllm_engine.engine(wide_a).lora_request.lora_int_id == 1 and len(built) == 2  # model_args may set one rank for all
    vllm_engine.engine({**base_args, "dtype": "bfloat16"})
    assert len(built) == 3 and not built[2].get("enable_lora")
    # a plain engine serves no adapter: a LoRA model replaces it; a base model then stays on the LoRA engine
    vllm_engine.engine(args_a)
    vllm_engine.engine(base_args)
    assert len(built) == 4 and built[3]["enable_lora"]

    with pytest.raises(ValueError, match="max_lora_rank=8.*at least 16"):
        vllm_engine.engine_args({"pretrained": base, "peft": c, "peft_mode": "lora", "max_lora_rank": 8})
    with pytest.raises(ValueError, match="max_lora_rank=12"):
        vllm_engine.engine_args({"pretrained": base, "peft": a, "peft_mode": "lora", "max_lora_rank": 12})


def test_an_adapter_folder_keeps_its_lora_id_until_its_files_change(no_device, tmp_path):
    a, b = fake_adapter(tmp_path / "a", weights=b"A"), fake_adapter(tmp_path / "b", weights=b"B")
    first = vllm_engine.register_lora(a)
    assert vllm_engine.register_lora(a) == first and vllm_engine.register_lora(tmp_path / "x" / ".." / "a") == first
    assert vllm_engine.register_lora(b)[1] != first[1]
    fake_adapter(tmp_path / "a", weights=b"A, retrained")  # vLLM caches weights by id: a new id, never an old one
    files, lora_id = vllm_engine.register_lora(a)
    assert files != first[0] and lora_id not in (first[1], vllm_engine.register_lora(b)[1])
    assert vllm_engine.lora_request(a).lora_int_id == lora_id and vllm_engine.lora_request(None) is None


# ------------------------------------------------------------------------------ grids, cell ids, leaderboard

def _grid(tmp_path, peft_mode=None, inner="vllm"):
    args = {"pretrained": "org/base-model", **({"peft_mode": peft_mode} if peft_mode else {})}
    grid = {"name": "modes", "limit": 2, "models": [{"name": "m", "inner": inner, "model_args": args}], "prompting": ["react"],
            "finetuning": {"methods": ["react"], "tasks": ["hotpotqa"], "sizes": ["all"], "models": ["m"]},
            "datasets": ["hotpotqa"], "noise": ["clean"]}
    path = tmp_path / f"g-{peft_mode}-{inner}.yaml"
    path.write_text(yaml.safe_dump(grid))
    return str(path)


def test_a_grid_chooses_peft_mode_per_model_and_only_fine_tuned_cells_carry_it(tmp_path, monkeypatch):
    from fireact_bench.harness.benchmark import identity
    from fireact_bench.harness.benchmark.grid import load_grid

    monkeypatch.setattr(identity, "cell_adapter_plan", lambda cell: ("a" * 16, None, None))  # no training data read
    ids = {}
    for mode in (None, "merge", "lora"):
        cells = load_grid(_grid(tmp_path, mode)).cells
        ids[mode] = {cell.method: identity.cell_id(cell) for cell in cells}
        # the model's setting reaches every cell of it; merge, the default, is not written down
        assert [c.model["model_args"].get("peft_mode") for c in cells] == [mode if mode == "lora" else None] * 2
    assert ids[None] == ids["merge"]
    assert ids["lora"]["react"] == ids[None]["react"]  # a prompting cell serves no adapter
    assert ids["lora"]["ft"] != ids[None]["ft"]  # LoRA and merged weights agree only up to float error
    with pytest.raises(ValueError, match=r"models\[0\]: model_args.peft_mode must be one of \['merge', 'lora'\], not 'unmerged'"):
        load_grid(_grid(tmp_path, "unmerged"))
    with pytest.raises(ValueError, match="peft_mode is a setting of inner: vllm"):
        load_grid(_grid(tmp_path, "lora", inner="hf"))


def test_the_leaderboard_says_how_each_adapter_was_served(tmp_path, monkeypatch):
    """The sweep keeps the fireact model's engine info in the cell result; the leaderboard row reads served_as
    from it (the scripted model stands in, reporting what a LoRA engine reports)."""
    import counting_lm  # noqa: F401  registers `counting`; its fake_finetune trains nothing, instantly

    from fireact_bench.harness.benchmark import leaderboard
    from fireact_bench.harness.benchmark.cells import read_cells
    from fireact_bench.harness.benchmark.sweep import sweep
    from fireact_bench.harness.lmeval.agent_lm import FireActLM

    info = {"engine": "vllm", "adapter": {"path": "adapter", "served_as": "lora", "max_lora_rank": 8}}
    monkeypatch.setattr(FireActLM, "get_model_info", lambda self: {"fireact_engine": info})
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({
        "name": "served", "limit": 2, "datasets": ["hotpotqa"], "noise": ["clean"], "prompting": ["react"],
        "models": [{"name": "scripted", "inner": "counting", "model_args": {
            "answer": "yes", "pretrained": BACKBONE, "counter": str(tmp_path / "built.txt")}}],
        "finetuning": {"methods": ["react"], "tasks": ["hotpotqa"], "sizes": [4], "models": ["scripted"],
                       "config": {"max_steps": 1, "micro_batch": 2, "grad_accum": 1, "max_len": 256}}}))
    summary = sweep(str(path), results=tmp_path / "results", progress=False, trainer="counting_lm:fake_finetune")
    assert summary["finished"] == 2 and not summary["failed"]
    finished, _, _ = read_cells(tmp_path / "results" / "cells", summary["cell_ids"])
    assert all(r["engine"] == info for r in finished)
    board = leaderboard.build(finished, "served")
    leaderboard.validate(board)
    assert {r["method"]: r["adapter"] and r["adapter"]["served_as"] for r in board["rows"]} == {"react": None, "ft": "lora"}
    assert "| react / hotpotqa / 4 (lora) |" in leaderboard.markdown(board)
    for r in finished:  # a cell result from before the engine info was kept: served_as is not known
        del r["engine"]
    assert {r["method"]: r["adapter"] and r["adapter"]["served_as"] for r in leaderboard.build(finished, "served")["rows"]} == \
        {"react": None, "ft": None}


# ------------------------------------------------------------------------------ the real model

@pytest.mark.slow
@needs_vllm
def test_two_adapters_share_one_engine_and_each_answers_as_its_merged_model(tmp_path, monkeypatch):
    from fireact_bench.harness.agent.loop import AgentOptions, Episode
    from fireact_bench.harness.data.questions import load_docs
    from fireact_bench.harness.lmeval.agent_lm import FireActLM

    built = []
    real = vllm_engine.lm_eval_vllm

    def counting():  # counts the engines built
        model = real()

        class Counted:
            @staticmethod
            def create_from_arg_obj(args, extra):
                built.append(dict(args))
                return model.create_from_arg_obj(args, extra)
        return Counted

    monkeypatch.setattr(vllm_engine, "lm_eval_vllm", counting)
    # rank 8 (FireAct's), B at 0.05 of its random init: each changes the turns of questions 0 and 3 (not 1 and 2)
    adapters = [str(backbone_adapter(tmp_path / name, seed=seed, r=8, scale=0.05)) for name, seed in (("a", 1), ("b", 2))]
    docs = load_docs("hotpotqa")[:4]
    options = AgentOptions(method="ft", max_steps=2, max_gen_toks=48)  # the fine-tuned format: the chat template

    def turns(lm):
        return [e.transcript() for e in lm.run([Episode(key=d["id"], question=d["question"]) for d in docs], options)]

    # the sweep's order: each cell's fireact model is made, runs, and the next one comes
    models = {path: FireActLM(inner="vllm", pretrained=BACKBONE, peft=path, peft_mode="lora") for path in adapters[:1]}
    lora = {adapters[0]: turns(models[adapters[0]])}
    models[adapters[1]] = FireActLM(inner="vllm", pretrained=BACKBONE, peft=adapters[1], peft_mode="lora")
    lora[adapters[1]] = turns(models[adapters[1]])
    base_lm = FireActLM(inner="vllm", pretrained=BACKBONE)
    base_on_lora = turns(base_lm)
    again = turns(models[adapters[0]])  # the first model again, after the others: its own adapter back
    assert len(built) == 1, built
    assert built[0]["enable_lora"] and built[0]["max_lora_rank"] == 8 and built[0]["max_loras"] == 1
    assert again == lora[adapters[0]]
    assert lora[adapters[0]] != lora[adapters[1]] and base_on_lora not in lora.values()  # each its own weights, the base none
    info = models[adapters[1]].get_model_info()["fireact_engine"]
    assert info["adapter"]["served_as"] == "lora" and info["engine_lora"] == {"max_lora_rank": 8, "max_loras": 1}
    assert base_lm.get_model_info()["fireact_engine"]["engine_lora"] == info["engine_lora"]

    for path in adapters:  # the merged path: an engine per merged model
        merged = FireActLM(inner="vllm", pretrained=BACKBONE, peft=path)
        assert merged.get_model_info()["fireact_engine"]["adapter"]["served_as"] == "merged"
        assert turns(merged) == lora[path]
    plain = FireActLM(inner="vllm", pretrained=BACKBONE)  # the base model on an engine without LoRA
    assert plain.get_model_info()["fireact_engine"]["engine_lora"] is None
    assert turns(plain) == base_on_lora
    assert len(built) == 4
