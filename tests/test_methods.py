"""The parser against a corpus of malformed outputs: never a crash, every deviation counted."""
import pytest

from fireact_bench.harness.agent import methods
from fireact_bench.harness.agent.methods import parse_answer, parse_turn, split_trajectory

CORPUS = [
    # (model output, action, argument, errors)
    ("Thought: I need X.\nAction: search[X]", "search", "X", []),
    ("Thought: done\nAction: finish[Paris]", "finish", "Paris", []),
    ("Thought: done\nAction 3: Finish[Paris]", "finish", "Paris", []),
    ("Thought: done\nAction: finish[Paris] because it is the capital", "finish", "Paris", ["text_after_finish"]),
    ("Thought: I will search search[X]", "search", "X", ["missing_action_label"]),
    ("Thought: hmm\nAction: lookup[X]", None, None, ["malformed_action"]),
    ("Thought: hmm\nAction: search X", None, None, ["malformed_action"]),
    ("Thought: only thinking", None, None, ["missing_action"]),
    ("", None, None, ["empty"]),
    ("   \n  ", None, None, ["empty"]),
    ("Thought: a\nAction: search[a]\nAction: finish[b]", "search", "a", ["multiple_actions"]),
    ("Thought: a\nAction: search[]", None, "", ["empty_search"]),
    ("Thought: unterminated\nAction: search[abc", None, None, ["malformed_action"]),
    ("Action: finish[multi\nline]", "finish", "multi\nline", []),
    # nested brackets: as FireAct, the argument runs to the last `]` of the action line
    ("Thought: t\nAction: search[the film [2004] director]", "search", "the film [2004] director", []),
    ("Action: finish[[1, 2]]", "finish", "[1, 2]", []),
    ("Action: search[a]\nObservation [x]", "search", "a", []),
    ("Action: finish[multi\nline] [x]", "finish", "multi\nline] [x", []),
]


@pytest.mark.parametrize("text,action,argument,errors", CORPUS)
def test_parse_turn_corpus(text, action, argument, errors):
    step = parse_turn(text)
    assert step.action == action
    if action:
        assert step.argument == argument
    assert step.errors == errors


def test_runaway_is_counted_and_still_parsed():
    step = parse_turn("Thought: " + "blah " * 200 + "\nAction: search[x]", truncated=True)
    assert step.errors == ["runaway"] and step.action == "search"


def test_random_garbage_never_raises():
    import random

    rng = random.Random(0)
    alphabet = "[]:\n ActionThoughtsearchfinish?()\\"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        step = parse_turn(text)
        assert step.action in (None, "search", "finish")
        assert step.action is not None or step.errors


def test_split_trajectory_matches_fireact_format():
    text = ("Thought: t1\nAction: search[q1]\nObservation: o1\nThought: t2\nAction: finish[a]\n"
            "Observation: Episode finished, reward = True\n")
    steps = split_trajectory(text)
    assert [(s.thought, s.action, s.argument, s.observation) for s in steps] == [
        ("t1", "search", "q1", "o1"), ("t2", "finish", "a", "Episode finished, reward = True")]
    assert "\n".join(s.as_text() for s in steps) == text.strip()


def test_single_generation_answers():
    assert parse_answer("cot", " The x is y. So the answer is y.\nAnswer: y") == ("y", [])
    assert parse_answer("cot", "no answer here") == (None, ["missing_answer"])
    assert parse_answer("io", " Richard Nixon\nmore") == ("Richard Nixon", [])
    assert parse_answer("io", "") == (None, ["empty"])


def test_contexts_follow_fireact_prompts():
    question = "Who?"
    react = methods.build_context("react", "hotpotqa", question, [])
    assert react.startswith("Solve a question answering task") and react.endswith("\n\n\nWho?\n")
    ft = methods.build_context("ft", "hotpotqa", question, [parse_turn("Thought: t\nAction: search[q]")])
    assert ft.startswith("Below is an instruction") and "### Instruction:\nWho?\n\n### Response:\nThought: t\nAction: search[q]\n" in ft
    assert methods.build_context("io", "strategyqa", "Is it?", []).endswith("Yes or no: Is it?\nAnswer:")
    steps = [parse_turn("Thought: t\nAction: search[q]")] * 4
    assert methods.build_context("reflexion", "hotpotqa", question, steps).endswith(
        "Thought: Now that I haven't solved the task within 5 steps, I need to figure out how to improve my strategy. ")
