"""Teacher trajectories: any lm-eval LM runs the agent on training questions; the correct episodes are kept.

This is FireAct's data collection (GPT-4 with ReAct, CoT or Reflexion on training questions), on the
project's own agent loop (`FireActLM.run`), so prompts, parsing, tools and noise are the evaluation's.

    out.jsonl           kept: correct and valid, ready for `build_training_set`
    out.rejected.jsonl  everything else, each with its reasons (nothing is dropped silently)

Both are appended a batch at a time (fsync'd); a rerun skips every question already in either file,
so a killed run continues where it stopped and never duplicates.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from fireact_bench.adapters.trajectories import Trajectory, append_jsonl, question_id, stored_keys, trajectory_key, validate
from fireact_bench.harness.agent import scoring
from fireact_bench.harness.agent.loop import AgentOptions, Episode
from fireact_bench.harness.agent.methods import Step
from fireact_bench.harness.data.questions import load_docs
from fireact_bench.harness.study import EPISODE_FINISHED, TEACHER_METHODS, TRAJECTORY_DATASETS

log = logging.getLogger(__name__)


def rejected_path(out: Path) -> Path:
    return out.with_name(out.name.removesuffix(".jsonl") + ".rejected.jsonl")


def to_trajectory(ep: Episode, doc: dict, *, dataset: str, split: str, method: str, teacher: str,
                  search_backend: str, seed: int) -> Trajectory:
    """An agent episode in the project's trajectory schema, with its reward and reasons filled in."""
    if method == "cot":  # one generation; FireAct's CoT trajectories are one thought and a finish
        steps = [Step(thought=ep.raw.strip(), action="finish" if ep.answer is not None else None,
                      argument=ep.answer, observation=EPISODE_FINISHED if ep.answer is not None else None)]
    else:
        steps = [Step(s.thought, s.action, s.argument, s.observation) for s in ep.steps]
    reward = bool(scoring.score(doc.get("kind", "qa"), ep.answer, doc["answer"])["em"]) if ep.answer is not None else False
    traj = Trajectory(
        question_id=question_id(dataset, doc["question"]), dataset=dataset, split=split, method=method,
        teacher=teacher, search_backend=search_backend, seed=seed,
        question=doc["question"], steps=steps, answer=ep.answer, reward=reward, source=f"{dataset}:{split}:{doc['id']}",
        problems=sorted(set(ep.format_errors)))
    traj.reasons = validate(traj)
    return traj


def generate(lm, docs: list[dict], out: str | Path, *, dataset: str, split: str, method: str = "react",
             teacher: str, options=None, batch: int = 8, seed: int = 0) -> dict:
    """Run `lm` (a FireActLM) as the teacher on `docs`; append to out / out.rejected. Returns a report."""
    if method not in TEACHER_METHODS:
        raise ValueError(f"teacher method {method!r}: expected one of {', '.join(TEACHER_METHODS)}")
    out = Path(out)
    options = options or AgentOptions(method=method, dataset=dataset, seed=seed)
    backend = "none" if method == "cot" else options.tool
    done = stored_keys(out) | stored_keys(rejected_path(out))  # repairs a last line torn by a crash
    todo = [doc for doc in docs
            if trajectory_key(question_id(dataset, doc["question"]), method, teacher, backend, seed) not in done]
    report = {"questions": len(docs), "already_done": len(docs) - len(todo), "kept": 0, "rejected": 0, "by_reason": {}}
    for start in range(0, len(todo), batch):
        chunk = todo[start:start + batch]
        episodes = lm.run([Episode(key=str(doc["id"]), question=doc["question"]) for doc in chunk], options)
        trajs = [to_trajectory(ep, doc, dataset=dataset, split=split, method=method, teacher=teacher,
                               search_backend=backend, seed=seed) for ep, doc in zip(episodes, chunk)]
        report["kept"] += append_jsonl(out, [t for t in trajs if not t.reasons])
        report["rejected"] += append_jsonl(rejected_path(out), [t for t in trajs if t.reasons])
        for t in trajs:
            for reason in t.reasons:
                report["by_reason"][reason] = report["by_reason"].get(reason, 0) + 1
        log.info("teacher: %d/%d questions, %d kept", report["already_done"] + start + len(chunk), len(docs), report["kept"])
    return report


def main(argv: list[str] | None = None) -> int:
    from fireact_bench.harness.lmeval.agent_lm import FireActLM

    parser = argparse.ArgumentParser(prog="fireact-bench teacher", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hf", help="lm-eval model name (hf, local-completions, openai-chat-completions, ...)")
    parser.add_argument("--model_args", default="pretrained=smollm2-135m-instruct", help="the model's lm-eval model_args")
    parser.add_argument("--dataset", default="hotpotqa", choices=[*TRAJECTORY_DATASETS, "jsonl"])
    parser.add_argument("--split", default="train", help="hotpotqa: train (hub) | dev_rest; strategyqa: train | dev; mmlu: train")
    parser.add_argument("--path", help="question file for --dataset jsonl")
    parser.add_argument("--method", default="react", choices=TEACHER_METHODS)
    parser.add_argument("--limit", type=int, help="first N questions")
    parser.add_argument("--tool", default="replay", help="search backend (replay, bm25, google, serpapi)")
    parser.add_argument("--tool_args", default="", help='JSON options of the backend, e.g. {"corpus": "passages.jsonl"}')
    parser.add_argument("--cache", default="", help="sqlite search cache")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=8, help="episodes run together (and written together)")
    parser.add_argument("--out", required=True, help="trajectory JSONL (rejected ones go beside it)")
    args = parser.parse_args(argv)
    from lm_eval.utils import simple_parse_args_string

    docs = load_docs(args.dataset, **_split_options(args.dataset, args.split, args.path))[: args.limit]
    lm = FireActLM(inner=args.model, **simple_parse_args_string(args.model_args))
    options = AgentOptions(method=args.method, dataset=args.dataset, tool=args.tool, tool_args=args.tool_args,
                           cache=args.cache, seed=args.seed)
    model_args = simple_parse_args_string(args.model_args)
    teacher = model_args.get("model") or model_args.get("pretrained") or args.model
    report = generate(lm, docs, args.out, dataset=args.dataset, split=args.split, method=args.method,
                      teacher=str(teacher), options=options, batch=args.batch_size, seed=args.seed)
    print(json.dumps(report, indent=2))
    return 0


def _split_options(dataset: str, split: str, path: str | None) -> dict:
    if dataset == "jsonl":
        if not path:
            raise SystemExit("--dataset jsonl needs --path")
        return {"path": path}
    if dataset == "hotpotqa":
        return {"subset": split, **({"source": "hub"} if split == "train" else {})}
    return {"split": split}
