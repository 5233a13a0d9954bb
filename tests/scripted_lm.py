"""A scripted lm-eval model for sweep tests, registered as `scripted`: search once, then finish.

model_args: answer (what it finishes with; default: the first word of the observation, and "yes" for
io/cot), delay (seconds per call, so a test can kill a sweep midway). Deterministic and instant. It
records the size of every batch it is sent, and fails if the agent's namespaced options reach it.
"""
import time

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

import fireact_bench.harness.lmeval.agent_lm  # noqa: F401  fills the registry first


@register_model("scripted")
class ScriptedLM(LM):
    def __init__(self, answer: str = "", delay: float = 0.0, batch_size=1, **_):
        super().__init__()
        self.answer, self.delay = answer, float(delay)
        self.batches = []

    def generate_until(self, requests, disable_tqdm=False):
        time.sleep(self.delay)
        self.batches.append(len(requests))
        outputs = []
        for request in requests:
            context, gen_kwargs = request.args
            assert not any(k.startswith("fireact") for k in gen_kwargs), "namespaced key reached the inner model"
            tail = context.rsplit("### Response:\n", 1)[-1] if "### Response:" in context else context.rsplit("\n\n\n", 1)[-1]
            if context.endswith("Answer:"):  # io: one line
                outputs.append(f" {self.answer or 'yes'}")
            elif context.endswith("Thought:"):  # cot: reasoning, then the answer line
                outputs.append(f" It must be so.\nAnswer: {self.answer or 'yes'}")
            elif "Observation:" not in tail:
                outputs.append("Thought: look it up\nAction: search[capital of France]")
            else:
                word = self.answer or tail.split("Observation:")[-1].split()[0]
                outputs.append(f"Thought: found it\nAction: finish[{word}]")
        return outputs

    def loglikelihood(self, requests, disable_tqdm=False):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        raise NotImplementedError
