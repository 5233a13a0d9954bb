"""Search failures against a loopback SerpAPI (127.0.0.1 only): each becomes a redacted SearchError, the agent
sees it as an observation and counts it, and only a failure rate past max_tool_error_rate stops a run."""
import http.server
import json
import logging
import os
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest
from googleapiclient.http import HttpMockSequence

from fireact_bench.harness.agent.loop import SEARCH_FAILED, AgentOptions, Episode, ToolFailureRateExceeded, run_episodes
from fireact_bench.harness.lmeval.api import evaluate
from fireact_bench.harness.tools import secrets
from fireact_bench.harness.tools.base import MAX_OBSERVATION_CHARS, NO_RESULTS, CacheMiss, SearchBackend, SearchError
from fireact_bench.harness.tools.cache import SearchCache
from fireact_bench.harness.tools.factory import make_search
from scripted_lm import ScriptedLM

SECRET = "sk-test-SECRET123-do-not-leak"
FAST = {"base_delay": 0.001, "max_retries": 2}


# ----------------------------------------------------------------------------- a scripted loopback SerpAPI


def reply(status=200, body=None, reason=None, raw=None, length=True):
    """An answer; "<KEY>" in the reason or body is replaced by the api_key the request carried (an echo)."""

    def send(handler, key):
        payload = (raw if raw is not None else json.dumps(body)).replace("<KEY>", key).encode()
        handler.send_response(status, reason and reason.replace("<KEY>", key))
        handler.send_header("Content-Type", "text/html" if raw and raw.startswith("<") else "application/json")
        if length:
            handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    return send


def reset(handler, key):
    handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
    handler.connection.close()


def incomplete(handler, key):
    handler.send_response(200)
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    handler.wfile.write(b'{"organic_results": [')  # then the connection closes


def trickle(handler, key):
    handler.send_response(200)
    handler.send_header("Content-Length", "400")
    handler.end_headers()
    for _ in range(400):  # 20 s in all; each byte well within the socket time-out
        handler.wfile.write(b" ")
        handler.wfile.flush()
        time.sleep(0.05)


OK = reply(body={"answer_box": {"answer": "Paris is the capital"}})
MB3 = "x" * 3_000_000
# name -> (what the server does, what the error says); every one echoes or could echo the key
FAILURES = {
    "http_400_echoes_key_param": (reply(400, {"error": "bad"}, reason="Bad request for api_key=<KEY>"), "HTTP 400"),
    "http_401_echoes_bare_key": (reply(401, {"error": "bad"}, reason="Invalid API key <KEY>"), "HTTP 401"),
    "error_200_invalid_key": (reply(body={"error": "Invalid API key <KEY>. See https://serpapi.com"}), "SerpAPI: Invalid API key"),
    "error_200_quota": (reply(body={"error": "Your account has run out of searches."}), "run out of searches"),
    "http_500": (reply(500, {"error": "<KEY>"}), "HTTP 500"),
    "truncated_json": (reply(raw='{"organic_results": [{"snippet": "<KEY>'), "JSONDecodeError"),
    "html_page": (reply(raw="<html><body>502 Bad Gateway <KEY></body></html>"), "JSONDecodeError"),
    "json_list": (reply(body=["<KEY>"]), "JSON list, not an object"),
    "reset_connection": (reset, "Connection"),
    "incomplete_read": (incomplete, "IncompleteRead"),
    "huge_body_with_length": (reply(raw=MB3), "larger than 2,000,000 bytes"),
    "huge_body_without_length": (reply(raw=MB3, length=False), "larger than 2,000,000 bytes"),
    "trickle": (trickle, "time-out"),
}


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        params = dict(urllib.parse.parse_qsl(urllib.parse.urlparse(self.path).query))
        self.server.seen.append(params)
        behaviour = self.server.script.pop(0) if self.server.script else self.server.default
        try:
            behaviour(self, params.get("api_key", ""))
        except OSError:  # the client gave up first
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def serp(monkeypatch):
    monkeypatch.setenv("SERPAPI_API_KEY", SECRET)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.script, server.default, server.seen = [], OK, []
    server.url = f"http://127.0.0.1:{server.server_port}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def _tool(server, **options):
    return make_search("serpapi", base_url=server.url, **{**FAST, "timeout": 0.5, **options})


