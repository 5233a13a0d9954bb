"""Writes the task YAMLs (one per dataset x method x noise), as lm-eval does for its MMLU tasks.

Run `python tasks/_generate_configs.py` after changing the grid of tasks; the YAMLs are committed.
Names: fireact_<dataset>[_<method>][_<noise>]; the method is omitted for ReAct (the paper's default)
and the noise for clean tools: fireact_hotpotqa, fireact_hotpotqa_none, fireact_hotpotqa_cot, ...
"""
from pathlib import Path

import yaml

HERE = Path(__file__).parent


class Function(str):
    """A YAML `!function module.name` reference, lm-eval's way of naming Python hooks."""


yaml.SafeDumper.add_representer(Function, lambda dumper, value: dumper.represent_scalar("!function", str(value)))
DATASETS = {  # task dataset name -> (dataset_kwargs, the agent's dataset for prompts)
    "hotpotqa": ({"dataset": "hotpotqa", "subset": "fireact500"}, "hotpotqa"),
    "hotpotqa_dev": ({"dataset": "hotpotqa", "subset": "dev"}, "hotpotqa"),
    "bamboogle": ({"dataset": "bamboogle"}, "bamboogle"),
    "strategyqa": ({"dataset": "strategyqa"}, "strategyqa"),
    "mmlu": ({"dataset": "mmlu", "subject": "all"}, "mmlu"),
    "jsonl": ({"dataset": "jsonl"}, "jsonl"),
}
METHODS = {"react": 8, "io": 1, "cot": 1, "reflexion": 11, "ft": 8}  # method -> step limit
NOISES = ("clean", "none", "random")


def task_name(dataset: str, method: str, noise: str) -> str:
    parts = ["fireact", dataset] + ([method] if method != "react" else []) + ([noise] if noise != "clean" else [])
    return "_".join(parts)


def task(dataset: str, method: str, noise: str, dataset_kwargs: dict, agent_dataset: str) -> dict:
    if METHODS[method] == 1:  # single generation: the prompt is the task's, so plain lm-eval models run it too
        return {"include": "_fireact_yaml", "task": task_name(dataset, method, noise), "tag": tags_of(dataset, method, noise),
                "dataset_kwargs": dataset_kwargs, "doc_to_text": Function(f"utils.{method}_prompt"),
                "generation_kwargs": {"until": ["\n\n"], "do_sample": False, "max_gen_toks": 256}}
    return {
        "include": "_fireact_yaml",
        "task": task_name(dataset, method, noise),
        "tag": tags_of(dataset, method, noise),
        "dataset_kwargs": dataset_kwargs,
        "generation_kwargs": {
            "until": ["\n\n"],
            "do_sample": False,
            "fireact": {"method": method, "dataset": agent_dataset, "max_steps": METHODS[method], "noise": noise},
        },
    }


def tags_of(dataset: str, method: str, noise: str) -> list[str]:
    return ["fireact", f"fireact_{dataset}_all", f"fireact_method_{method}", f"fireact_noise_{noise}"]


def main() -> None:
    for old in HERE.glob("fireact_*.yaml"):
        old.unlink()
    for dataset, (kwargs, agent_dataset) in DATASETS.items():
        for method in METHODS:
            for noise in NOISES if METHODS[method] > 1 else ("clean",):
                config = task(dataset, method, noise, kwargs, agent_dataset)
                path = HERE / f"{config['task']}.yaml"
                path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


if __name__ == "__main__":
    main()
