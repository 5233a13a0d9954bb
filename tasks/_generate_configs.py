"""Writes the task YAMLs into generated/ (one per question set x method x noise), as lm-eval does for MMLU.

Run `python tasks/_generate_configs.py` after changing the study's vocabulary (harness/study.py); the
YAMLs are committed. Names come from study.task_name: fireact_<dataset>[_<method>][_<noise>].
"""
from pathlib import Path

import yaml

from fireact_bench.harness.study import MAX_STEPS, NOISES, SINGLE_METHODS, TASK_DATASETS, task_name

HERE = Path(__file__).parent
OUT = HERE / "generated"
HOOKS = "fireact_bench.harness.lmeval.hooks"
TASK_METHODS = ("react", "io", "cot", "reflexion", "ft")


class Function(str):
    """A YAML `!function module.name` reference, lm-eval's way of naming Python hooks."""


yaml.SafeDumper.add_representer(Function, lambda dumper, value: dumper.represent_scalar("!function", str(value)))


def task(dataset: str, method: str, noise: str) -> dict:
    loader, options = TASK_DATASETS[dataset]
    head = {"include": "../_fireact_yaml", "task": task_name(dataset, method, noise), "tag": tags_of(dataset, method, noise),
            "dataset_kwargs": {"dataset": loader, **options}}
    if method in SINGLE_METHODS:  # single generation: the prompt is the task's, so plain lm-eval models run it too
        return {**head, "doc_to_text": Function(f"{HOOKS}.{method}_prompt"),
                "generation_kwargs": {"until": ["\n\n"], "do_sample": False, "max_gen_toks": 256}}
    return {**head, "generation_kwargs": {
        "until": ["\n\n"], "do_sample": False,
        "fireact": {"method": method, "dataset": loader, "max_steps": MAX_STEPS[method], "noise": noise}}}


def tags_of(dataset: str, method: str, noise: str) -> list[str]:
    return ["fireact", f"fireact_{dataset}_all", f"fireact_method_{method}", f"fireact_noise_{noise}"]


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for old in OUT.glob("fireact_*.yaml"):
        old.unlink()
    for dataset in TASK_DATASETS:
        for method in TASK_METHODS:
            for noise in NOISES if method not in SINGLE_METHODS else NOISES[:1]:
                config = task(dataset, method, noise)
                (OUT / f"{config['task']}.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


if __name__ == "__main__":
    main()
