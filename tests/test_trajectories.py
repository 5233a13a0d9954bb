import json
from pathlib import Path

import pytest

from fireact_bench.adapters.trajectories import append_jsonl, import_fireact, load_validated, read_jsonl, stored_keys, validate, write_jsonl
from fireact_bench.harness.settings import data_dir

FIX = Path(__file__).parent / "fixtures" / "trajectories"
RELEASE = data_dir() / "data" / "finetune"


def test_each_defect_is_named_and_counted():
    trajs, report = load_validated(FIX / "defective.json", keep_invalid=True)
    reasons = [t.reasons for t in trajs]
    assert reasons == [[], [], [], ["incorrect"], ["multiple_finish"], ["missing_reward", "no_finish"],
                       ["missing_reward"], ["malformed_action"], ["duplicate"], ["empty"]]
    assert [t.method for t in trajs[:3]] == ["react", "cot", "reflexion"]
    assert report["total"] == 10 and report["kept"] == 3 and report["excluded"] == 7
    assert report["by_reason"] == {"duplicate": 1, "empty": 1, "incorrect": 1, "malformed_action": 1,
                                   "missing_reward": 2, "multiple_finish": 1, "no_finish": 1}


def test_invalid_are_excluded_but_counted():
    kept, report = load_validated(FIX / "defective.json")
    assert [t.question for t in kept] == ["Paris is the capital of which country?", "Is the sky blue?", "Who wrote Hamlet?"]
    assert report["kept"] + report["excluded"] == report["total"] == 10
    assert all(validate(t) == [] for t in kept)


def test_gpt_format_matches_alpaca_format():
    alpaca = import_fireact(FIX / "defective.json")[:4]
    gpt = import_fireact(FIX / "defective.jsonl")
    assert [(t.question, t.steps, t.answer, t.reward) for t in gpt] == \
           [(t.question, t.steps, t.answer, t.reward) for t in alpaca]
    assert gpt[0].steps[0].to_dict() == {"thought": "I need to search Paris.", "action": "search", "argument": "Paris",
                                         "observation": "Paris is the capital of France."}
    assert gpt[1].source.endswith("defective.jsonl:2")


def test_bad_input_names_file_and_line():
    with pytest.raises(ValueError, match=r"broken\.jsonl:2"):
        import_fireact(FIX / "broken.jsonl")


def test_jsonl_store_is_atomic_and_resumable(tmp_path):
    trajs = import_fireact(FIX / "defective.json")
    store = tmp_path / "store.jsonl"
    assert append_jsonl(store, trajs[:5]) == 5
    with open(store, "a") as fh:  # a crash in the middle of a line
        fh.write('{"question_id": "cut sh')
    assert append_jsonl(store, trajs) == 5  # the 5 already there are skipped, the cut line is dropped
    assert append_jsonl(store, trajs) == 0
    stored = read_jsonl(store)
    # a repeated question is a second sample (seed 1), so it has its own key
    assert [t.seed for t in trajs if t.question.startswith("Paris")] == [0, 1]
    assert [t.key for t in stored] == [t.key for t in trajs]
    assert stored[0] == trajs[0]
    write_jsonl(tmp_path / "all.jsonl", trajs)
    assert read_jsonl(tmp_path / "all.jsonl") == trajs
    assert [p.name for p in tmp_path.iterdir()] and not list(tmp_path.glob(".*.tmp"))
    (tmp_path / "bad.jsonl").write_text(stored[0].to_json() + "\n" + json.dumps({"question_id": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        read_jsonl(tmp_path / "bad.jsonl")



def test_a_whole_last_record_without_its_newline_is_kept(tmp_path):
    trajs = import_fireact(FIX / "defective.json")[:2]
    store = tmp_path / "store.jsonl"
    store.write_text(trajs[0].to_json() + "\n" + trajs[1].to_json())  # e.g. written by hand or another tool
    assert stored_keys(store) == {trajs[0].key, trajs[1].key}
    assert store.read_text().endswith("\n") and read_jsonl(store) == trajs
    assert stored_keys(tmp_path / "none.jsonl") == set()


def test_only_a_true_reward_is_correct():
    traj = import_fireact(FIX / "defective.json")[0]
    for reward in (0, 1, "yes"):  # only a caller that bypasses the schema can set these
        traj.reward = reward
        assert validate(traj) == ["incorrect"]

@pytest.mark.skipif(not RELEASE.is_dir(), reason="FireAct's release is not available")
def test_release_defects():
    _, report = load_validated(RELEASE / "alpaca_format" / "hotpotqa_multimethod.json")
    assert report["total"] == 734
    assert report["by_reason"]["incorrect"] == 40 and report["by_reason"]["multiple_finish"] == 14
    trajs, report = load_validated(RELEASE / "alpaca_format" / "multitask.json", keep_invalid=True)
    counts = {d: sum(t.dataset == d for t in trajs) for d in ("hotpotqa", "strategyqa", "mmlu")}
    assert counts == {"hotpotqa": 500, "strategyqa": 388, "mmlu": 456}
    mmlu = next(t for t in trajs if t.dataset == "mmlu")
    assert "\nA. " in mmlu.question and mmlu.steps[0].thought  # options moved back into the question
    _, report = load_validated(RELEASE / "alpaca_format" / "multitask_multimethod.json")
    assert report["by_reason"]["duplicate"] == 1
