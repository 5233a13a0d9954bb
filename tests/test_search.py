import http.server
import json
import logging
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
from googleapiclient.http import HttpMock, HttpMockSequence

from fireact_bench.harness import settings as paths
from fireact_bench.harness.tools.base import NO_RESULTS, CacheMiss, SearchError, normalize_query
from fireact_bench.harness.tools.bm25 import BM25Search
from fireact_bench.harness.tools.cache import SearchCache
from fireact_bench.harness.tools.factory import make_search
from fireact_bench.harness.tools.replay import ReplaySearch, recorded_pairs

FIXTURES = Path(__file__).parent / "fixtures" / "search"
FAKE_KEY = "FAKEKEY-s3cr3t-0123456789"
FAST = {"base_delay": 0.001, "max_retries": 2}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FIREACT_CACHE_DIR", str(tmp_path / "cache"))


def test_unknown_backend_names_known_ones():
    with pytest.raises(ValueError, match="bm25, google, replay, serpapi"):
        make_search("bing")


# ----------------------------------------------------------------------------- google


@pytest.fixture
def google_env(monkeypatch):
    monkeypatch.setenv("GOOGLE_API_KEY", FAKE_KEY)
    monkeypatch.setenv("GOOGLE_CSE_ID", "cx-test")


def _fixture(name):
    return (FIXTURES / name).read_text()


def test_google_first_snippet(google_env):
    tool = make_search("google", http=HttpMock(str(FIXTURES / "google_cse.json"), {"status": "200"}))
    assert tool.search("Malcolm Smith Most Valuable Player") == (
        "Smith was named the Most Valuable Player of Super Bowl XLVIII after the Seahawks defeated the Denver Broncos."
    )
    assert FAKE_KEY not in repr(tool) and FAKE_KEY not in tool.fingerprint()


def test_google_no_results(google_env):
    tool = make_search("google", http=HttpMock(str(FIXTURES / "google_cse_empty.json"), {"status": "200"}))
    assert tool.search("zzqx nonexistent phrase") == NO_RESULTS


def test_google_missing_key_names_variable(monkeypatch):
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.setenv("GOOGLE_CSE_ID", "cx-test")
    with pytest.raises(SearchError, match="GOOGLE_API_KEY"):
        make_search("google", http=HttpMock(str(FIXTURES / "google_cse.json"), {"status": "200"})).search("x")


def test_google_retries_429(google_env):
    http = HttpMockSequence([
        ({"status": "429"}, _fixture("google_429.json")),
        ({"status": "429"}, _fixture("google_429.json")),
        ({"status": "200"}, _fixture("google_cse.json")),
    ])
    tool = make_search("google", http=http, **FAST)
    assert tool.search("Malcolm Smith").startswith("Smith was named")
    assert tool.stats["retries"] == 2


def test_google_gives_up_and_redacts_key(google_env, caplog):
    caplog.set_level(logging.DEBUG)
    http = HttpMockSequence([({"status": "429"}, _fixture("google_429.json"))] * 3)
    tool = make_search("google", http=http, **FAST)
    with pytest.raises(SearchError, match="after 2 retries") as info:
        tool.search("Malcolm Smith")
    assert FAKE_KEY not in str(info.value) and FAKE_KEY not in caplog.text
    assert "URL being requested" in caplog.text  # googleapiclient did log the URL, redacted


def test_google_client_error_redacts_key(google_env, caplog):
    caplog.set_level(logging.DEBUG)
    http = HttpMockSequence([({"status": "400"}, _fixture("google_400.json"))])
    with pytest.raises(SearchError) as info:
        make_search("google", http=http, **FAST).search("Malcolm Smith")
    assert "400" in str(info.value)
    assert FAKE_KEY not in str(info.value) and FAKE_KEY not in caplog.text


# ----------------------------------------------------------------------------- serpapi


class _SerpHandler(http.server.BaseHTTPRequestHandler):
    """Answers /search.json from a script of (status, body, delay) per query; records requests."""

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        params = dict(urllib.parse.parse_qsl(url.query))
        self.server.requests.append((url.path, params))
        status, body, delay = self.server.script[params["q"]].pop(0)
        time.sleep(delay)
        payload = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out first
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def serp(monkeypatch):
    monkeypatch.setenv("SERPAPI_API_KEY", FAKE_KEY)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SerpHandler)
    server.script, server.requests = {}, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _serp_tool(server, **options):
    return make_search("serpapi", base_url=f"http://127.0.0.1:{server.server_port}", **{**FAST, **options})


