"""Re-score recorded trajectories without running a model: FireAct's trajs/*.json and our lm-eval samples.

A file is scored against the question set it was run on, and every question of that set counts: one the
file does not answer scores 0 and is listed (FireAct's GPT-3.5 file holds 465 of its 500 questions, so its
exact match is 200/500 = 40.0%, not 200/465). The set comes from `--task` (a fireact task name), or from
FireAct's file names (`hotpotqa_dev_0_500_...`: questions 0-500 of FireAct's HotpotQA dev order).
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from fireact_bench.harness.agent.loop import read_summary
from fireact_bench.harness.agent.methods import split_trajectory
from fireact_bench.harness.agent.scoring import score
from fireact_bench.harness.data import release
from fireact_bench.harness.data.questions import load_docs
from fireact_bench.harness.study import TASK_DATASETS


def _fireact_answers(data: dict) -> dict[str, str | None]:
    """FireAct's eval files: {id: {"gt", "traj": messages | transcript text, ...}} -> {id: final answer}."""
    answers = {}
    for qid, rec in data.items():
        traj = rec.get("traj")
        if isinstance(traj, list):
            traj = "\n".join(m["content"] for m in traj if m.get("role") == "assistant" or m["content"].startswith("Observation"))
        steps = split_trajectory(traj.split("### Response:\n", 1)[-1] if isinstance(traj, str) else "")
        finish = next((s for s in steps if s.action == "finish"), None)
        answers[str(qid)] = finish.argument if finish else None
    return answers


def _samples_answers(path: Path) -> dict[str, str | None]:
    """lm-eval samples JSONL written with --log_samples by a fireact task -> {doc id: final answer}."""
    answers = {}
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                sample = json.loads(line)
                response, qid = sample["resps"][0][0], str(sample["doc"]["id"])
            except (json.JSONDecodeError, KeyError, IndexError, TypeError) as err:
                raise ValueError(f"{path}:{line_no}: not an lm-eval sample with resps and doc ({err})") from None
            _, summary = read_summary(response)
            finish = next((s for s in split_trajectory(response) if s.action == "finish"), None)
            answers[qid] = summary["answer"] if summary else (finish.argument if finish else None)
    return answers


def question_set(path: Path, task: str | None) -> tuple[str, list[dict]]:
    """(description, docs) of the questions a file was run on."""
    if task:  # fireact_<dataset>[_<method>][_<noise>]; hotpotqa_dev before hotpotqa
        name = next((d for d in sorted(TASK_DATASETS, key=len, reverse=True)
                     if task == f"fireact_{d}" or task.startswith(f"fireact_{d}_")), None)
        if name is None:
            raise ValueError(f"--task {task!r}: not a fireact task; known datasets: {', '.join(TASK_DATASETS)}")
        loader, options = TASK_DATASETS[name]
        return task, load_docs(loader, **options)
    match = release.EVAL_FILE_NAME.match(path.name)
    if not match or match["dataset"] != "hotpotqa" or match["split"] != "dev":
        raise ValueError(f"{path}: cannot tell which questions it was run on; name them with --task (e.g. fireact_hotpotqa)")
    start, end = int(match["start"]), int(match["end"])
    return f"FireAct's HotpotQA dev questions {start}-{end}", load_docs("hotpotqa", subset="fireact500")[start:end]


def rescore_file(path: str | Path, task: str | None = None) -> dict:
    path = Path(path)
    answers = _samples_answers(path) if path.suffix == ".jsonl" else _fireact_answers(release.eval_trajectories(path))
    described, docs = question_set(path, task)
    ids = {d["id"] for d in docs}
    extra = sorted(set(answers) - ids)
    if extra:
        raise ValueError(f"{path}: {len(extra)} answers to questions outside {described} (first: {extra[:3]}); is --task right?")
    scores = [score(d["kind"], answers.get(d["id"]), d["answer"]) for d in docs]
    ems = [s["em"] for s in scores]
    n = len(docs)
    return {
        "path": str(path), "questions": described, "n": n, "answered": len(answers),
        "em": sum(ems) / n, "em_stderr": statistics.stdev(ems) / n ** 0.5 if n > 1 else 0.0,
        "f1": sum(s["f1"] for s in scores) / n,
        "finished": sum(answers.get(d["id"]) is not None for d in docs) / n,
        "missing": [d["id"] for d in docs if d["id"] not in answers],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fireact-bench rescore", description=__doc__.splitlines()[0])
    parser.add_argument("path", help="FireAct's trajs/*.json or an lm-eval samples JSONL of a fireact task")
    parser.add_argument("--task", help="the fireact task the file was run on (default: from FireAct's file name)")
    args = parser.parse_args(argv)
    report = rescore_file(args.path, args.task)
    print(f"{report['path']}: EM {100 * report['em']:.1f}% ± {100 * report['em_stderr']:.1f} over {report['n']} questions "
          f"({report['questions']}), {report['answered']} answered in the file, {len(report['missing'])} missing"
          + (f": {', '.join(report['missing'])}" if report["missing"] else ""))
    print(json.dumps({k: v for k, v in report.items() if k != "missing"}))
    return 0
