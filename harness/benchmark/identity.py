"""Cell identity: each layer fingerprints what it contributes, and a cell's id combines them.

    questions   the question subset the cell evaluates (data/questions.docs_hash)
    prompt      the task file and the method: every prompt constant, template and the parser (agent/methods)
    tool        the tool the cell's options really build: backend and its corpus, cache, noise kind, p, seed
    model       the weights of a local model (lmeval/backbones), or the model's settings for an API model
    adapter     the adapter's key: training config, data hash, base model, training code (TRAIN_CODE)
    code        the sources of the evaluation code (agent, tools, data, lmeval, tasks)
    versions    the packages it ran with

A change to any of them changes the id, so a stale result is never reused. Computing an id reads the
question set, the search corpus and the weights; the leaderboard never does: it reads the grid index
the sweep writes (benchmark/cells.py).
"""
from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import yaml

from fireact_bench.harness.agent import methods
from fireact_bench.harness.agent.loop import AgentOptions
from fireact_bench.harness.benchmark.grid import Cell
from fireact_bench.harness.files import digest
from fireact_bench.harness.lmeval.api import TASKS_DIR
from fireact_bench.harness.provenance import source_fingerprint, versions
from fireact_bench.harness.study import CLEAN, FINETUNED, has_local_weights

EVAL_CODE = ("harness/agent", "harness/tools", "harness/data", "harness/lmeval", "harness/study.py", "tasks")
TRAIN_CODE = ("adapters/trajectories.py", "adapters/sft_data.py", "adapters/finetune.py", "harness/agent/methods.py",
              "harness/data/release.py", "harness/study.py")


class _TaskLoader(yaml.SafeLoader):
    pass


_TaskLoader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")


@functools.cache
def task_config(task: str) -> tuple[str, dict]:
    """(text, parsed) of a task's YAML file."""
    path = Path(TASKS_DIR) / "generated" / f"{task}.yaml"
    if not path.exists():
        raise ValueError(f"no task {task!r} in {path.parent} (run tasks/_generate_configs.py?)")
    text = path.read_text()
    return text, yaml.load(text, Loader=_TaskLoader)


def cell_options(cell: Cell) -> AgentOptions:
    """The agent options the cell runs with: its task's `fireact` key, with the cell's seed and noise p."""
    _, config = task_config(cell.task)
    asked = dict(config.get("generation_kwargs", {}).get("fireact") or {})
    if not asked:  # io/cot tasks: a single generation from the task's own prompt
        return AgentOptions(method=cell.method, dataset=config["dataset_kwargs"]["dataset"])
    return AgentOptions(**{**asked, "seed": cell.seed, "noise_p": cell.noise_p})


def gen_kwargs(cell: Cell) -> str | None:
    """--gen_kwargs that give the cell's task the cell's options (None when the task's own suffice)."""
    return f"fireact.seed={cell.seed},fireact.noise_p={cell.noise_p}" if cell.uses_tool else None


@functools.cache
def questions_hash(task: str, limit: int | None) -> str:
    from fireact_bench.harness.data.questions import docs_hash, load_docs

    _, config = task_config(task)
    kwargs = dict(config.get("dataset_kwargs") or {})
    return docs_hash(load_docs(kwargs.pop("dataset"), **kwargs)[:limit])


def prompt_hash(cell: Cell) -> str:
    text, _ = task_config(cell.task)
    options = cell_options(cell)
    # the study's vocabulary holds prompt text too (Reflexion's reminders)
    return digest([text, methods.fingerprint(options.method, options.dataset), source_fingerprint("harness/study.py")])


@functools.cache
def tool_hash(options: AgentOptions) -> str:
    """The fingerprint of the tool these options build (constructing it reads its corpus, not the network)."""
    return options.make_tool().fingerprint()


@functools.cache
def model_hash(model_json: str) -> str:
    from fireact_bench.harness.lmeval.backbones import model_fingerprint

    model = json.loads(model_json)
    pretrained = model["model_args"].get("pretrained") or model["model_args"].get("model")
    return model_fingerprint(str(pretrained)) if has_local_weights(model["inner"]) and pretrained else digest(model)


@functools.cache
def adapter_plan(model_json: str, adapter_json: str):
    """(key, FinetuneConfig, TrainingSet) of an adapter: built from data and config, before any training."""
    from fireact_bench.adapters.finetune import plan_training, preset, run_id

    model, adapter = json.loads(model_json), json.loads(adapter_json)
    config = preset(adapter["preset"], **adapter["config"], base_model=str(model["model_args"]["pretrained"]),
                    seed=adapter["seed"])
    config, data, _ = plan_training(config, methods=adapter["methods"], tasks=adapter["tasks"], size=adapter["size"])
    key = digest([run_id(config, data.data_hash), model_hash(model_json), source_fingerprint(*TRAIN_CODE)])
    return key, config, data


def cell_adapter_plan(cell: Cell):
    return adapter_plan(json.dumps(cell.model, sort_keys=True), json.dumps(cell.adapter, sort_keys=True))


def comparability(cell: Cell) -> dict:
    """What a score depends on besides the cell's own settings; rows compare only when these agree."""
    options = cell_options(cell)
    # io/cot use no tool; they sit with the clean-tool rows of the task's default tool
    tool_options = options if options.uses_tool else AgentOptions(dataset=options.dataset)
    key = {
        "dataset_hash": questions_hash(cell.task, cell.limit),
        "prompt_hash": prompt_hash(cell),
        "search_hash": tool_hash(options) if options.uses_tool else None,
        "noise": cell.noise, "noise_p": cell.noise_p, "noise_seed": cell.seed,
        "model_hash": model_hash(json.dumps(cell.model, sort_keys=True)),
        "adapter_hash": cell_adapter_plan(cell)[0] if cell.method == FINETUNED else None,
        "code_hash": source_fingerprint(*EVAL_CODE),
        "versions": versions(),
    }
    # The rows a reader may set side by side: same questions, same search corpus, same noise draws.
    clean_tool = tool_hash(dataclasses.replace(tool_options, noise=CLEAN, seed=0))
    key["group"] = digest([key["dataset_hash"], clean_tool, cell.noise,
                           None if cell.noise == CLEAN else [cell.noise_p, cell.seed]])
    return key


def identity_spec(cell: Cell) -> dict:
    """The cell's settings that can change its result: all of them, but how adapters are served
    (model_args.peft_mode) in a cell that serves none. In a fine-tuned cell it stays: merged and LoRA serving
    compute the same model, but only up to float error, so the two are two cells."""
    spec = cell.spec()
    if cell.method != FINETUNED:
        spec["model"]["model_args"].pop("peft_mode", None)
    return spec


def cell_id(cell: Cell) -> str:
    return digest([identity_spec(cell), comparability(cell)])
