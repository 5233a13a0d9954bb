import pytest

from fireact_bench.adapters.sft_data import IGNORE, build_training_set, select, tokenize
from fireact_bench.adapters.trajectories import Trajectory, question_id
from fireact_bench.harness.agent.methods import Step
from fireact_bench.harness.lmeval.backbones import resolve_model


def _traj(i: int, method: str = "react", dataset: str = "hotpotqa") -> Trajectory:
    q = f"Question number {i}?"
    search = [{"thought": f"I need to search {i}.", "action": "search", "argument": f"topic {i}",
               "observation": f"Topic {i} is about the number {i}."}] if method != "cot" else []
    finish = {"thought": f"So the answer is {i}.", "action": "finish", "argument": str(i),
              "observation": "Episode finished, reward = True"}
    return Trajectory(question_id(dataset, q), dataset, "train", method, "gpt-4", "serpapi", 0, q,
                      [Step.from_dict(s) for s in search + [finish]], str(i), True, f"test:{i}")


POOL = [_traj(i, m, d) for i in range(400) for m, d in (("react", "hotpotqa"), ("cot", "strategyqa"), ("reflexion", "mmlu"))]


def test_smaller_sets_are_subsets_of_larger_ones():
    keys = {n: [t.key for t in select(POOL, n, "all", "multitask", seed=7)] for n in (100, 200, 500)}
    assert keys[100] == keys[200][:100] and keys[200] == keys[500][:200]
    assert keys[500] == [t.key for t in select(list(reversed(POOL)), 500, "all", "multitask", seed=7)]
    assert keys[100] != [t.key for t in select(POOL, 100, "all", "multitask", seed=8)]
    assert {t.method for t in select(POOL, None, "react+cot", "multitask")} == {"react", "cot"}
    assert len(select(POOL, None, "react", "hotpotqa")) == 400
    with pytest.raises(ValueError, match="only 400"):
        select(POOL, 500, "react", "hotpotqa")


def test_hash_and_composition():
    a = build_training_set(POOL, size=30, methods="all", tasks="multitask", seed=1)
    b = build_training_set(list(reversed(POOL)), size=30, methods="all", tasks="multitask", seed=1)
    assert a.data_hash == b.data_hash
    assert a.data_hash != build_training_set(POOL, size=30, methods="all", tasks="multitask", seed=2).data_hash
    assert sum(a.composition["by_method"].values()) == sum(a.composition["by_dataset"].values()) == 30


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))


def _trained_text(row, tokenizer):
    """Decoded runs of consecutive label-bearing tokens."""
    runs, current = [], []
    for token, label in zip(row["input_ids"], row["labels"]):
        if label != IGNORE:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return [tokenizer.decode(r) for r in runs + ([current] if current else [])]


@pytest.mark.parametrize("fmt", ["alpaca", "chat"])
def test_only_thoughts_and_actions_carry_loss(fmt, tokenizer):
    ts = build_training_set([_traj(3)], fmt=fmt, tokenizer=tokenizer)
    row = tokenize(ts.examples[0], tokenizer, max_len=4096)
    end = "<|im_end|>\n" if fmt == "chat" else "\n"
    assert _trained_text(row, tokenizer) == [
        f"Thought: I need to search 3.\nAction: search[topic 3]{end}",
        f"Thought: So the answer is 3.\nAction: finish[3]{end}"]
    masked = tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label == IGNORE])
    assert "Question number 3?" in masked and "Observation: Topic 3 is about the number 3." in masked
    assert "Episode finished" in masked
    # segment-wise tokenization gives the same ids as tokenizing the whole text here
    assert row["input_ids"] == tokenizer(ts.examples[0].text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("fmt", ["alpaca", "chat"])
def test_train_on_all_masks_nothing(fmt, tokenizer):
    ts = build_training_set([_traj(5)], fmt=fmt, tokenizer=tokenizer)
    row = tokenize(ts.examples[0], tokenizer, max_len=4096, train_on="all")
    assert row["labels"] == row["input_ids"]
    short = tokenize(ts.examples[0], tokenizer, max_len=20)
    assert len(short["input_ids"]) == len(short["labels"]) == 20
