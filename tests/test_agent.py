"""The agent loop with a scripted inner model: batched rounds, step limit, finish handling."""
import pytest

from fireact_bench.harness.agent.loop import INVALID_ACTION, AgentOptions, Episode, read_summary, run_episodes


class ScriptedTool:
    def __init__(self):
        self.calls, self.stats = [], {"cache_hits": 0}

    def search(self, query, *, key=""):
        self.calls.append((query, key))
        self.stats["cache_hits"] += query == "cached"
        return f"result for {query}"


def scripted(scripts):
    """A generate() that answers each question with its next scripted turn, recording every batch."""
    batches = []

    def generate(contexts, gen_kwargs):
        batches.append(len(contexts))
        assert gen_kwargs["do_sample"] is False and "\nObservation" in gen_kwargs["until"]
        outputs = []
        for context in contexts:
            question = next(q for q in scripts if f"\n{q}\n" in context)
            turn = context.count("Observation: ") - context.split(f"\n{question}\n")[0].count("Observation: ")
            outputs.append(scripts[question][turn])
        return outputs

    return generate, batches


def test_all_live_episodes_advance_in_one_call_per_step():
    scripts = {
        "Q1?": ["Thought: a\nAction: finish[A1]"],
        "Q2?": ["Thought: b\nAction: search[cached]", "Thought: c\nAction: finish[A2] trailing"],
        "Q3?": ["garbage", "Thought: d\nAction: search[x]", "Thought: e\nAction: search[y]", "Thought: f\nAction: search[z]"],
    }
    generate, batches = scripted(scripts)
    tool = ScriptedTool()
    episodes = [Episode(key=f"k{i}", question=q) for i, q in enumerate(scripts)]
    run_episodes(episodes, generate, AgentOptions(method="react", max_steps=4), tool=tool)
    assert batches == [3, 2, 1, 1]  # one call per step holding every live episode
    e1, e2, e3 = episodes
    assert (e1.answer, e1.finished, len(e1.steps)) == ("A1", True, 1)
    assert (e2.answer, e2.finished, e2.tool_calls, e2.cache_hits) == ("A2", True, 1, 1)
    assert dict(e2.format_errors) == {"text_after_finish": 1}
    assert (e3.answer, e3.finished, len(e3.steps)) == (None, False, 4)  # step limit: no answer, still counted
    assert e3.steps[0].observation == INVALID_ACTION and dict(e3.format_errors) == {"missing_action": 1}
    assert ("x", "k2:2") in tool.calls  # noise key = question id and step number


def test_response_round_trips_the_summary():
    generate, _ = scripted({"Q?": ["Thought: t\nAction: finish[yes]"]})
    (episode,) = run_episodes([Episode(key="1", question="Q?")], generate, AgentOptions(), tool=ScriptedTool())
    transcript, summary = read_summary(episode.response())
    assert transcript == "Thought: t\nAction: finish[yes]\nObservation: Episode finished"
    assert summary["answer"] == "yes" and summary["steps"] == 1 and summary["prompt_tokens"] > 100
    assert read_summary("plain text") == ("plain text", None)


def test_single_generation_methods_run_one_round():
    calls = []

    def generate(contexts, gen_kwargs):
        calls.append(gen_kwargs["until"])
        return [" Paris", ""]

    episodes = [Episode(key="1", question="Capital of France?"), Episode(key="2", question="?")]
    run_episodes(episodes, generate, AgentOptions(method="io"))
    assert calls == [["\n\n"]]
    assert (episodes[0].answer, episodes[0].finished) == ("Paris", True)
    assert (episodes[1].answer, dict(episodes[1].format_errors)) == (None, {"empty": 1})


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown method 'rewoo'"):
        AgentOptions(method="rewoo")
    with pytest.raises(ValueError, match="needs a search tool"):
        run_episodes([], lambda c, g: [], AgentOptions(method="react"))