@pytest.mark.parametrize("body, expected", [
    ({"answer_box": {"answer": "1889", "snippet": "s"}, "organic_results": [{"snippet": "o"}]}, "1889"),
    ({"answer_box": {"snippet": "Box snippet.", "snippet_highlighted_words": ["w"]}}, "Box snippet."),
    ({"answer_box": {"snippet_highlighted_words": ["Paris", "France"]}, "organic_results": [{"snippet": "o"}]}, "Paris"),
    ({"organic_results": [{"snippet": "First organic."}, {"snippet": "Second."}]}, "First organic."),
    ({"search_metadata": {"status": "Success"}}, NO_RESULTS),
])
def test_serpapi_fallbacks(serp, body, expected):
    serp.script["q1"] = [(200, body, 0)]
    assert _serp_tool(serp).search("q1") == expected
    path, params = serp.requests[0]
    assert path == "/search.json" and params == {"engine": "google", "q": "q1", "api_key": FAKE_KEY}


def test_serpapi_retries_429(serp):
    serp.script["q"] = [(429, {"error": "rate"}, 0), (200, {"organic_results": [{"snippet": "ok"}]}, 0)]
    tool = _serp_tool(serp)
    assert tool.search("q") == "ok"
    assert tool.stats["retries"] == 1 and len(serp.requests) == 2


def test_serpapi_timeouts_give_up_without_key(serp, caplog):
    caplog.set_level(logging.DEBUG)
    serp.script["slow"] = [(200, {}, 0.5)] * 3
    tool = _serp_tool(serp, timeout=0.1)
    with pytest.raises(SearchError, match="time-out") as info:
        tool.search("slow")
    assert tool.stats["retries"] == 2 and tool.stats["errors"] == 1
    assert FAKE_KEY not in str(info.value) and FAKE_KEY not in caplog.text
    assert info.value.__cause__ is None and info.value.__suppress_context__  # tracebacks do not show the URL


