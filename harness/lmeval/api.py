"""lm-eval with this project plugged in: `fireact-eval` (lm-eval's own CLI with the `fireact` model
registered and our tasks on the include path) and `evaluate`, the Python API."""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

# The task YAMLs: the tasks/ folder, a sibling of harness/ in the repository and in site-packages alike.
TASKS_DIR = str(Path(__file__).resolve().parents[2] / "tasks")


def eval_main(argv: list[str] | None = None) -> None:
    """lm-eval with every flag it has, plus `--model fireact` and the fireact_* tasks."""
    from lm_eval.__main__ import cli_evaluate

    import fireact_bench.harness.lmeval.agent_lm  # noqa: F401  registers the `fireact` model

    args = list(sys.argv[1:] if argv is None else argv)
    if "--include_path" not in args and any(a not in ("ls", "validate", "-h", "--help") for a in args[:1]):
        args += ["--include_path", TASKS_DIR]
    sys.argv = ["fireact-eval"] + args
    cli_evaluate()


def evaluate(tasks: list[str], model="hf", model_args: str | dict = "", limit: int | None = None,
             gen_kwargs: str | None = None, log_samples: bool = True, **kwargs) -> dict:
    """Python API: lm-eval's simple_evaluate with a `fireact` model wrapping `model`."""
    from lm_eval import simple_evaluate

    from fireact_bench.harness.lmeval.agent_lm import FireActLM

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
