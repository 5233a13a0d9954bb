"""A bad training file stops `fireact-bench finetune` with one line that names the file and line, never a traceback."""
import json

import pytest

from fireact_bench.adapters.finetune import main
from fireact_bench.adapters.trajectories import load_validated
from tests.test_sft_data import _traj

RECORD = _traj(1).to_dict()


def _record(**fields) -> str:
    return json.dumps({**RECORD, **fields}, ensure_ascii=False)


def _lines(*records: str) -> bytes:
    return "".join(r + "\n" for r in records).encode()


# file name, content, the line named (None: the whole file), what the message says
BAD_FILES = [
    ("array.jsonl", _lines(json.dumps([RECORD])), 1, "a record is a JSON object, not list"),
    ("numbers.jsonl", _lines("[1, 2]"), 1, 'not a {"messages": [...]} record'),
    ("latin1.jsonl", _lines(_record()) + _record(question="Café?").encode("latin-1") + b"\n", 2, "not UTF-8 text"),
    ("null_question.jsonl", _lines(_record(question=None)), 1, "field 'question' must be text, not null"),
    ("null_step.jsonl", _lines(_record(steps=[None])), 1, "a step is an object"),
    ("steps_text.jsonl", _lines(_record(steps="x")), 1, "field 'steps' must be a list, not \"x\""),
    ("question_number.jsonl", _lines(_record(question=12345)), 1, "field 'question' must be text, not 12345"),
    ("problems_numbers.jsonl", _lines(_record(problems=[1])), 1, "field 'problems' must be a list of text"),
    ("not_json.jsonl", _lines(_record(), "", "{oops"), 3, "not valid JSON"),
    ("empty.jsonl", b"", None, "no trajectory records"),
    ("blank.jsonl", b"\n  \n", None, "no trajectory records"),
    ("latin1.json", json.dumps([{"instruction": "Café?", "input": "", "output": "x"}], ensure_ascii=False).encode("latin-1"),
     1, "not UTF-8 text"),
    ("not_a_list.json", b'{"instruction": "q"}', None, "expected a JSON list"),
    # a reward is true, false or null: 0 or "yes" is neither correct nor incorrect, it is a broken record
    *[(f"reward_{i}.jsonl", _lines(_record(), _record(reward=reward)), 2, "field 'reward' must be true, false or null")
      for i, reward in enumerate([0, 0.0, 1, "False", "yes"])],
]


@pytest.mark.parametrize("name,content,line,message", BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_bad_file_is_one_line_naming_file_and_line(tmp_path, capsys, name, content, line, message):
    path = tmp_path / name
    path.write_bytes(content)
    assert main(["--data", str(path), "--prepare-only", "--out", str(tmp_path / "out")]) == 2
    out, err = capsys.readouterr()
    where = f"{path}:{line}: " if line else f"{path}: "
    assert err.splitlines() == [err.strip()] and err.startswith(f"fireact-finetune: {where}") and message in err
    assert "Traceback" not in err and not out  # no report of a half-read file either


def test_blank_lines_are_not_records(tmp_path):
    path = tmp_path / "blank_first.jsonl"
    path.write_bytes(_lines("", _record(), "  ", _record(question="Another?")))
    trajs, report = load_validated(path)
    assert [t.question for t in trajs] == [RECORD["question"], "Another?"] and report["total"] == 2


def test_unknown_method_or_dataset_is_a_validation_reason(tmp_path):
    path = tmp_path / "unknown.jsonl"
    path.write_bytes(_lines(_record(method="toolformer"), _record(question="Q2?", dataset="squad"), _record(question="Q3?")))
    kept, report = load_validated(path)
    assert report["by_reason"] == {"unknown_dataset": 1, "unknown_method": 1}
    assert report["kept"] == len(kept) == 1 and report["kept_by_method"] == {"react": 1}


def test_a_file_without_one_valid_trajectory_is_one_line(tmp_path, capsys):
    path = tmp_path / "all_wrong.jsonl"
    path.write_bytes(_lines(_record(reward=False)))
    assert main(["--data", str(path), "--prepare-only", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"fireact-finetune: no valid trajectory of methods=react tasks=hotpotqa in {path} (excluded: {{'incorrect': 1}})"]