def _no_secret(*texts, records=()):
    for text in texts:
        assert SECRET not in text
    for record in records:  # the stored message and arguments too, not only the formatted text
        assert SECRET not in record.getMessage() and SECRET not in str(record.msg) and SECRET not in str(record.args)


# ----------------------------------------------------------------------------- backends: every failure is a SearchError


@pytest.mark.parametrize("mode", FAILURES)
def test_every_failure_is_a_redacted_search_error(serp, mode, caplog):
    caplog.set_level(logging.DEBUG)
    serp.default, expected = FAILURES[mode]
    tool = _tool(serp)
    started = time.monotonic()
    with pytest.raises(SearchError, match=expected) as info:
        tool.search("capital of France")
    assert time.monotonic() - started < 5  # the trickle too: 3 tries of a 0.5 s deadline, not 3 x 20 s
    assert serp.seen and serp.seen[0]["api_key"] == SECRET  # the key was really sent (and echoed back)
    assert tool.stats["errors"] == 1 and "\n" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    _no_secret(str(info.value), info.value.reason, repr(info.value), caplog.text, records=caplog.records)


def test_transient_failures_are_retried_permanent_ones_not(serp):
    serp.default = reset
    with pytest.raises(SearchError, match="after 2 retries"):
        _tool(serp).search("q")
    assert len(serp.seen) == 3
    serp.seen.clear()
    serp.default = FAILURES["json_list"][0]
    with pytest.raises(SearchError, match="failed: the answer is a JSON list"):
        _tool(serp).search("q")
    assert len(serp.seen) == 1


def test_no_results_is_an_answer_not_an_error(serp):
    serp.default = reply(body={"error": "Google hasn't returned any results for this query."})
    tool = _tool(serp)
    assert tool.search("zzqx nothing") == NO_RESULTS and tool.stats["errors"] == 0


def test_observation_is_capped(serp):
    serp.default = reply(body={"answer_box": {"answer": "word " * 300_000}})  # 1.5 MB: under the byte cap
    observation = _tool(serp).search("q")
    assert observation.startswith("word word") and observation.endswith(" ...")
    assert len(observation) <= MAX_OBSERVATION_CHARS + 4


