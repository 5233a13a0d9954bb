"""FireAct's findings, one table each, the paper's number beside ours: what `findings.md` holds for a grid.

central          few-shot ReAct against ReAct fine-tuning (FireAct table 2)
data_scaling     exact match against the number of fine-tuning trajectories (figure 3)
method_mix       ReAct vs ReAct+CoT vs ReAct+CoT+Reflexion training data (table 4)
generalization   HotpotQA-only against multi-task training data, held-in and held-out (table 5)
noise            each method under the clean, "none" and random-result tool, as the drop from clean (table 3)

Ours: exact match (EM, %) with its 95% Wilson interval, and where two rows share their questions, the paired
difference with its 95% CI and the exact McNemar p (not Holm-adjusted here: the leaderboard adjusts across the
grid). A finding whose rows the grid lacks gets no table. The paper's numbers are GPT-3.5's or Llama-2's on
FireAct's 500 HotpotQA questions (its other sets for table 5): a direction to compare, not a number to match.
"""
from __future__ import annotations

import functools
from collections import defaultdict

from fireact_bench.harness.benchmark.plots import MIX_NAMES, standing
from fireact_bench.harness.benchmark.stats import mcnemar_exact, paired_difference, wilson
from fireact_bench.harness.study import EVAL_DATASETS, FINETUNED, HELD_IN, NOISES

# Chen et al. 2023, read from the authors' project page (fireact-agent.github.io: tables 1-3) and from the paper's
# tables as reproduced on shenh10.github.io/papercache (tables 4, 5, 9); EM in %. Figures 3 and 4 state no values.
PAPER = {
    "central": "Llama-2-7B: few-shot ReAct 14.8, fine-tuned 26.2 (+77%); Llama-2-13B 21.2 → 34.4; "
               "GPT-3.5 31.4 → 39.2 (table 2)",
    "data_scaling": "GPT-3.5 reaches about 35 EM with 100 trajectories, little more after 200; Llama models do not "
                    "learn the format from 100 or 200 and reach non-trivial EM from 500 (figure 3, text)",
    "method_mix": {"react": 39.4, "react+cot": 41.0, "react+reflexion": 38.8, "all": 40.0},  # table 4, GPT-3.5
    "generalization": {  # table 5, GPT-3.5: HotpotQA, StrategyQA, Bamboogle, MMLU
        "few-shot react": {"hotpotqa": 31.4, "strategyqa": 61.0, "bamboogle": 40.8, "mmlu": 58.6},
        "ft react/hotpotqa": {"hotpotqa": 39.2, "bamboogle": 44.0},
        "ft react/multitask": {"hotpotqa": 39.2, "strategyqa": 55.5, "bamboogle": 43.2, "mmlu": 63.2}},
    "noise": {  # table 3 and appendix table 9, GPT-3.5 on HotpotQA: clean, none, random
        "few-shot react": {"clean": 31.4, "none": 20.8, "random": 22.6},
        "ft react/hotpotqa": {"clean": 39.2, "none": 33.6, "random": 37.2},
        "ft react/multitask": {"clean": 39.2, "none": 34.8, "random": 36.2},
        "ft react+cot/hotpotqa": {"clean": 41.0, "none": 36.4, "random": 38.4}},
}


def _ems(result: dict) -> dict[str, float]:
    return {q["id"]: q["em"] for q in result["per_question"]}


def _em(result: dict) -> dict:
    ems = list(_ems(result).values())
    return {"em": round(sum(ems) / len(ems), 4), "em_ci95": wilson(sum(ems), len(ems)), "n": len(ems)}


def _versus(a: dict, b: dict) -> dict | None:
    """a - b over their shared questions: paired difference with its CI, and the exact McNemar test."""
    diff = paired_difference(_ems(a), _ems(b))
    return None if diff is None else {**diff, "mcnemar_p": mcnemar_exact(_ems(a), _ems(b))["p"]}