def test_serpapi_connection_error_redacts_key(monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("SERPAPI_API_KEY", FAKE_KEY)
    tool = make_search("serpapi", base_url="http://127.0.0.1:9", **FAST)  # discard port: refused
    with pytest.raises(SearchError) as info:
        tool.search("anything")
    assert FAKE_KEY not in str(info.value) and FAKE_KEY not in caplog.text and FAKE_KEY not in repr(tool)


def test_serpapi_missing_key_names_variable(monkeypatch):
    monkeypatch.delenv("SERPAPI_API_KEY", raising=False)
    with pytest.raises(SearchError, match="SERPAPI_API_KEY"):
        make_search("serpapi").search("x")


# ----------------------------------------------------------------------------- bm25


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    passages = [
        {"id": "1", "title": "Eiffel Tower", "text": "The Eiffel Tower is a wrought-iron lattice tower in Paris, completed in 1889."},
        {"id": "2", "title": "Colosseum", "text": "The Colosseum is an ancient amphitheatre in the centre of Rome."},
        {"text": "Photosynthesis converts light energy into chemical energy in plants. " * 30},
    ]
    path.write_text("\n".join(json.dumps(p) for p in passages) + "\n")
    return path


def test_bm25_top_passage_and_truncation(corpus):
    tool = make_search("bm25", corpus=corpus)
    assert tool.search("When was the Eiffel Tower completed?").startswith("The Eiffel Tower")
    assert "Rome" in tool.search("ancient amphitheatre Rome")
    long = tool.search("photosynthesis light energy")
    assert long.startswith("Photosynthesis") and long.endswith(" ...") and len(long) <= 604
    assert tool.search("zzzz qqqq") == NO_RESULTS


def test_bm25_index_cached_on_disk(corpus):
    first = BM25Search(corpus)
    assert first.stats["index_builds"] == 1
    index_dir = first._index.path
    assert index_dir.parent == paths.cache_dir() / "bm25"
    mtime = index_dir.stat().st_mtime_ns
    second = BM25Search(corpus)
    assert second.stats["index_builds"] == 0 and index_dir.stat().st_mtime_ns == mtime
    assert second.search("Colosseum") == first.search("Colosseum")
    assert first.fingerprint() == second.fingerprint()
    corpus.write_text(corpus.read_text() + json.dumps({"text": "A new passage."}) + "\n")
    assert BM25Search(corpus).stats["index_builds"] == 1  # content changed: new index


def test_bm25_bad_line_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n\n{"title": "no text"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:3"):
        BM25Search(path)
    path.write_text('{"text": "fine"}\n{not json\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        BM25Search(path)


# ----------------------------------------------------------------------------- replay (real FireAct data)


@pytest.fixture(scope="module")
def pairs():
    return recorded_pairs(paths.data_dir())


def test_normalize_query():
    assert normalize_query("  Malcolm SMITH's   Most-Valuable Player?? ") == "malcolm smiths mostvaluable player"


def test_recorded_pairs_cover_all_sources(pairs):
    observations = {o for _, o in pairs}
    assert len(pairs) > 10000
    assert not any(o in ("None", "") or o.startswith("Episode finished") for o in observations)
    # gpt_format (first file, first line), a string-form traj and a message-list traj each contribute.
    assert ("best kick boxer in the world unsportsmanlike conducts crimes of violence",
            pairs[0][1]) == pairs[0] and pairs[0][1].startswith("Badr Hari")
    assert any(q == "central figure used in Singapore Airlines corporate branding year" for q, _ in pairs)


def test_replay_exact_match_ignores_case_and_punctuation():
    tool = ReplaySearch(paths.data_dir())
    assert tool.search("MALCOLM SMITH, most valuable player?") == (
        "Smith was named the Most Valuable Player of Super Bowl XLVIII after the Seahawks defeated the Denver Broncos. "
        "Woodland Hills, California, U.S."
    )
    assert tool.stats["exact"] == 1 and tool.stats["bm25"] == 0


def test_replay_unseen_query_uses_bm25(pairs):
    tool = make_search("replay")
    observation = tool.search("which wrought iron lattice landmark stands in paris france")
    assert observation in tool.recorded_observations() and tool.stats["bm25"] == 1
    assert tool.recorded_observations() == sorted({o for _, o in pairs})


def test_replay_picks_most_frequent_recording(pairs):
    tool = ReplaySearch(paths.data_dir())
    by_query = {}
    for q, o in pairs:
        by_query.setdefault(normalize_query(q), []).append(o)
    query, recs = next((q, r) for q, r in by_query.items() if len(set(r)) > 1)
    expected = min(set(recs), key=lambda o: (-recs.count(o), o))
    assert tool.search(query) == expected


def test_bench_replay_lookup(benchmark):
    tool = ReplaySearch(paths.data_dir())
    result = benchmark(tool.search, "Malcolm Smith most valuable player")
    assert result.startswith("Smith was named")


# ----------------------------------------------------------------------------- cache


def test_cache_record_then_replay_only(corpus, tmp_path):
    db = tmp_path / "searches.sqlite"
    recorder = make_search("bm25", corpus=corpus, cache=db)
    first = recorder.search("Eiffel Tower completed")
    assert recorder.search("eiffel tower, COMPLETED!") == first
    assert recorder.stats["cache_hits"] == 1 and recorder.backend.stats["calls"] == 1
    fingerprint = recorder.fingerprint()
    recorder.close()

    replayer = SearchCache(BM25Search(corpus), db, mode="replay_only")
    assert replayer.search("Eiffel tower completed") == first
    assert replayer.stats["cache_hits"] == 1 and replayer.backend.stats["calls"] == 0
    assert replayer.fingerprint() != fingerprint  # mode differs
    with pytest.raises(CacheMiss, match="Colosseum"):
        replayer.search("Colosseum")


def test_cache_fingerprint_tracks_content(corpus, tmp_path):
    cache = SearchCache(BM25Search(corpus), tmp_path / "c.sqlite")
    before = cache.fingerprint()
    cache.search("Colosseum")
    assert cache.fingerprint() != before


def test_cache_two_connections_share_writes(corpus, tmp_path):
    db = tmp_path / "shared.sqlite"
    a = SearchCache(BM25Search(corpus), db)
    b = SearchCache(BM25Search(corpus), db, mode="replay_only")
    a.search("Colosseum")
    assert b.search("colosseum") == a.search("Colosseum")


def test_cache_bad_mode(corpus, tmp_path):
    with pytest.raises(ValueError, match="replay_only"):
        SearchCache(BM25Search(corpus), tmp_path / "c.sqlite", mode="write")
