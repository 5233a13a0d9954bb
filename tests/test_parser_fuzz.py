"""Property tests of the turn parser and the trajectory splitter (hypothesis).

1. No text makes a parser raise, and every parsed step is well formed.
2. A valid step survives its own rendering: parse_turn(turn_text(step)) == step, and split_trajectory of a
   rendered trajectory gives its steps back. Valid means what the renderer can write unambiguously:
   - thought, argument and observation are single lines (no "\\n") with no surrounding whitespace
     (the parser strips it);
   - the thought does not itself start with a Thought label ("Thought 2: ..."; the parser strips one);
   - a search has a non-empty argument (an empty one is the error `empty_search`);
   - in a trajectory every step has a thought (a step's Thought line is what starts it).
   Brackets are free: the argument runs to the last `]` of the action line, so `a]b[c` survives.
"""
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from fireact_bench.harness.agent.methods import Step, parse_answer, parse_turn, split_trajectory, turn_text

# The pieces that steer the parser, mixed with arbitrary text.
TOKENS = ["Thought", "Action", "Observation", "Answer", "search", "finish", "Search", "FINISH", "research", ":", " 2", "[", "]",
          "[[", "]]", "\n", "\r\n", " ", "\t", "\u2003", "\u2028", "\u0130", "Episode finished, reward = True", "x"]
noisy_text = st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=5)), max_size=40).map("".join)


def _one_line(min_size=0):
    return st.text(st.characters(blacklist_characters="\n", blacklist_categories=("Cs",)), min_size=min_size, max_size=30) \
        .map(str.strip).filter(lambda s: len(s) >= min_size)


_THOUGHT_LABEL = re.compile(r"thought[^\S\n]*\d*[^\S\n]*:", re.IGNORECASE)
thoughts = _one_line().filter(lambda s: not _THOUGHT_LABEL.match(s))
steps = st.builds(lambda thought, action, argument, observation: Step(thought, action, argument, observation),
                  thoughts, st.sampled_from(["search", "finish"]), _one_line(min_size=1), st.none() | _one_line())


@settings(max_examples=300, deadline=None)
@given(noisy_text, st.booleans())
def test_no_text_makes_a_parser_raise(text, truncated):
    step = parse_turn(text, truncated=truncated)
    assert step.action in (None, "search", "finish")
    assert step.action is not None or step.errors
    assert (step.argument is None) == (step.action is None and "empty_search" not in step.errors)
    for parsed in split_trajectory(text):
        assert parsed.action in (None, "search", "finish")
    for method in ("io", "cot", "text"):
        answer, errors = parse_answer(method, text)
        assert (answer is None) == bool(errors)


@settings(max_examples=200, deadline=None)
@given(steps)
def test_a_valid_turn_survives_rendering(step):
    parsed = parse_turn(turn_text(step))
    assert (parsed.thought, parsed.action, parsed.argument, parsed.errors) == (step.thought, step.action, step.argument, [])


@settings(max_examples=100, deadline=None)
@given(st.lists(steps.filter(lambda s: s.thought), min_size=1, max_size=6))
def test_a_valid_trajectory_survives_rendering(trajectory):
    parsed = split_trajectory("\n".join(step.as_text() for step in trajectory))
    assert [(p.to_dict(), p.errors) for p in parsed] == [(s.to_dict(), []) for s in trajectory]

