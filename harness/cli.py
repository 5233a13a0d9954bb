"""Command lines. `fireact-eval` is lm-eval's own CLI with the `fireact` model registered and our tasks
on the include path; `fireact-bench` holds the project's other commands."""
from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import fireact_bench.tasks

TASKS_DIR = str(Path(fireact_bench.tasks.__file__).parent)


def eval_main(argv: list[str] | None = None) -> None:
    """lm-eval with every flag it has, plus `--model fireact` and the fireact_* tasks."""
    import fireact_bench.model  # noqa: F401  registers the `fireact` model
    from lm_eval.__main__ import cli_evaluate

    args = list(sys.argv[1:] if argv is None else argv)
    if "--include_path" not in args and any(a not in ("ls", "validate", "-h", "--help") for a in args[:1]):
        args += ["--include_path", TASKS_DIR]
    sys.argv = ["fireact-eval"] + args
    cli_evaluate()


def evaluate(tasks: list[str], model="hf", model_args: str | dict = "", limit: int | None = None,
             gen_kwargs: str | None = None, log_samples: bool = True, **kwargs) -> dict:
    """Python API: lm-eval's simple_evaluate with a `fireact` model wrapping `model`."""
    from lm_eval import simple_evaluate
    from fireact_bench.model import FireActLM

    if isinstance(model, str):
        args = model_args if isinstance(model_args, dict) else _parse(model_args)
        extra = {k: kwargs.pop(k) for k in ("batch_size", "device") if k in kwargs}
        lm = FireActLM(inner=model, additional_config=extra, **args)
    else:  # an lm-eval LM instance (a loaded model, or a scripted one in tests)
        lm = FireActLM(inner=type(model).__name__, inner_lm=model)
    manager = _task_manager(json.dumps(kwargs.pop("metadata", None), sort_keys=True))
    return simple_evaluate(model=lm, tasks=tasks, limit=limit, gen_kwargs=gen_kwargs, log_samples=log_samples,
                           task_manager=manager, **kwargs)


@functools.lru_cache(maxsize=4)
def _task_manager(metadata_json: str):
    """Indexing lm-eval's thousands of task files takes seconds: once per process (and metadata) is enough."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=TASKS_DIR, metadata=json.loads(metadata_json))


def _parse(arg_string: str) -> dict:
    from lm_eval.utils import simple_parse_args_string

    return simple_parse_args_string(arg_string) if arg_string else {}


def rescore_main(args: argparse.Namespace) -> None:
    from fireact_bench.rescore import rescore_file

    report = rescore_file(args.path, dataset_kind=args.kind)
    print(json.dumps(report, indent=2))


# Subcommands with argument parsers of their own: name -> (module, help)
DELEGATED = {
    "teacher": ("fireact_bench.adapters.teacher", "run an LM as the teacher on training questions, keep the correct trajectories"),
    "finetune": ("fireact_bench.adapters.finetune", "FireAct trajectories -> validated training set -> fine-tuned backbone"),
    "benchmark": ("fireact_bench.sweep", "run a grid (fine-tuning where needed), resumable; write the leaderboard and plots"),
    "leaderboard": ("fireact_bench.leaderboard", "rebuild a grid's leaderboard from its cell results"),
    "regress": ("fireact_bench.regress", "re-run the regression slice and compare it with the committed baseline"),
}


def main(argv: list[str] | None = None) -> None:
    import importlib

    parser = argparse.ArgumentParser(prog="fireact-bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    rescore = sub.add_parser("rescore", help="re-score recorded trajectories (FireAct's trajs/*.json or lm-eval samples JSONL) without a model")
    rescore.add_argument("path")
    rescore.add_argument("--kind", default="qa", choices=["qa", "yesno", "choice"], help="scoring rule when the file does not say")
    rescore.set_defaults(func=rescore_main)
    for name, (_, help_text) in DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command in DELEGATED:
        return importlib.import_module(DELEGATED[args.command][0]).main(rest)
    args.func(args)
