"""Every parser of model output and trajectory text is linear: 1 MB of its worst shapes in under 50 ms.

Teacher outputs from API models and imported trajectories have no length cap. The shapes are the ones that
made the old regexes backtrack (`^\\s*Action` across lines: parse_turn took 9 s, split_trajectory 21 s, on
32 kB of blank lines after some text), not random text. Wall time (perf_counter), the best of up to 5 runs: the test
machine may be busy.
"""
import gc
import time
from pathlib import Path

import pytest

from fireact_bench.adapters.trajectories import _parse_body
from fireact_bench.harness.agent.methods import parse_answer, parse_turn, split_trajectory

MB = 1_000_000


def _repeat(unit: str, size: int = MB) -> str:
    return (unit * (size // len(unit) + 1))[:size]


SHAPES = {
    "newline x": _repeat("\n x"),
    "short lines of spaces": "x" + _repeat(" \n") + "x",
    "empty lines": "x" + "\n" * MB + "x",
    "run of spaces": "x" + " " * MB + "x",
    "crlf lines": "x" + _repeat("\r\n") + "x",
    "crlf x": _repeat("\r\n x"),
    "unicode whitespace": "x" + _repeat("\u2003\n\u00a0\u2028\u3000\x85") + "x",
    "Action: labels": _repeat("\nAction: "),
    "Action: on one line": _repeat("Action:"),
    "Action 1 without colon": _repeat("\n  Action 1"),
    "Action then blank lines": "x\nAction" + "\n" * MB + "x",
    "Action: then spaces": "Action:" + " " * MB + "x",
    "Action digits": "Action" + _repeat(" 1"),
    "indented Action": _repeat("\n \t Action x"),
    "Thought then blank lines": "Thought" + _repeat(" \n") + "x",
    "Thought: on one line": _repeat("Thought: "),
    "Observation: labels": _repeat("\nObservation: "),
    "labels then blank lines": "Thought action observation answer search[ finish[" + "\n" * MB + "x",
    "search[ without ]": _repeat("search["),
    "[ without ]": "search" + "[" * MB,
    "search[ lines": _repeat("search[\n"),
    "research[ x]": _repeat("research[ x] "),
    "nested brackets": "Action: search[" + "[" * (MB // 2) + "]" * (MB // 2),
    "many finishes": _repeat("Action: finish[x]\n"),
    "Answer then spaces": "Answer" + " " * MB,
    "Answer words": _repeat("Answer "),
    "reward then spaces": "Observation: Episode finished, reward = " + " " * MB + "x",
    "reward lines": _repeat("\nObservation: Episode finished, reward = x \n"),
    "option lines": _repeat("\nA. "),
}
PARSERS = {
    "parse_turn": parse_turn,
    "split_trajectory": split_trajectory,
    "parse_answer cot": lambda text: parse_answer("cot", text),
    "parse_answer text": lambda text: parse_answer("text", text),
    "parse_answer io": lambda text: parse_answer("io", text),
    "import of a release record": lambda text: _parse_body(Path("multitask.json"), 1, "Question?", text, None),
}


def _seconds(parse, text: str, runs: int = 5, enough: float = 0.0) -> float:
    """The fastest of a few runs (robust to a busy machine), stopping at the first run that takes `enough` or less."""
    best = float("inf")
    # a collection pass over 100,000 fresh objects is the collector's cost, not the parser's (and no gc.collect()
    # first: in a test process holding torch and vLLM, one pass takes most of a second)
    gc.disable()
    try:
        for _ in range(runs):
            started = time.perf_counter()
            parse(text)
            best = min(best, time.perf_counter() - started)
            if best <= enough:
                break
    finally:
        gc.enable()
    return best


@pytest.mark.parametrize("shape", SHAPES)
def test_one_megabyte_parses_in_50_ms(shape):
    text = SHAPES[shape]
    slow = {name: round(seconds * 1000, 1) for name, parse in PARSERS.items() if (seconds := _seconds(parse, text, enough=0.05)) > 0.05}
    assert not slow, f"{shape}: ms per MB {slow}"


def test_many_steps_cost_the_same_per_step():
    """1 MB of "\\nThought:" is 111,111 steps: the output itself dominates, so the bound is per step (a few µs),
    about the same at 1 MB as at 64 kB: a quadratic parser costs 16 times more per step at 1 MB, so the bound is
    half that, which leaves room for cache effects of the larger list on a busy machine."""
    small, large = _repeat("\nThought:", MB // 16), _repeat("\nThought:")
    per_step = {len(text): _seconds(split_trajectory, text) / len(split_trajectory(text)) for text in (small, large)}
    assert per_step[len(large)] < 20e-6
    assert per_step[len(large)] < 8 * per_step[len(small)], per_step
