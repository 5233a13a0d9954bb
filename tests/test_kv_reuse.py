"""KV reuse: the agent's turns with SmolLM2 are the same with and without it, and the prefix is reused."""
import pytest

from fireact_bench.harness.agent.loop import AgentOptions, Episode
from fireact_bench.harness.data.questions import load_docs
from fireact_bench.harness.lmeval.agent_lm import FireActLM


@pytest.mark.slow
def test_kv_reuse_gives_lm_evals_greedy_turns_and_skips_the_shared_prefix():
    docs = load_docs("hotpotqa")[:2]
    options = AgentOptions(method="react", dataset="hotpotqa", max_steps=3, max_gen_toks=48)
    transcripts, generators = {}, {}
    for reuse in (True, False):
        lm = FireActLM(inner="hf", pretrained="smollm2-135m-instruct", reuse_kv=reuse, additional_config={"batch_size": 1})
        episodes = lm.run([Episode(key=d["id"], question=d["question"]) for d in docs], options)
        transcripts[reuse] = [e.response().rsplit("\nEpisode: ", 1)[0] for e in episodes]
        generators[reuse] = lm._kv
    assert transcripts[True] == transcripts[False]
    assert generators[False] is None
    stats = generators[True].stats
    # the second question reuses the few-shot prompt, every later step its own episode so far
    assert stats["requests"] >= 3 and stats["reused_tokens"] > 0.7 * stats["tokens"]
