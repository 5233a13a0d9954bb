"""A grid file -> cells. A cell is one evaluation: model × method (prompting, or `ft` on an adapter trained on
a data mix) × dataset × tool noise × seed, on the first `limit` questions.

    name: default
    limit: 40                       # questions per cell
    seeds: [0]                      # noise draws and fine-tuning seed
    models:
      - {name: smollm2, inner: hf, model_args: {pretrained: smollm2-135m-instruct}, batch_size: 1}
      # with inner: vllm, model_args.peft_mode says how fine-tuned adapters are served: merge (the default, merged
      # into the base weights) or lora (LoRA requests: every adapter of the model on one engine)
    prompting: [react]              # io | cot | react | reflexion
    finetuning:                     # one adapter per model × methods × tasks × size, trained once
      methods: [react]              # react | react+cot | react+reflexion | all
      tasks: [hotpotqa]             # hotpotqa | multitask
      sizes: [all]                  # 100 | 200 | 500 | 1000 | all
      config: {preset: small}       # FinetuneConfig fields (fireact_bench.adapters.finetune)
    datasets: [hotpotqa]            # hotpotqa | bamboogle | strategyqa | mmlu
    noise: [clean, random]          # clean | none | random (tool methods only; io/cot are always clean)
    blocks:                         # optional: sub-grids, each over the top-level fields it does not set;
      - {noise: [clean]}            # the grid is their union (one study's several comparisons, no full product)

Shipped grids live in harness/benchmark/grids/ and are named without the .yaml; any other path works too.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from fireact_bench.harness.study import (
    CLEAN,
    EVAL_DATASETS,
    FINETUNED,
    METHOD_MIXES,
    NOISE_P,
    NOISES,
    PROMPTING,
    TASK_MIXES,
    TOOL_METHODS,
    has_local_weights,
    task_name,
)

GRIDS_DIR = Path(__file__).parent / "grids"
KNOWN_KEYS = {"name", "description", "limit", "seeds", "noise_p", "models", "prompting", "finetuning", "datasets", "noise",
              "slurm"}


@dataclass(frozen=True)
class Cell:
    model: dict  # {name, inner, model_args, batch_size, price}
    method: str  # a prompting method, or "ft"
    dataset: str
    noise: str
    seed: int
    limit: int | None
    noise_p: float = NOISE_P
    adapter: dict | None = None  # {methods, tasks, size, config} for ft cells

    @property
    def task(self) -> str:
        """The lm-eval task that evaluates this cell (tasks/generated/)."""
        return task_name(self.dataset, self.method, self.noise)

    @property
    def uses_tool(self) -> bool:
        return self.method in TOOL_METHODS

    def spec(self) -> dict:
        return dataclasses.asdict(self)

    def label(self) -> str:
        what = self.method if self.adapter is None else \
            f"ft[{self.adapter['methods']}/{self.adapter['tasks']}/{self.adapter['size'] or 'all'}]"
        return f"{self.model['name']} {what} {self.dataset} {self.noise} seed{self.seed}"


@dataclass
class Grid:
    name: str
    path: Path
    cells: list[Cell] = field(default_factory=list)
    description: str = ""
    slurm: dict = field(default_factory=dict)  # Slurm options of its jobs (benchmark/executors.py)


def grid_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    shipped = GRIDS_DIR / f"{name_or_path}.yaml"
    if shipped.exists():
        return shipped
    known = sorted(p.stem for p in GRIDS_DIR.glob("*.yaml"))
    raise FileNotFoundError(f"no grid {name_or_path!r}: not a .yaml file, and the shipped grids are {known}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # YAML's `true` is not a number here


def _list(raw: dict, key: str, allowed, where: str, default=None) -> list:
    value = raw.get(key, default)
    if value is None:
        return []
    if not isinstance(value, list):
        value = [value]
    bad = [v for v in value if allowed is not None and v not in allowed]
    if bad:
        raise ValueError(f"{where}: field {key!r} has {bad}; allowed: {list(allowed)}")
    return value


def load_grid(name_or_path: str) -> Grid:
    path = grid_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a grid is a YAML mapping")
    blocks = raw.pop("blocks", None)
    if blocks is None:
        cells = _cells(raw, str(path))
    elif not isinstance(blocks, list) or not blocks or not all(isinstance(b, dict) for b in blocks):
        raise ValueError(f"{path}: field 'blocks' must list mappings of grid fields")
    else:  # each block is a grid of its own over the top-level fields it does not set; the grid is their union
        cells = [c for i, block in enumerate(blocks) for c in _cells({**raw, **block}, f"{path}: blocks[{i}]")]
    unique = list({json.dumps(c.spec(), sort_keys=True): c for c in cells}.values())
    slurm = raw.get("slurm") or {}
    if not isinstance(slurm, dict):
        raise ValueError(f"{path}: field 'slurm' must be a mapping of Slurm options")
    return Grid(raw.get("name", path.stem), path, unique, raw.get("description", ""), slurm)


def _cells(raw: dict, where: str) -> list[Cell]:
    unknown = sorted(set(raw) - KNOWN_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; known: {sorted(KNOWN_KEYS)}")
    limit = raw.get("limit")
    if limit is not None and not (_is_int(limit) and limit >= 1):
        raise ValueError(f"{where}: field 'limit' must be a positive integer or absent (all questions), not {limit!r}")
    seeds = _list(raw, "seeds", None, where, [0])
    if not seeds or not all(_is_int(s) for s in seeds):
        raise ValueError(f"{where}: field 'seeds' must list integers (or be absent: [0]), not {raw.get('seeds')!r}")
    noise_p = raw.get("noise_p", NOISE_P)
    if not (isinstance(noise_p, (int, float)) and not isinstance(noise_p, bool) and 0 <= noise_p <= 1):
        raise ValueError(f"{where}: field 'noise_p' must be a probability in [0, 1], not {noise_p!r}")
    models = [_model(m, f"{where}: models[{i}]") for i, m in enumerate(raw.get("models") or [])]
    if not models:
        raise ValueError(f"{where}: field 'models' must list at least one model")
    prompting = _list(raw, "prompting", PROMPTING, where)
    datasets = _list(raw, "datasets", EVAL_DATASETS, where)
    noises = _list(raw, "noise", NOISES, where, [CLEAN])
    adapters = _adapters(raw.get("finetuning"), models, f"{where}: finetuning")
    if not datasets:
        raise ValueError(f"{where}: field 'datasets' must list at least one dataset")

    cells: list[Cell] = []
    for model in models:
        for seed in seeds:
            for dataset in datasets:
                for method in prompting:
                    for noise in noises if method in TOOL_METHODS else [CLEAN]:
                        # greedy decoding on a clean tool: the seed changes nothing, so seed 0 stands for all
                        cells.append(Cell(model, method, dataset, noise, seed if noise != CLEAN else 0, limit, noise_p))
                for adapter in adapters.get(model["name"], []):
                    for noise in noises:
                        cells.append(Cell(model, FINETUNED, dataset, noise, seed, limit, noise_p, {**adapter, "seed": seed}))
    if not cells:
        raise ValueError(f"{where}: the grid has no cells (fields 'prompting' and 'finetuning' are both empty)")
    return cells


def _model(raw, where: str) -> dict:
    if not isinstance(raw, dict) or not raw.get("name"):
        raise ValueError(f"{where}: a model needs at least a name (and inner, model_args)")
    unknown = sorted(set(raw) - {"name", "inner", "model_args", "batch_size", "price"})
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}")
    args = raw.get("model_args") or {}
    if not isinstance(args, dict):
        raise ValueError(f"{where}: model_args must be a mapping")
    price = raw.get("price")
    if price is not None and (not isinstance(price, dict) or set(price) - {"prompt", "completion"}):
        raise ValueError(f"{where}: price is {{prompt: USD per 1M tokens, completion: USD per 1M tokens}}")
    inner = raw.get("inner", "hf")
    if "peft_mode" in args:
        args = _peft_mode(args, inner, where)
    return {"name": str(raw["name"]), "inner": inner, "model_args": args,
            "batch_size": raw.get("batch_size", 1), "price": price}


def _peft_mode(args: dict, inner: str, where: str) -> dict:
    """model_args.peft_mode: how inner=vllm serves the model's fine-tuned adapters, `merge` (the default: merged
    into the base weights) or `lora` (LoRA requests, every adapter of the model on one engine). `merge` is dropped,
    so that saying the default leaves the cells' ids as they were."""
    from fireact_bench.harness.lmeval.vllm_engine import PEFT_MODES

    if inner != "vllm":
        raise ValueError(f"{where}: model_args.peft_mode is a setting of inner: vllm (inner={inner} serves adapters its own way)")
    if args["peft_mode"] not in PEFT_MODES:
        raise ValueError(f"{where}: model_args.peft_mode must be one of {list(PEFT_MODES)}, not {args['peft_mode']!r}")
    return {k: v for k, v in args.items() if k != "peft_mode"} if args["peft_mode"] == PEFT_MODES[0] else args


