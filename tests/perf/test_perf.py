"""`make perf`: the engines and the training recipes measured in one run, on one machine (pytest-benchmark).

Evaluation, on the same 20 of FireAct's HotpotQA questions (ReAct, replay search, clean tool, greedy):
  fireact_loop   HF, one question at a time, the whole prompt re-encoded every step (how FireAct ran)
  hf_kv          inner=hf: this project's HF engine, reusing the key/value cache of the longest prefix
  vllm           inner=vllm: the default engine (fp32, prefix caching, one engine call per step)
  ft_hf, ft_vllm the same adapter, zero-shot fine-tuned format: HF + peft (unmerged), and vLLM serving it merged
Training: LoRA tokens/s of the recipe before the speed levers (BASELINE_RECIPE) against the default one, same data.

Each path runs once (a round is minutes); the ratios, the answers' agreement between paths and the numbers
go to results/perf.json and are printed. Nothing else may run on the machine meanwhile: two torch processes on
two cores slow each other by up to 10x.
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import pytest

from fireact_bench.harness.agent.loop import AgentOptions, Episode
from fireact_bench.harness.agent.scoring import score
from fireact_bench.harness.data.questions import load_docs
from fireact_bench.harness.files import write_json
from fireact_bench.harness.provenance import versions

pytestmark = pytest.mark.perf
N_QUESTIONS = 20
BASE = "smollm2-135m-instruct"
OUT = Path(__file__).resolve().parents[2] / "results" / "perf.json"
MEASURED: dict[str, dict] = {}


def _docs():
    return load_docs("hotpotqa")[:N_QUESTIONS]


def _episodes(docs):
    return [Episode(key=d["id"], question=d["question"]) for d in docs]


def _record(name: str, episodes, seconds: float):
    MEASURED[name] = {"seconds": round(seconds, 2), "s_per_question": round(seconds / len(episodes), 3),
                      "answers": [e.answer for e in episodes],
                      "transcripts": [e.transcript() for e in episodes],
                      "gen_tokens": sum(e.gen_tokens for e in episodes)}


def _evaluate(benchmark, name: str, lm, method: str, one_at_a_time: bool = False):
    docs, options = _docs(), AgentOptions(method=method, dataset="hotpotqa")

    def run():
        started = time.perf_counter()
        if one_at_a_time:
            episodes = [ep for d in docs for ep in lm.run(_episodes([d]), options)]
        else:
            episodes = lm.run(_episodes(docs), options)
        _record(name, episodes, time.perf_counter() - started)

    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update({k: v for k, v in MEASURED[name].items() if k not in ("answers", "transcripts")})


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A LoRA adapter from a few optimizer steps of the default recipe on FireAct's HotpotQA trajectories: its
    quality does not matter here, only that every path serves the same one (and its training is measured)."""
    from fireact_bench.adapters.finetune import finetune, plan_training, preset

    config, data, _ = plan_training(preset("small", max_steps=4, save_steps=1000), methods="react", tasks="hotpotqa", size=64)
    out = tmp_path_factory.mktemp("adapter")
    finetune(data, config, out)
    return out


def test_fireact_style_loop(benchmark):
    from fireact_bench.harness.lmeval.agent_lm import FireActLM

    lm = FireActLM(inner="hf", pretrained=BASE, reuse_kv=False, additional_config={"batch_size": 1})
    _evaluate(benchmark, "fireact_loop", lm, "react", one_at_a_time=True)


def test_hf_kv_reuse(benchmark):
    from fireact_bench.harness.lmeval.agent_lm import FireActLM

    lm = FireActLM(inner="hf", pretrained=BASE, additional_config={"batch_size": 1})
    _evaluate(benchmark, "hf_kv", lm, "react")


def test_vllm(benchmark):
    from fireact_bench.harness.lmeval.agent_lm import FireActLM

    lm = FireActLM(inner="vllm", pretrained=BASE)
    _evaluate(benchmark, "vllm", lm, "react")


def test_finetuned_hf_peft(benchmark, adapter):
    from fireact_bench.harness.lmeval.agent_lm import FireActLM

    lm = FireActLM(inner="hf", pretrained=BASE, peft=str(adapter / "model"), additional_config={"batch_size": 1})
    _evaluate(benchmark, "ft_hf", lm, "ft")


