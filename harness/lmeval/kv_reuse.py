"""Greedy generation for a Hugging Face model that never re-encodes a prefix it has already encoded.

An agent's contexts repeat themselves: every question starts with the same few-shot prompt (about a
thousand tokens), and step k of an episode is step k-1's context plus one turn and one observation.
lm-eval's HF `generate_until` encodes each context from scratch; here the key/value cache of every
finished generation is kept (a few, least recently used first out), and a new context starts from the
cached entry that shares the longest token prefix with it, so only the new tokens are encoded.

Equivalence: the cache is reused only for an exact token-prefix match, decoding is greedy, and the
output is cut at the stop sequences (by the `fireact` model, as for any inner model); a test compares it with lm-eval's HF path.
"""
from __future__ import annotations

import copy
from collections import OrderedDict


class KVReuseGenerator:
    def __init__(self, model, tokenizer, device, max_length: int, encode, capacity: int = 12):
        self.model, self.tokenizer, self.device, self.encode = model, tokenizer, device, encode
        self.max_length, self.capacity = max_length, capacity
        self._entries: OrderedDict[tuple, object] = OrderedDict()  # token ids -> cache holding exactly them
        self.stats = {"requests": 0, "tokens": 0, "reused_tokens": 0}

    def _best(self, ids: list[int]) -> tuple[tuple | None, int]:
        best, best_len = None, 0
        for key in self._entries:
            n = min(len(key), len(ids) - 1)  # feed at least one new token
            i = 0
            while i < n and key[i] == ids[i]:
                i += 1
            if i > best_len:
                best, best_len = key, i
        return best, best_len

    def generate(self, contexts: list[str], until: list[str], max_new_tokens: int) -> list[str]:
        import torch
        from lm_eval.models.utils_hf import stop_sequences_criteria
        from transformers import DynamicCache

        outputs = []
        for context in contexts:
            ids = list(self.encode(context))  # the inner model's own encoding (BOS where it adds one)
            ids = ids[-(self.max_length - max_new_tokens):]  # left truncation, as lm-eval's HF model does
            key, reuse = self._best(ids)
            if key is not None:
                self._entries.move_to_end(key)
                cache = copy.deepcopy(self._entries[key])
                if cache.get_seq_length() > reuse:
                    cache.crop(reuse - cache.get_seq_length())  # a negative count: tokens to drop
            else:
                cache = DynamicCache()
            input_ids = torch.tensor([ids], device=self.device)
            with torch.no_grad():
                out = self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                          past_key_values=cache, max_new_tokens=max_new_tokens, do_sample=False,
                                          # lm-eval's stop criterion: transformers' stop_strings rebuilds
                                          # vocabulary tables on every call (seconds each)
                                          stopping_criteria=stop_sequences_criteria(self.tokenizer, until, len(ids), 1),
                                          pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
                                          use_cache=True)
            sequence = out[0].tolist()
            self._store(tuple(sequence[: cache.get_seq_length()]), cache)
            # stopped at a stop sequence, not yet cut there: the caller cuts every inner model's turns alike
            outputs.append(self.tokenizer.decode(sequence[len(ids):], skip_special_tokens=True))
            self.stats["requests"] += 1
            self.stats["tokens"] += len(ids)
            self.stats["reused_tokens"] += reuse
        return outputs

    def _store(self, key: tuple, cache) -> None:
        self._entries[key] = cache
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
