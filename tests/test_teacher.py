"""Teacher trajectory generation: API teacher replaying recorded GPT turns, resume, Reflexion, local HF teacher."""
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from lm_eval.api.model import LM

from fireact_bench.adapters.teacher import generate, main, rejected_path
from fireact_bench.adapters.trajectories import load_validated, read_jsonl
from fireact_bench.harness.agent.loop import AgentOptions
from fireact_bench.harness.lmeval.agent_lm import FireActLM
from fireact_bench.harness.settings import data_dir

SECRET = "sk-teacher-DO-NOT-LEAK-9876543210"
RECORDED = "trajs/hotpotqa_dev_0_500_ft_gpt-3.5-turbo-0613_princeton-nlp__7woQRsdi_0.0_2023-09-21-16-19-51.json"


def _recorded_episodes(n_correct: int, n_wrong: int) -> list[dict]:
    """FireAct's recorded GPT-3.5 chat episodes with searches: question, the assistant turns, the reward."""
    data = json.loads((data_dir() / RECORDED).read_text())
    picked = {True: [], False: []}
    for qid, rec in data.items():
        turns = [m["content"] for m in rec["traj"] if m["role"] == "assistant"]
        wanted = n_correct if rec["reward"] else n_wrong
        if len(turns) >= 2 and len(picked[bool(rec["reward"])]) < wanted:
            picked[bool(rec["reward"])].append({"id": qid, "question": rec["traj"][0]["content"], "answer": rec["gt"],
                                               "turns": turns, "reward": bool(rec["reward"])})
    return picked[True] + picked[False]


@pytest.fixture
def recorded_api():
    """A loopback OpenAI chat-completions endpoint that answers each agent step with the recorded turn."""
    episodes = _recorded_episodes(2, 2)
    requests = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            requests.append({"auth": self.headers.get("Authorization"), **body})
            tail = body["messages"][-1]["content"].rsplit("\n\n\n", 1)[-1]  # this question and its steps so far
            episode = next(e for e in episodes if tail.startswith(e["question"]))
            turn = episode["turns"][tail.count("\nObservation")]
            reply = {"id": "chatcmpl-replay", "object": "chat.completion", "model": body["model"],
                     "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": turn}}],
                     "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}
            payload = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/v1/chat/completions", episodes, requests
    server.shutdown()


def test_api_teacher_reproduces_recorded_rewards_and_hides_the_key(recorded_api, tmp_path, monkeypatch):
    url, episodes, requests = recorded_api
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    # gpt-4: lm-eval drops `stop` for model names containing "5"; the agent cuts turns itself, tested below
    lm = FireActLM(inner="openai-chat-completions", model="gpt-4-0613", base_url=url)
    docs = [{"id": e["id"], "question": e["question"], "answer": e["answer"], "kind": "qa"} for e in episodes]
    out = tmp_path / "teacher.jsonl"
    report = generate(lm, docs, out, dataset="hotpotqa", split="dev", method="react", teacher="gpt-4-0613")

    kept, rejected = read_jsonl(out), read_jsonl(rejected_path(out))
    assert report["kept"] == sum(e["reward"] for e in episodes) == len(kept) == 2
    assert [t.reasons for t in rejected] == [["incorrect"], ["incorrect"]]
    for traj in kept:  # the replayed episode is the recorded one, turn for turn, with real observations
        recorded = next(e for e in episodes if e["question"] == traj.question)
        assert len(traj.steps) == len(recorded["turns"]) and traj.steps[-1].action == "finish"
        assert all(s.observation and not s.observation.startswith("Invalid") for s in traj.steps)
    assert all(r["auth"] == f"Bearer {SECRET}" and r["temperature"] == 0 and "\nObservation" in r["stop"] for r in requests)
    assert SECRET not in out.read_text() + rejected_path(out).read_text()
    # the stored trajectories are valid fine-tuning data as they stand
    valid, validation = load_validated([out])
    assert validation["kept"] == 2 and validation["excluded"] == 0


class CountingLM(LM):
    """Answers every question "Paris" after one search; fails on demand after some batches."""

    def __init__(self, fail_after_batches=None, reflect=False):
        super().__init__()
        self.batches, self.fail_after, self.reflect = [], fail_after_batches, reflect

    def generate_until(self, requests, disable_tqdm=False):
        if self.fail_after is not None and len(self.batches) >= self.fail_after:
            raise RuntimeError("killed")
        self.batches.append([r.args[0] for r in requests])
        outputs = []
        for request in requests:
            tail = request.args[0].rsplit("\n\n\n", 1)[-1]
            if self.reflect and "wrap up" not in tail:  # keeps searching until Reflexion says to wrap up
                outputs.append(" nothing yet.\nAction: search[capital of France]")
            elif "Observation" not in tail:
                outputs.append(" I should search.\nAction: search[capital of France]")
            else:
                outputs.append(" It is Paris.\nAction: finish[Paris]")
        return outputs

    def loglikelihood(self, requests, disable_tqdm=False):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        raise NotImplementedError