def _name(result: dict) -> str:
    cell = result["cell"]
    if cell["method"] != FINETUNED:
        return f"few-shot {cell['method']}"
    return f"ft {cell['adapter']['methods']}/{cell['adapter']['tasks']}"


def _size(result: dict) -> int:
    return result["adapter"]["composition"]["size"]


def _pick(rs: list[dict], method=None, dataset=HELD_IN, noise="clean", methods="react", tasks="hotpotqa", size=None):
    """The row asked for: a prompting method's, or else a fine-tuned one of that data mix, of the largest size unless
    `size` says which."""
    found = [r for r in rs if r["cell"]["dataset"] == dataset and r["cell"]["noise"] == noise
             and (r["cell"]["method"] == method if method else r["cell"]["method"] == FINETUNED
                  and r["cell"]["adapter"]["methods"] == methods and r["cell"]["adapter"]["tasks"] == tasks)]
    if not method:
        found = sorted((r for r in found if size is None or _size(r) == size), key=_size)
    return found[-1] if found else None


def tables(results: list[dict]) -> dict[str, list[dict]]:
    """{finding: rows} from a grid's finished cell results (seed 0); a finding the grid cannot answer is absent."""
    by_model = defaultdict(list)
    for r in results:
        if r["cell"]["seed"] == 0:
            by_model[r["cell"]["model"]["name"]].append(r)
    out = defaultdict(list)
    for model, rs in sorted(by_model.items()):
        pick = functools.partial(_pick, rs)
        react, tuned = pick("react"), pick()
        if react and tuned:
            out["central"].append({"model": model, "prompted": _em(react), "tuned": _em(tuned), "size": _size(tuned),
                                   "versus": _versus(tuned, react)})
        sizes = sorted({_size(r) for r in rs if r["cell"]["method"] == FINETUNED and r["cell"]["noise"] == "clean"
                        and r["cell"]["dataset"] == HELD_IN and r["cell"]["adapter"]["methods"] == "react"
                        and r["cell"]["adapter"]["tasks"] == "hotpotqa"})
        if len(sizes) > 1:
            previous = None
            for size in sizes:
                row = pick(size=size)
                out["data_scaling"].append({"model": model, "size": size, **_em(row),
                                            "versus_smaller": previous and _versus(row, previous)})
                previous = row
        mixes = [(m, pick(methods=m)) for m in MIX_NAMES]
        mixes = [(m, r) for m, r in mixes if r]
        if len(mixes) > 1 and mixes[0][0] == "react":
            for m, r in mixes:
                out["method_mix"].append({"model": model, "methods": m, **_em(r), "paper": PAPER["method_mix"].get(m),
                                          "versus_react": None if m == "react" else _versus(r, mixes[0][1])})
        for dataset in EVAL_DATASETS:
            single, multi = pick(dataset=dataset), pick(dataset=dataset, tasks="multitask")
            if single and multi:
                prompted = pick("react", dataset=dataset)
                out["generalization"].append({
                    "model": model, "dataset": dataset, "held_in": dataset == HELD_IN, "standing": standing(dataset),
                    "prompted": prompted and _em(prompted), "hotpotqa_only": _em(single), "multitask": _em(multi),
                    "versus": _versus(multi, single),
                    "paper": {k: v.get(dataset) for k, v in PAPER["generalization"].items()}})
        names = sorted({_name(r) for r in rs if r["cell"]["dataset"] == HELD_IN and r["cell"]["noise"] != "clean"})
        for name in names:
            by_noise = {r["cell"]["noise"]: r for r in rs if r["cell"]["dataset"] == HELD_IN and _name(r) == name
                        and (r["cell"]["method"] != FINETUNED or _size(r) == max(_size(x) for x in rs if _name(x) == name))}
            clean = by_noise.get("clean")
            if clean is None:
                continue
            clean_em = _em(clean)["em"]
            row = {"model": model, "method": name, "paper": PAPER["noise"].get(name), "noises": {}}
            for noise in NOISES:
                if noise in by_noise:
                    em = _em(by_noise[noise])
                    drop = None if noise == "clean" or not clean_em else round((clean_em - em["em"]) / clean_em, 4)
                    row["noises"][noise] = {**em, "relative_drop": drop,
                                            "versus_clean": None if noise == "clean" else _versus(by_noise[noise], clean)}
            out["noise"].append(row)
    return dict(out)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _ci(em: dict | None) -> str:
    return "–" if not em else f"{_pct(em['em'])} ({_pct(em['em_ci95'][0])}–{_pct(em['em_ci95'][1])})"


