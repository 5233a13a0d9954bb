"""The `fireact` lm-eval model: wraps any lm-eval LM and runs agent episodes with it.

    --model fireact --model_args inner=hf,pretrained=smollm2-135m-instruct[,peft=ADAPTER_DIR]

Everything after `inner=` is the inner model's own model_args (an embedded backbone name is
materialised first). `inner=vllm` is lm-eval's vLLM model set up as this project's engine (vllm_engine.py:
fp32, prefix caching, one engine call per step, fine-tuned adapters merged once, or served as LoRA requests
on one engine per base model). A task asks for the agent through one namespaced generation key:

    generation_kwargs: {until: [...], fireact: {method: react, dataset: hotpotqa, tool: replay, noise: clean, ...}}

and `--gen_kwargs fireact.noise=none,fireact.max_steps=5` overrides single fields. The key is removed
before the inner model sees anything; the inner model only ever gets plain generate_until requests,
one batch per agent step for all live episodes of a task.
"""
from __future__ import annotations

import json
import logging
from dataclasses import fields

import lm_eval.models  # noqa: F401  fills lm-eval's lazy registry, which stays empty once we register ours
from lm_eval.api.instance import Instance
from lm_eval.api.model import LM
from lm_eval.api.registry import get_model, register_model

from fireact_bench.harness.agent.loop import AgentOptions, Episode, run_episodes
from fireact_bench.harness.lmeval.backbones import resolve_model
from fireact_bench.harness.study import is_local_hf

log = logging.getLogger(__name__)
NAMESPACE = "fireact"
VLLM = "vllm"  # lm-eval's name of its vLLM model


def options_from_gen_kwargs(gen_kwargs: dict) -> tuple[AgentOptions, dict]:
    """Split a request's generation kwargs into the agent's options and the rest (for the inner model).

    Without the namespaced key no agent was asked for (io/cot tasks): one generation, method "text".
    """
    rest = dict(gen_kwargs)
    asked = NAMESPACE in rest or any(k.startswith(NAMESPACE + ".") for k in rest)
    ours = dict(rest.pop(NAMESPACE, None) or {})
    for key in [k for k in rest if k.startswith(NAMESPACE + ".")]:
        ours[key.split(".", 1)[1]] = rest.pop(key)
    if not asked:
        ours = {"method": "text", "max_gen_toks": rest.get("max_gen_toks", 256)}
    known = {f.name: f.type for f in fields(AgentOptions)}
    unknown = sorted(set(ours) - set(known))
    if unknown:
        raise ValueError(f"unknown {NAMESPACE} option(s) {unknown}; known: {sorted(known)}")
    # lm-eval's --gen_kwargs parser turns "none" into None; for our text options it means the word
    casts = {"int": int, "float": float,
             "str": lambda v: "none" if v is None else json.dumps(v, sort_keys=True) if isinstance(v, dict) else str(v)}
    return AgentOptions(**{k: casts[known[k]](v) for k, v in ours.items()}), rest


def _cut(text: str, stops: list[str]) -> str:
    ends = [text.find(stop) for stop in stops if stop and stop in text]
    return text[: min(ends)] if ends else text


