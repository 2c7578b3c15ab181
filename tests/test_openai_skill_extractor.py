"""The OpenAI-compatible skill extractor against a real loopback HTTP server, through the real client."""

import time
from pathlib import Path

import pytest

from opid_trl import StepRecord, Trajectory
from opid_trl.algorithms.routing import route_skills
from opid_trl.skills.audit import AnalysisAuditLog
from opid_trl.skills.extractors import AnalysisCache, OpenAISkillExtractor

from .openai_server import ScriptedOpenAIServer

KEY = "sk-test-SECRET-0123456789"


def trajectory(behaviour: str, success: bool = True) -> Trajectory:
    steps = [StepRecord(index=i, observation=f"room {i}", response="<action>go east</action>", action="go east",
                        reward=10.0 if success and i == 1 else 0.0) for i in range(2)]
    t = Trajectory(f"id-{behaviour}", 0, f"{behaviour} the key.", steps, 10.0 if success else 0.0, success)
    t.fill_discounted_returns(0.95)
    return t


def extractor(server, **kwargs):
    defaults = dict(base_url=server.base_url, model="scripted-model", api_key=KEY, timeout=5.0, max_retries=2,
                    max_concurrency=4, cache=AnalysisCache())
    defaults.update(kwargs)
    return OpenAISkillExtractor(**defaults)


def test_answers_of_every_kind(tmp_path):
    behaviours = ["valid", "fenced", "broken", "garbage", "empty", "ratelimit", "error"]
    with ScriptedOpenAIServer(KEY) as server:
        a = extractor(server)
        start = time.perf_counter()
        results = dict(zip(behaviours, a([trajectory(b) for b in behaviours])))
        elapsed = time.perf_counter() - start
        metrics = a.pop_metrics()
    for ok in ("valid", "fenced", "broken", "ratelimit"):
        assert not results[ok].failed, ok
        assert results[ok].episode_skill == "Walk east, then take the item."
        assert results[ok].step_skills == {0: "Go east first."}
    for bad in ("garbage", "empty", "error"):
        assert results[bad].failed and results[bad].error
    # broken JSON: re-asked once with the parse error, then parsed
    assert server.count("broken") == 2 and results["broken"].meta["reasked"]
    reask = [r for r in server.requests if r["behaviour"] == "broken"][1]["body"]["messages"]
    assert "could not be parsed" in reask[-1]["content"] and reask[-2]["role"] == "assistant"
    # garbage and empty answers: one re-ask each, then give up (no signal)
    assert server.count("garbage") == 2 and server.count("empty") == 2
    assert "parse" in results["empty"].error
    # 429 honours Retry-After (0.3 s) and then succeeds
    assert server.count("ratelimit") == 2 and results["ratelimit"].meta["retries"] == 1 and elapsed >= 0.3
    # 500s: max_retries=2 retries (by the OpenAI client), then a clean failure
    assert server.count("error") == 3 and "HTTP 500 after 2 retries" in results["error"].error
    assert metrics["failures"] == 3 and metrics["reasks"] == 3 and metrics["retries"] == 3
    assert metrics["prompt_tokens"] > 0 and metrics["latency_s"] > 0
    # structured output was requested
    assert "response_format" in server.requests[0]["body"]


def test_timeouts_are_retried_then_fail(tmp_path):
    with ScriptedOpenAIServer(KEY, slow_seconds=1.5) as server:
        a = extractor(server, timeout=0.4, max_retries=1)
        start = time.perf_counter()
        result = a([trajectory("slow")])[0]
        elapsed = time.perf_counter() - start
    assert result.failed and "after 1 retries" in result.error
    assert server.count("slow") == 2 and elapsed < 3.0


def test_structured_output_fallback(tmp_path):
    with ScriptedOpenAIServer(KEY, reject_schema=True) as server:
        a = extractor(server)
        first = a([trajectory("valid")])[0]
        second = a([trajectory("fenced")])[0]
    assert not first.failed and not second.failed
    bodies = [r["body"] for r in server.requests]
    assert "response_format" in bodies[0] and all("response_format" not in b for b in bodies[1:])
    assert len(bodies) == 3  # rejected once, then plain prompting for good