def test_google_failures_are_redacted_search_errors(monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("GOOGLE_API_KEY", SECRET)
    monkeypatch.setenv("GOOGLE_CSE_ID", "cx-test")
    echo = json.dumps({"error": {"code": 403, "message": f"API key {SECRET} has no quota."}})
    for status, body, expected in [("403", echo, "HTTP 403 API key \\*\\*\\* has no quota"),
                                   ("200", "<html>not json</html>", "failed: "), ("200", "[1, 2]", "failed: ")]:
        tool = make_search("google", http=HttpMockSequence([({"status": status}, body)]), **FAST)
        with pytest.raises(SearchError, match=expected) as info:
            tool.search("q")
        _no_secret(str(info.value), caplog.text, records=caplog.records)


def test_every_logger_is_redacted(caplog):
    """Not only our loggers: any library's record, at DEBUG, with the key in its arguments or its traceback."""
    caplog.set_level(logging.DEBUG)
    secrets.register(SECRET)
    try:
        raise ValueError(f"bad key {SECRET}")
    except ValueError:
        logging.getLogger("some.library.deep").debug("GET /search?q=x&api_key=%s", SECRET, exc_info=True)
    logging.getLogger("urllib3").debug("key %s and url ?key=unregistered-123", SECRET)
    assert "bad key ***" in caplog.text and "api_key=***" in caplog.text and "key=unregistered-123" not in caplog.text
    _no_secret(caplog.text, records=caplog.records)


# ----------------------------------------------------------------------------- the agent loop


class Flaky(SearchBackend):
    """Fails the searches whose query is in `failing`."""

    name = "flaky"

    def __init__(self, failing=()):
        super().__init__()
        self.failing, self.calls = set(failing), []

    def search(self, query, *, key=""):
        self.calls.append(query)
        if query in self.failing or "*" in self.failing:
            raise SearchError(f"flaky search for {query!r} failed: HTTP 503", "HTTP 503")
        return f"result for {query}"

    def fingerprint(self):
        return "flaky"


def _searcher(contexts, gen_kwargs):
    """Each question searches its own text once, then finishes with the observation's first word."""
    outputs = []
    for context in contexts:
        tail = context.rsplit("\n\n\n", 1)[1]  # after the few-shot examples: the question, then its turns
        if "Observation: " in tail:
            outputs.append(f"Thought: t\nAction: finish[{tail.rsplit('Observation: ', 1)[1].split()[0]}]")
        else:
            outputs.append(f"Thought: t\nAction: search[{tail.splitlines()[0]}]")
    return outputs


def test_a_failed_search_is_an_observation_and_counted():
    tool = Flaky(failing={"Q2?"})
    episodes = [Episode(key=f"k{i}", question=f"Q{i}?") for i in range(5)]
    run_episodes(episodes, _searcher, AgentOptions(), tool=tool)
    failed = episodes[2]
    assert failed.steps[0].observation == SEARCH_FAILED + "HTTP 503" and failed.answer == "Search"
    assert (failed.tool_calls, failed.tool_errors, failed.summary()["tool_errors"]) == (1, 1, 1)
    assert all(ep.finished and ep.tool_errors == 0 and ep.answer == "result" for i, ep in enumerate(episodes) if i != 2)
    assert (tool.stats["run_tool_calls"], tool.stats["run_tool_errors"]) == (5, 1)


def test_a_failing_tool_stops_the_run_in_one_line_at_the_threshold(caplog):
    tool = Flaky(failing={"*"})
    episodes = [Episode(key=f"k{i}", question=f"Q{i}?") for i in range(10)]
    with pytest.raises(ToolFailureRateExceeded) as info:
        run_episodes(episodes, _searcher, AgentOptions(tool="flaky"), tool=tool)
    assert len(tool.calls) == 4  # MIN_TOOL_CALLS: an early flake never stops a run, a dead tool stops at once
    assert str(info.value) == ("flaky search failed 4 of 4 times in this run, more than max_tool_error_rate=0.5; "
                               "last: flaky search for 'Q3?' failed: HTTP 503")
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_the_rate_is_over_the_whole_run():
    """Counts live on the tool, which a FireActLM keeps for the run: a second batch carries on the first's."""
    tool, options = Flaky(failing={"Q0?", "Q1?", "Q2?"}), AgentOptions(tool="flaky")
    run_episodes([Episode(key=f"k{i}", question=f"Q{i}?") for i in range(3, 6)], _searcher, options, tool=tool)
    run_episodes([Episode(key="k0", question="Q0?")], _searcher, options, tool=tool)  # 1 of 4: goes on
    run_episodes([Episode(key="k1", question="Q1?")], _searcher, options, tool=tool)  # 2 of 5: goes on
    with pytest.raises(ToolFailureRateExceeded, match="3 of 6"):
        run_episodes([Episode(key="k2", question="Q2?")], _searcher, AgentOptions(tool="flaky", max_tool_error_rate=0.4), tool=tool)
    everything_fails = Flaky(failing={"*"})
    episodes = [Episode(key=f"k{i}", question=f"Q{i}?") for i in range(6)]
    run_episodes(episodes, _searcher, AgentOptions(max_tool_error_rate=1.0), tool=everything_fails)  # 1.0: never stops
    assert all(ep.tool_errors == 1 for ep in episodes)
    with pytest.raises(ValueError, match="max_tool_error_rate"):
        AgentOptions(max_tool_error_rate=1.5)


def test_a_cache_miss_in_replay_only_still_stops_the_run(tmp_path):
    cache = SearchCache(Flaky(), tmp_path / "c.sqlite")
    cache.close()
    replayer = SearchCache(Flaky(), tmp_path / "c.sqlite", mode="replay_only")
    with pytest.raises(CacheMiss, match="not in the cache"):
        run_episodes([Episode(key="k", question="Q?")], _searcher, AgentOptions(), tool=replayer)


def test_a_real_backend_flake_does_not_stop_the_run(serp):
    serp.script = [reply(500, {"error": "x"})] * 3  # the first search fails after its retries, the rest answer
    tool = _tool(serp)
    episodes = [Episode(key=f"k{i}", question=f"Q{i}?") for i in range(4)]
    run_episodes(episodes, _searcher, AgentOptions(tool="serpapi"), tool=tool)
    assert [ep.tool_errors for ep in episodes] == [1, 0, 0, 0]
    assert episodes[0].steps[0].observation == SEARCH_FAILED + "HTTP 500" and episodes[1].answer == "Paris"


# ----------------------------------------------------------------------------- inside lm-eval


@pytest.fixture(scope="module")
def questions(tmp_path_factory):
    path = tmp_path_factory.mktemp("q") / "q.jsonl"
    path.write_text("\n".join(json.dumps({"id": f"q{i}", "question": f"Question {i}?", "answer": "Paris"})
                              for i in range(len(FAILURES))))
    return path


def _evaluate(questions, serp, limit, **options):
    tool_args = json.dumps({"base_url": serp.url, "max_retries": 0, "timeout": 0.5})
    gen_kwargs = {"fireact.tool": "serpapi", "fireact.tool_args": tool_args, **{f"fireact.{k}": v for k, v in options.items()}}
    return evaluate(["fireact_jsonl"], model=ScriptedLM(), limit=limit, gen_kwargs=gen_kwargs, metadata={"path": str(questions)})


def test_no_failure_mode_leaks_the_key_into_results_samples_or_logs(questions, serp, caplog):
    caplog.set_level(logging.DEBUG)
    serp.script = [behaviour for behaviour, _ in FAILURES.values()]  # question i's search meets failure i
    out = _evaluate(questions, serp, None, max_tool_error_rate=1.0)
    assert out["results"]["fireact_jsonl"]["tool_errors,episode"] == 1.0
    samples = out["samples"]["fireact_jsonl"]
    assert len(samples) == len(FAILURES) and all(SEARCH_FAILED in s["resps"][0][0] for s in samples)
    assert all(params["api_key"] == SECRET for params in serp.seen)  # the key was sent, and echoed back
    _no_secret(json.dumps(out, default=str), caplog.text, records=caplog.records)


def test_a_dead_service_stops_lm_eval_in_one_line(questions, serp, caplog):
    caplog.set_level(logging.DEBUG)
    serp.default = reply(500, {"error": "down"})
    with pytest.raises(ToolFailureRateExceeded) as info:
        _evaluate(questions, serp, 6)
    assert str(info.value) == ("serpapi search failed 4 of 4 times in this run, more than max_tool_error_rate=0.5; "
                               "last: serpapi search for 'capital of France' failed after 0 retries: HTTP 500")
    assert len(serp.seen) == 4
    _no_secret(str(info.value), caplog.text, records=caplog.records)


# ----------------------------------------------------------------------------- the sqlite cache


def test_a_corrupt_cache_is_named(tmp_path):
    path = tmp_path / "corrupt.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    for mode in SearchCache.MODES:
        with pytest.raises(sqlite3.DatabaseError, match=f"search cache {path} \\(mode {mode}\\): file is not a database"):
            SearchCache(Flaky(), path, mode=mode)
    with pytest.raises(sqlite3.OperationalError, match=f"search cache {tmp_path / 'absent.sqlite'}"):
        SearchCache(Flaky(), tmp_path / "absent.sqlite", mode="replay_only")  # replay_only creates nothing
    assert not (tmp_path / "absent.sqlite").exists()


REPLAY = """
import sys
from fireact_bench.harness.tools.base import SearchBackend
from fireact_bench.harness.tools.cache import SearchCache

class Offline(SearchBackend):
    name = "flaky"
    def fingerprint(self):
        return "flaky"

cache = SearchCache(Offline(), sys.argv[1], mode="replay_only")
print(cache.search("Q?"), cache.fingerprint() != "")
"""


def test_a_read_only_cache_replays(tmp_path):
    """The file and its folder read-only: as root (whom permissions do not stop) through a read-only bind mount."""
    folder = tmp_path / "ro"
    recorder = SearchCache(Flaky(), folder / "c.sqlite")
    recorder.search("Q?")
    recorder.close()
    (folder / "c.sqlite").chmod(0o444)
    folder.chmod(0o555)
    replay = [sys.executable, "-c", REPLAY, str(folder / "c.sqlite")]
    try:
        if os.geteuid() == 0:
            mount = f"mount --bind -o ro {folder} {folder} && exec \"$@\""
            done = subprocess.run(["unshare", "-m", "sh", "-c", mount, "sh", *replay], capture_output=True, text=True)
            if done.stderr.startswith(("unshare:", "mount:")):
                pytest.skip(f"no read-only mount for root here: {done.stderr.strip()}")
        else:
            done = subprocess.run(replay, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "result for Q? True"
        assert sorted(p.name for p in folder.iterdir()) == ["c.sqlite"]  # nothing written beside it
    finally:
        folder.chmod(0o755)