def _adapters(raw, models: list[dict], where: str) -> dict[str, list[dict]]:
    """{model name: [adapter specs]} for the models that can be fine-tuned (local ones)."""
    if not raw:
        return {}
    from fireact_bench.adapters.finetune import FinetuneConfig, preset

    methods = _list(raw, "methods", METHOD_MIXES, where, ["react"])
    tasks = _list(raw, "tasks", TASK_MIXES, where, ["hotpotqa"])
    sizes = _list(raw, "sizes", None, where, ["all"])
    if not sizes or any(s != "all" and not (_is_int(s) and s > 0) for s in sizes):
        raise ValueError(f"{where}: sizes are positive integers or 'all'")
    config = dict(raw.get("config") or {})
    base = config.pop("preset", "small")
    known = {f.name for f in dataclasses.fields(FinetuneConfig)} - {"base_model", "seed"}
    if set(config) - known:
        raise ValueError(f"{where}: unknown config field(s) {sorted(set(config) - known)}; known: {sorted(known)}")
    try:
        resolved = preset(base, **config)  # fails here, not hours later, on a bad value
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}.config: {err}") from None
    for f in dataclasses.fields(FinetuneConfig):  # each value of the kind its default has
        value, default = getattr(resolved, f.name), f.default
        ok = (isinstance(value, bool) if isinstance(default, bool) else
              _is_int(value) if isinstance(default, int) else
              isinstance(value, (int, float)) and not isinstance(value, bool) if isinstance(default, float) else
              isinstance(value, str) or isinstance(value, list) and all(isinstance(v, str) for v in value))
        if not ok:
            raise ValueError(f"{where}.config: field {f.name!r} must be {type(default).__name__}-valued "
                             f"like its default {default!r}, not {value!r}")
    names = raw.get("models") or [m["name"] for m in models if has_local_weights(m["inner"])]
    unknown = sorted(set(names) - {m["name"] for m in models})
    if unknown:
        raise ValueError(f"{where}: models {unknown} are not in the grid's models")
    return {name: [{"methods": m, "tasks": t, "size": None if s == "all" else s, "preset": base, "config": config}
                   for m in methods for t in tasks for s in sizes] for name in names}
