"""The tasks inside lm-eval: the fireact model with a scripted inner LM, gen_kwargs overrides, secrets."""
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from fireact_bench.harness.lmeval.agent_lm import options_from_gen_kwargs
from fireact_bench.harness.lmeval.api import evaluate
from scripted_lm import ScriptedLM

SECRET = "sk-test-DO-NOT-LEAK-0123456789abcdef"


@pytest.fixture
def questions(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(json.dumps({"id": f"q{i}", "question": f"Question {i}?", "answer": "Paris"}) for i in range(5)))
    return path


@pytest.fixture
def serpapi_server():
    """A loopback stand-in for SerpAPI that records the query strings it was sent."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            body = json.dumps({"answer_box": {"answer": "Paris is the capital"}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", seen
    server.shutdown()


def run(questions, gen_kwargs=None, **options):
    if gen_kwargs is None or isinstance(gen_kwargs, str):  # a two-passage local corpus: the search is predictable
        corpus = questions.with_name("corpus.jsonl")
        corpus.write_text(json.dumps({"text": "Paris is the capital of France."}) + "\n" + json.dumps({"text": "Berlin is in Germany."}))
        bm25 = "fireact.tool=bm25,fireact.tool_args='" + json.dumps({"corpus": str(corpus)}) + "'"
        gen_kwargs = bm25 + ("," + gen_kwargs if gen_kwargs else "")
    lm = ScriptedLM()
    out = evaluate(["fireact_jsonl"], model=lm, limit=None, gen_kwargs=gen_kwargs,
                   metadata={"path": str(questions)}, **options)
    return lm, out


def test_agent_runs_inside_lm_eval(questions):
    lm, out = run(questions)
    metrics = out["results"]["fireact_jsonl"]
    assert lm.batches == [5, 5]  # two agent steps, each one batched call for all five questions
    assert metrics["em,episode"] == 1.0 and metrics["steps,episode"] == 2.0 and metrics["tool_calls,episode"] == 1.0
    assert "em_stderr,episode" in metrics
    sample = out["samples"]["fireact_jsonl"][0]
    assert "Action: search[capital of France]\nObservation: " in sample["resps"][0][0]  # whole trajectory logged


def test_gen_kwargs_override_noise(questions):
    _, out = run(questions, gen_kwargs="fireact.noise=none,fireact.noise_p=1.0")
    metrics = out["results"]["fireact_jsonl"]
    assert metrics["em,episode"] == 0.0  # every observation became "None", so the scripted answer is wrong
    assert all("Observation: None" in s["resps"][0][0] for s in out["samples"]["fireact_jsonl"])


def test_api_key_never_in_results_samples_or_logs(questions, serpapi_server, monkeypatch, caplog):
    url, seen = serpapi_server
    monkeypatch.setenv("SERPAPI_API_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    tool_args = json.dumps({"base_url": url})
    _, out = run(questions, gen_kwargs={"fireact.tool": "serpapi", "fireact.tool_args": tool_args})
    assert out["results"]["fireact_jsonl"]["em,episode"] == 1.0
    assert any(SECRET in path for path in seen)  # the key was really used ...
    dumped = json.dumps(out, default=str)
    assert SECRET not in dumped and SECRET not in caplog.text  # ... and appears nowhere we write


def test_unknown_option_is_named():
    with pytest.raises(ValueError, match="unknown fireact option"):
        options_from_gen_kwargs({"fireact": {"methd": "react"}})
    options, rest = options_from_gen_kwargs({"fireact": {"method": "cot"}, "fireact.noise": None, "until": ["x"]})
    assert (options.method, options.noise, rest) == ("cot", "none", {"until": ["x"]})


def test_no_namespaced_key_means_one_generation_from_the_tasks_prompt():
    options, rest = options_from_gen_kwargs({"until": ["\n\n"], "max_gen_toks": 64})
    assert (options.method, options.max_gen_toks, rest) == ("text", 64, {"until": ["\n\n"], "max_gen_toks": 64})