def test_a_400_about_one_request_downgrades_nothing(caplog):
    """An over-long trajectory's 400 fails that trajectory only: the next requests keep structured
    output and max_completion_tokens (a reasoning model refuses max_tokens)."""
    with ScriptedOpenAIServer(KEY) as server:
        a = extractor(server)
        first = a([trajectory("toolong")])[0]
        second = a([trajectory("valid")])[0]
    assert first.failed and "maximum context length" in first.error and not second.failed
    bodies = [r["body"] for r in server.requests]
    assert len(bodies) == 2 and all("response_format" in b and "max_completion_tokens" in b for b in bodies)
    assert not any("from now on" in r.getMessage() for r in caplog.records)


def test_unsupported_max_completion_tokens_switches_to_max_tokens_once_and_loudly(caplog):
    import logging

    with caplog.at_level(logging.WARNING), ScriptedOpenAIServer(KEY, reject_max_completion_tokens=True) as server:
        a = extractor(server)
        results = a([trajectory("valid")]) + a([trajectory("fenced")])
    assert not any(r.failed for r in results)
    bodies = [r["body"] for r in server.requests]
    # the schema stays (the server never objected to it); the token parameter is switched once
    assert "max_completion_tokens" in bodies[0] and all("max_tokens" in b for b in bodies[1:])
    assert all("response_format" in b for b in bodies) and len(bodies) == 3
    warnings = [r.getMessage() for r in caplog.records if "max_completion_tokens" in r.getMessage()]
    assert len(warnings) == 1


def test_cache_hits_skip_the_server(tmp_path):
    cache_file = tmp_path / "cache.jsonl"
    with ScriptedOpenAIServer(KEY) as server:
        a = extractor(server, cache=AnalysisCache(cache_file))
        batch = [trajectory("valid"), trajectory("garbage", success=False)]
        a(batch)
        calls = len(server.requests)
        again = a(batch)
        metrics = a.pop_metrics()
        # a fresh extractor (a resumed run) reloads the persisted cache
        reloaded = extractor(server, cache=AnalysisCache(cache_file))([trajectory("valid")])[0]
    assert len(server.requests) == calls + 2  # only the failed one is asked again (and re-asked)
    assert again[0].meta["cached"] and not again[0].failed
    assert metrics["cache_hits"] == 1
    assert reloaded.meta["cached"] and reloaded.episode_skill == "Walk east, then take the item."


def test_the_key_never_reaches_a_file_or_repr(tmp_path):
    with ScriptedOpenAIServer(KEY) as server:
        a = extractor(server, cache=AnalysisCache(tmp_path / "analysis" / "cache.jsonl"))
        trajectories = [trajectory(b) for b in ("valid", "broken", "error", "ratelimit")]
        skills = a(trajectories)
        audit = AnalysisAuditLog(tmp_path, rank=0)
        audit.write(3, trajectories, skills, [route_skills(s, 2) for s in skills])
    assert all(r["headers"]["authorization"] == f"Bearer {KEY}" for r in server.requests)  # it was sent
    assert KEY not in repr(a) and KEY not in str(vars(a))
    written = [p for p in Path(tmp_path).rglob("*") if p.is_file()]
    assert len(written) == 2
    for path in written:
        assert KEY not in path.read_text()
    record = audit.path.read_text().splitlines()[1]
    assert '"reasked": true' in record and '"raw_answer"' in record and '"routing": ["step", "episode"]' in record


def test_configuration_errors_name_the_field(monkeypatch):
    monkeypatch.delenv("OPENAI_MODEL", raising=False)
    with pytest.raises(ValueError, match="OpenAISkillExtractor.model"):
        OpenAISkillExtractor(base_url="http://127.0.0.1:1/v1")
    with pytest.raises(ValueError, match="OpenAISkillExtractor.structured_output"):
        OpenAISkillExtractor(model="m", structured_output="sometimes")
    with pytest.raises(ValueError, match="OpenAISkillExtractor.timeout"):
        OpenAISkillExtractor(model="m", timeout=0)
    with pytest.raises(ValueError, match="OpenAISkillExtractor.max_retries"):
        OpenAISkillExtractor(model="m", max_retries=-1)


def test_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("OPENAI_MODEL", "env-model")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    a = OpenAISkillExtractor()
    assert a.base_url == "http://127.0.0.1:9/v1" and a.model == "env-model" and KEY not in repr(a)


def test_unreachable_endpoint_is_a_clean_failure():
    a = OpenAISkillExtractor(base_url="http://127.0.0.1:9/v1", model="m", api_key=KEY, max_retries=1, timeout=1.0,
                             cache=False)
    result = a([trajectory("valid")])[0]
    assert result.failed and "APIConnectionError after 1 retries" in result.error and KEY not in result.error
    assert result.meta["retries"] == 1 and a.pop_metrics()["retries"] == 1