def _diff(v: dict | None) -> str:
    return "–" if not v else f"{100 * v['delta']:+.1f} ({100 * v['ci95'][0]:+.1f} to {100 * v['ci95'][1]:+.1f}), p {v['mcnemar_p']:.2g}"


def markdown(found: dict[str, list[dict]]) -> str:
    """The tables, one section per finding, each headed by what the paper found."""
    lines = ["# FireAct's findings, the paper's numbers beside ours", "",
             "EM in % with its 95% Wilson interval; Δ: paired difference over the same questions, its 95% CI and the exact "
             "McNemar p (unadjusted). Paper: GPT-3.5 or Llama-2 on FireAct's sets (harness/benchmark/findings.py cites each).", ""]
    if "central" in found:
        lines += ["## Fine-tuning against few-shot prompting (table 2)", "", f"Paper: {PAPER['central']}.", "",
                  "| model | few-shot ReAct | fine-tuned ReAct (trajectories) | Δ |", "|---|---|---|---|"]
        lines += [f"| {r['model']} | {_ci(r['prompted'])} | {_ci(r['tuned'])} ({r['size']}) | {_diff(r['versus'])} |"
                  for r in found["central"]] + [""]
    if "data_scaling" in found:
        lines += ["## Data scaling (figure 3)", "", f"Paper: {PAPER['data_scaling']}.", "",
                  "| model | trajectories | EM | Δ against the next smaller set |", "|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['size']} | {_ci(r)} | {_diff(r['versus_smaller'])} |" for r in found["data_scaling"]] + [""]
    if "method_mix" in found:
        lines += ["## Method mix of the fine-tuning data (table 4)", "",
                  "| model | data | paper (GPT-3.5) | EM | Δ against ReAct only |", "|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {MIX_NAMES[r['methods']]} | {r['paper'] if r['paper'] is not None else '–'} | {_ci(r)} | "
                  f"{_diff(r['versus_react'])} |" for r in found["method_mix"]] + [""]
    if "generalization" in found:
        lines += ["## Task mix and generalization (table 5)", "",
                  "| model | dataset | paper (GPT-3.5): few-shot / HotpotQA-only / multi-task | few-shot ReAct | "
                  "HotpotQA-only | multi-task | Δ multi-task − HotpotQA-only |", "|---|---|---|---|---|---|---|"]
        for r in found["generalization"]:
            paper = " / ".join("–" if v is None else f"{v}" for v in r["paper"].values())
            lines.append(f"| {r['model']} | {r['dataset']} ({r['standing']}) | {paper} | "
                         f"{_ci(r['prompted'])} | {_ci(r['hotpotqa_only'])} | {_ci(r['multitask'])} | {_diff(r['versus'])} |")
        lines.append("")
    if "noise" in found:
        lines += ["## Noisy tools (table 3)", "",
                  "Relative drop: (EM clean − EM noisy) / EM clean, the paper's measure; – where clean EM is 0.", "",
                  "| model | method | tool | paper (GPT-3.5) | EM | relative drop | Δ against clean |", "|---|---|---|---|---|---|---|"]
        for r in found["noise"]:
            for noise, v in r["noises"].items():
                paper = (r["paper"] or {}).get(noise)
                lines.append(f"| {r['model']} | {r['method']} | {noise} | {'–' if paper is None else paper} | {_ci(v)} | "
                             f"{_pct(v['relative_drop'])} | {_diff(v['versus_clean'])} |")
        lines.append("")
    return "\n".join(lines)