def _docs(n):
    return [{"id": f"q{i}", "question": f"What is the capital of country {i}?", "answer": "Paris" if i % 3 else "Rome",
             "kind": "qa"} for i in range(n)]


def test_teacher_resumes_after_a_crash_without_duplicates(tmp_path):
    out = tmp_path / "t.jsonl"
    crashing = FireActLM(inner="counting", inner_lm=CountingLM(fail_after_batches=2))  # batch 1 = 2 steps
    with pytest.raises(RuntimeError, match="killed"):
        generate(crashing, _docs(7), out, dataset="hotpotqa", split="dev", teacher="scripted", batch=3)
    assert len(read_jsonl(out)) + len(read_jsonl(rejected_path(out))) == 3  # the finished batch is on disk

    lm = CountingLM()
    report = generate(FireActLM(inner="counting", inner_lm=lm), _docs(7), out, dataset="hotpotqa", split="dev",
                      teacher="scripted", batch=3)
    assert report["already_done"] == 3 and report["kept"] + report["rejected"] == 4
    assert sum(len(b) for b in lm.batches) == 4 * 2  # only the 4 new questions ran (2 steps each)
    kept, rejected = read_jsonl(out), read_jsonl(rejected_path(out))
    keys = [t.key for t in kept + rejected]
    assert len(keys) == len(set(keys)) == 7
    assert sorted(t.source.rsplit(":", 1)[-1] for t in rejected) == ["q0", "q3", "q6"]  # gold Rome, answered Paris
    again = generate(FireActLM(inner="counting", inner_lm=CountingLM(fail_after_batches=0)), _docs(7), out,
                     dataset="hotpotqa", split="dev", teacher="scripted")
    assert again["already_done"] == 7 and again["kept"] == 0



def test_teacher_restarts_after_a_torn_last_line(tmp_path):
    """A kill or a full disk in the middle of a write leaves the last line cut short: the rerun reads the store
    (it used to fail there, `t.jsonl:2: not a trajectory record`), cuts the torn line and redoes that question."""
    out = tmp_path / "t.jsonl"
    run = lambda: generate(FireActLM(inner="counting", inner_lm=CountingLM()), _docs(3), out, dataset="hotpotqa",
                           split="dev", teacher="scripted")
    run()
    whole = out.read_bytes()
    out.write_bytes(whole[:-40])
    report = run()
    assert report["already_done"] == 2 and report["kept"] == 1 and out.read_bytes() == whole

def test_reflexion_teacher_reflects_at_step_5_and_wraps_up_at_step_9(tmp_path):
    out = tmp_path / "r.jsonl"
    lm = FireActLM(inner="counting", inner_lm=CountingLM(reflect=True))
    generate(lm, _docs(2)[1:], out, dataset="hotpotqa", split="dev", method="reflexion", teacher="scripted")
    (traj,) = read_jsonl(out)
    assert traj.method == "reflexion" and len(traj.steps) == 9 and traj.answer == "Paris"
    assert "improve my strategy" in traj.steps[4].thought and "wrap up" in traj.steps[8].thought
    _, report = load_validated([out])  # the import's method classifier agrees
    assert report["kept_by_method"] == {"reflexion": 1}


def test_teacher_command_validates_its_input(tmp_path):
    with pytest.raises(SystemExit):
        main(["--dataset", "jsonl", "--out", str(tmp_path / "x.jsonl")])


@pytest.mark.slow
def test_local_hf_teacher_writes_valid_resumable_jsonl(tmp_path):
    """SmolLM2 as the teacher on 2 StrategyQA training questions (2 steps): every episode stored once."""
    out = tmp_path / "smol.jsonl"
    args = ["--model", "hf", "--model_args", "pretrained=smollm2-135m-instruct", "--dataset", "strategyqa",
            "--split", "train", "--limit", "2", "--out", str(out)]
    lm = FireActLM(inner="hf", pretrained="smollm2-135m-instruct", additional_config={"batch_size": 2})
    from fireact_bench.harness.data.questions import load_docs

    docs = load_docs("strategyqa", split="train")[:2]
    options = AgentOptions(method="react", dataset="strategyqa", max_steps=2)
    report = generate(lm, docs, out, dataset="strategyqa", split="train", teacher="smollm2-135m-instruct", options=options)
    stored = (read_jsonl(out) if out.exists() else []) + read_jsonl(rejected_path(out))
    assert report["kept"] + report["rejected"] == 2 == len(stored)
    assert {t.dataset for t in stored} == {"strategyqa"} and all(1 <= len(t.steps) <= 2 for t in stored)
    assert all(t.reward is not None and (t.reasons or t.reward) for t in stored)
    assert main(args) == 0  # the command on the same file: nothing left to do, nothing duplicated
    assert len((read_jsonl(out) if out.exists() else []) + read_jsonl(rejected_path(out))) == 2