def test_finetuned_vllm_merged(benchmark, adapter):
    from fireact_bench.harness.lmeval.agent_lm import FireActLM

    lm = FireActLM(inner="vllm", pretrained=BASE, peft=str(adapter / "model"))
    _evaluate(benchmark, "ft_vllm", lm, "ft")


TRAIN_STEPS = 4  # optimizer steps of the `small` preset (16 trajectories each); the first is warm-up, not counted

# Each recipe trains in a process of its own, so that its peak memory is its own (not the engines' above).
_TRAIN = """
import json, sys
from fireact_bench.adapters.finetune import BASELINE_RECIPE, preset, training_speed
recipe = BASELINE_RECIPE if sys.argv[1] == "baseline" else {}
print(json.dumps(training_speed(preset("small", **recipe), sys.argv[2], steps=int(sys.argv[3]))))
"""


@pytest.mark.parametrize("recipe", ["baseline", "default"])
def test_training_tokens_per_second(benchmark, recipe, tmp_path):
    """LoRA training of the `small` preset on FireAct's HotpotQA ReAct trajectories: BASELINE_RECIPE (the recipe
    before the speed levers) against the default, tokens/s from the end of step 1 to the end of the last."""
    import subprocess
    import sys

    def train():
        done = subprocess.run([sys.executable, "-c", _TRAIN, recipe, str(tmp_path / recipe), str(TRAIN_STEPS)],
                              capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])

    speed = benchmark.pedantic(train, rounds=1, iterations=1)
    MEASURED[f"train_{recipe}"] = {k: speed[k] for k in ("tokens_per_s", "seconds_per_step", "wall_time_s", "steps", "tokens_seen",
                                                          "losses", "peak_rss_mib", "recipe")}
    benchmark.extra_info.update({k: v for k, v in MEASURED[f"train_{recipe}"].items() if k != "recipe"})


def test_report():
    """Ratios and agreement, written to results/perf.json and printed (runs last: pytest keeps file order)."""
    m = MEASURED
    ratio = lambda a, b: round(m[a]["seconds"] / m[b]["seconds"], 2) if a in m and b in m else None  # noqa: E731
    agree = lambda a, b: sum(x == y for x, y in zip(m[a]["answers"], m[b]["answers"])) if a in m and b in m else None  # noqa: E731
    same = lambda a, b: sum(x == y for x, y in zip(m[a]["transcripts"], m[b]["transcripts"])) if a in m and b in m else None  # noqa: E731
    train = {k: m[k] for k in ("train_baseline", "train_default") if k in m}
    report = {
        "questions": N_QUESTIONS, "host": {"cpus": os.cpu_count(), "platform": platform.platform()}, "versions": versions(),
        "s_per_question": {k: v["s_per_question"] for k, v in m.items() if "s_per_question" in v},
        "speedup": {"vllm_vs_fireact_loop": ratio("fireact_loop", "vllm"), "vllm_vs_hf_kv": ratio("hf_kv", "vllm"),
                    "hf_kv_vs_fireact_loop": ratio("fireact_loop", "hf_kv"), "ft_vllm_vs_ft_hf": ratio("ft_hf", "ft_vllm"),
                    "training_tokens_per_s": round(train["train_default"]["tokens_per_s"] / train["train_baseline"]["tokens_per_s"], 2)
                    if len(train) == 2 else None},
        "same_answers_of_20": {"hf_kv_vs_fireact_loop": agree("hf_kv", "fireact_loop"), "vllm_vs_hf_kv": agree("vllm", "hf_kv"),
                               "ft_vllm_vs_ft_hf": agree("ft_vllm", "ft_hf")},
        "same_trajectories_of_20": {"hf_kv_vs_fireact_loop": same("hf_kv", "fireact_loop"), "vllm_vs_hf_kv": same("vllm", "hf_kv"),
                                    "ft_vllm_vs_ft_hf": same("ft_vllm", "ft_hf")},
        "em_of_20": {k: sum(score(d["kind"], a, d["answer"])["em"] for d, a in zip(_docs(), v["answers"]))
                     for k, v in m.items() if "answers" in v},
        "training": train,
    }
    write_json(OUT, report)
    print(json.dumps({k: report[k] for k in ("s_per_question", "speedup", "same_answers_of_20", "same_trajectories_of_20",
                                             "em_of_20")}, indent=1))
