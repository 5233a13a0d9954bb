"""Re-score recorded trajectories without running a model: FireAct's trajs/*.json and our lm-eval samples."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from fireact_bench.harness.agent.loop import read_summary
from fireact_bench.harness.agent.methods import split_trajectory
from fireact_bench.harness.agent.scoring import score
from fireact_bench.harness.data import release


def _fireact_records(data: dict, kind: str):
    """FireAct's eval files: {id: {"gt", "traj": messages | transcript text, ...}}."""
    for qid, rec in data.items():
        traj = rec.get("traj")
        if isinstance(traj, list):
            traj = "\n".join(m["content"] for m in traj if m.get("role") == "assistant" or m["content"].startswith("Observation"))
        steps = split_trajectory(traj.split("### Response:\n", 1)[-1] if isinstance(traj, str) else "")
        finish = next((s for s in steps if s.action == "finish"), None)
        yield qid, (finish.argument if finish else None), rec["gt"], kind


def _samples_records(path: Path, kind: str):
    """lm-eval samples JSONL written with --log_samples by a fireact task."""
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                sample = json.loads(line)
                response = sample["resps"][0][0]
                doc = sample["doc"]
            except (json.JSONDecodeError, KeyError, IndexError, TypeError) as err:
                raise ValueError(f"{path}:{line_no}: not an lm-eval sample with resps and doc ({err})") from None
            _, summary = read_summary(response)
            steps = split_trajectory(response)
            finish = next((s for s in steps if s.action == "finish"), None)
            answer = summary["answer"] if summary else (finish.argument if finish else None)
            yield doc.get("id", line_no), answer, doc["answer"], doc.get("kind", kind)


def rescore_file(path: str | Path, dataset_kind: str = "qa") -> dict:
    path = Path(path)
    if path.suffix == ".jsonl":
        records = list(_samples_records(path, dataset_kind))
    else:
        records = list(_fireact_records(release.eval_trajectories(path), dataset_kind))
    ems = [score(kind, answer, gold)["em"] for _, answer, gold, kind in records]
    f1s = [score(kind, answer, gold)["f1"] for _, answer, gold, kind in records]
    n = len(records)
    return {
        "path": str(path), "n": n,
        "em": sum(ems) / n if n else 0.0,
        "em_stderr": statistics.stdev(ems) / n ** 0.5 if n > 1 else 0.0,
        "f1": sum(f1s) / n if n else 0.0,
        "finished": sum(a is not None for _, a, _, _ in records) / n if n else 0.0,
    }