@register_model(NAMESPACE)
class FireActLM(LM):
    def __init__(self, inner: str = "hf", inner_lm: LM | None = None, additional_config: dict | None = None,
                 reuse_kv: bool | str = True, **inner_args):
        super().__init__()
        self._vllm_args = None  # inner=vllm: the engine's args, to get it back should another model replace it
        self._engine_info: dict = {}
        if inner_lm is None:
            for key in ("pretrained", "peft"):
                if key in inner_args:
                    inner_args[key] = resolve_model(str(inner_args[key]))
            extra = dict(additional_config or {})
            if inner == VLLM:
                from fireact_bench.harness.lmeval import vllm_engine

                # lm-eval's --batch_size, --max_batch_size and --device do not reach vLLM: each agent step is one
                # engine call, which vLLM schedules itself (max_num_seqs=... in --model_args caps it)
                self._vllm_args, self._engine_info = vllm_engine.engine_args(inner_args)
                inner_lm = vllm_engine.engine(self._vllm_args, fresh=True)
                # the engine it starts on: a base model's requests may run on one built for LoRA (the same tokens)
                self._engine_info["engine_lora"] = vllm_engine.lora_settings()
                log.info("inner=vllm: %s", self._engine_info)
            else:
                if is_local_hf(inner) and inner_args.get("peft"):  # lm-eval's HF model applies it with peft, unmerged
                    self._engine_info = {"engine": inner, "adapter": {"path": str(inner_args["peft"]), "served_as": "peft"}}
                if is_local_hf(inner) and not extra.get("device"):
                    import torch  # HFLM's own default is "cuda", which fails on a CPU-only machine

                    extra["device"] = "cuda" if torch.cuda.is_available() else "cpu"
                inner_lm = get_model(inner).create_from_arg_obj(inner_args, extra)
        self._inner = inner_lm
        self.inner_name = inner
        from lm_eval.models.openai_completions import LocalChatCompletion

        self._chat_api = isinstance(inner_lm, LocalChatCompletion)
        self._kv = None  # HF models: greedy turns reuse the cached few-shot prompt and episode so far
        if str(reuse_kv).lower() not in ("false", "0", "no"):
            from lm_eval.models.huggingface import HFLM

            if isinstance(inner_lm, HFLM):
                from fireact_bench.harness.lmeval.kv_reuse import KVReuseGenerator

                self._kv = KVReuseGenerator(inner_lm.model, inner_lm.tokenizer, inner_lm.device,
                                            inner_lm.max_length, inner_lm.tok_encode)
        self._tools: dict[AgentOptions, object] = {}

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> FireActLM:
        from lm_eval.utils import simple_parse_args_string

        args = simple_parse_args_string(arg_string)
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(**args, additional_config=extra)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> FireActLM:
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(**arg_dict, additional_config=extra)

    @property
    def inner(self) -> LM:
        if self._vllm_args is not None:
            from fireact_bench.harness.lmeval import vllm_engine

            # the process's one engine; rebuilt should a model of other args have taken its place since
            self._inner = vllm_engine.engine(self._vllm_args)
        return self._inner

    # -- what lm-eval calls -------------------------------------------------------------------------
    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        groups: dict[AgentOptions, list[int]] = {}
        parsed = []
        for i, request in enumerate(requests):
            context, gen_kwargs = request.args
            options, _ = options_from_gen_kwargs(gen_kwargs)
            parsed.append((context, request.doc or {}))
            groups.setdefault(options, []).append(i)
        responses: list[str] = [""] * len(requests)
        for options, indices in groups.items():
            episodes = [
                Episode(key=str(doc.get("id", context)), question=str(doc.get("question", context)),
                        context=context if options.method == "text" else "")
                for context, doc in (parsed[i] for i in indices)
            ]
            self.run(episodes, options)
            for i, episode in zip(indices, episodes):
                responses[i] = episode.response()
        return responses

    def run(self, episodes: list[Episode], options: AgentOptions) -> list[Episode]:
        """Run episodes with this model's inner LM; also the entry point for Python callers."""
        tool = None
        if options.uses_tool:
            if options not in self._tools:  # one tool (and its index/cache) per option set, reused
                self._tools[options] = options.make_tool()
            tool = self._tools[options]
        return run_episodes(episodes, self._generate, options, tool=tool, count_tokens=self._count_tokens, chat=self._chat(options))

    def _generate(self, contexts: list, gen_kwargs: dict) -> list[str]:
        until = gen_kwargs.get("until") or []
        if self._kv is not None and not gen_kwargs.get("do_sample"):
            return [_cut(out, until) for out in self._kv.generate(contexts, until, gen_kwargs.get("max_gen_toks", 256))]
        if self._chat_api and contexts and isinstance(contexts[0], str):
            # A chat API takes messages: the whole few-shot prompt is one user turn, as FireAct sent GPT-4.
            from lm_eval.models.api_models import JsonChatStr

            contexts = [JsonChatStr(json.dumps([{"role": "user", "content": c}], ensure_ascii=False)) for c in contexts]
        requests = [Instance("generate_until", {}, (context, dict(gen_kwargs)), i) for i, context in enumerate(contexts)]
        outputs = self.inner.generate_until(requests, disable_tqdm=True)
        # Cut at the stop sequences here too: some inner models drop them (lm-eval's OpenAI chat model sends
        # no `stop` for any model name containing "5", gpt-3.5 included), and a turn must end where ours do.
        return [_cut(out or "", until) for out in outputs]

    def _count_tokens(self, text) -> int:
        text = getattr(text, "prompt", text)  # a chat API's JsonChatStr
        encode = getattr(self.inner, "tok_encode", None)
        try:
            ids = encode(text) if encode else None
        except Exception:  # API models without a local tokenizer: count words rather than fail
            ids = None
        return len(ids) if isinstance(ids, list) else len(str(text).split())

    def _chat(self, options: AgentOptions):
        if options.method != "ft" or options.template == "alpaca":
            return None
        tokenizer = getattr(self.inner, "tokenizer", None)
        has_template = bool(getattr(tokenizer, "chat_template", None)) or self.inner_name.endswith("chat-completions")
        if options.template == "chat" and not has_template:
            raise ValueError("template=chat but the inner model has no chat template")
        return self.inner.apply_chat_template if has_template else None

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return self.inner.loglikelihood(requests, disable_tqdm=disable_tqdm)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        return self.inner.loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)

    def apply_chat_template(self, chat_history, add_generation_prompt: bool = True):
        return self.inner.apply_chat_template(chat_history, add_generation_prompt)

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.inner, "tokenizer_name", self.inner_name)

    def get_model_info(self) -> dict:
        info = getattr(self.inner, "get_model_info", lambda: {})()
        return {**info, "fireact_inner": self.inner_name, **({"fireact_engine": self._engine_info} if self._engine_info else {})}
