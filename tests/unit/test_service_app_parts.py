"""Settings, the error table, auth and admission: the service's parts that need no engine."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from service import errors as E
from service.app.admission import Admission
from service.app.auth import ApiKeyAuth
from service.app.errors import STATUS, MalformedBody, ValidationFailed, error_response, retry_after_of, status_of
from service.app.serving import parse_json, parse_options, parse_prompt, parse_score_request
from service.app.settings import ServiceSettings


# ---- settings ------------------------------------------------------------------------------------
def test_settings_from_env_and_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LIFT_API_KEYS", "key-one, key-two,")
    monkeypatch.setenv("LIFT_URL_ALLOWLIST", "example.com,cdn.example.org")
    monkeypatch.setenv("LIFT_MAX_INFLIGHT", "3")
    monkeypatch.setenv("LIFT_MEDIA_ROOT", str(tmp_path))
    monkeypatch.setenv("LIFT_ALLOW_PRIVATE_URLS", "true")
    s = ServiceSettings(port=9001)  # a flag wins over the environment
    assert [k.get_secret_value() for k in s.api_keys] == ["key-one", "key-two"]
    assert s.url_allowlist == ["example.com", "cdn.example.org"]
    assert (s.max_inflight, s.port, s.media_root, s.allow_private_urls) == (3, 9001, tmp_path, True)
    shown = str(s.public_view()) + repr(s) + str(s)
    assert "key-one" not in shown and "key-two" not in shown
    assert s.public_view()["api_keys"] == "2 configured"


def test_settings_reject_bad_values(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        ServiceSettings(engine="tensorrt")
    with pytest.raises(ValidationError):
        ServiceSettings(max_inflight=0)
    with pytest.raises(ValidationError):
        ServiceSettings(media_root=tmp_path / "missing")
    s = ServiceSettings(max_video_bytes=3000)
    assert s.max_body_bytes >= 4000  # room for the base64 of a max-size video


# ---- the error table -----------------------------------------------------------------------------
def test_every_error_type_maps_to_its_status() -> None:
    expected = {
        E.InvalidRequest: 400, MalformedBody: 400, ValidationFailed: 422, E.InvalidVideo: 422, E.VideoTooLarge: 413,
        E.UnsupportedMedia: 415, E.ForbiddenMediaSource: 403, E.MediaNotFound: 422, E.MediaFetchError: 422,
        E.Unauthorized: 401, E.EngineNotReady: 503, E.EngineError: 503, E.RequestTimeout: 504, E.ModelLoadError: 503,
        E.AnswerParseError: 503,
    }
    for cls, status in expected.items():
        assert status_of(cls("x")) == status, cls
    assert status_of(E.Overloaded("busy", retry_after_s=2.2)) == 429
    # every LiftError subclass the core defines has an entry (no silent 500 for a typed error)
    # (classes other packages derive, e.g. the client's ServiceUnreachable, never reach the service's table)
    for cls in (c for c in E.LiftError.__subclasses__() if c.__module__ == E.__name__):
        assert any(c in STATUS for c in cls.__mro__ if c is not E.LiftError), cls
    # client errors are 4xx, always
    for cls in (E.InvalidRequest, E.MediaError, E.Unauthorized):
        assert 400 <= status_of(cls("x")) < 500


def test_error_body_shape_and_headers() -> None:
    r = error_response(E.Overloaded("busy", retry_after_s=2.2))
    assert r.status_code == 429 and r.headers["retry-after"] == "3"
    assert r.body == b'{"error":{"code":"overloaded","message":"busy","param":null}}'
    r = error_response(E.Unauthorized("no key"))
    assert r.headers["www-authenticate"] == "Bearer"
    assert retry_after_of(E.EngineNotReady("loading")) is not None
    assert retry_after_of(E.InvalidVideo("x")) is None


# ---- request parsing -----------------------------------------------------------------------------
def test_parsing_turns_bad_bodies_into_typed_errors() -> None:
    with pytest.raises(MalformedBody, match="UTF-8"):
        parse_json(b'{"prompt": "\xff\xfe"}')
    with pytest.raises(MalformedBody, match="JSON"):
        parse_json(b'{"prompt": ')
    with pytest.raises(MalformedBody):
        parse_json(b"[" * 100_000)  # deep nesting must not crash the parser
    with pytest.raises(ValidationFailed) as info:
        parse_score_request({"prompt": 5, "video": {"path": "a.mp4"}})
    assert info.value.param == "prompt"
    with pytest.raises(ValidationFailed) as info:
        parse_score_request({"prompt": "x" * 1_000_000, "video": {"path": "a.mp4"}})
    assert info.value.param == "prompt"
    with pytest.raises(ValidationFailed):
        parse_score_request({"prompt": "a cat", "video": {"path": "a", "url": "http://x"}})
    with pytest.raises(ValidationFailed):
        parse_score_request(["not", "an", "object"])
    with pytest.raises(ValidationFailed, match="prompt"):
        parse_prompt("")
    assert parse_prompt("a cat") == "a cat"
    assert parse_options('{"num_frames": 4}').num_frames == 4
    with pytest.raises(ValidationFailed):
        parse_options('{"num_frames": "many"}')
    with pytest.raises(ValidationFailed):
        parse_options("[1]")


# ---- auth ----------------------------------------------------------------------------------------
def test_auth_gate() -> None:
    off = ApiKeyAuth([])
    assert not off.applies_to("/v1/score")
    auth = ApiKeyAuth([SecretStr("k1"), SecretStr("k2")])
    assert auth.applies_to("/v1/score") and auth.applies_to("/v1/models")
    assert not auth.applies_to("/health") and not auth.applies_to("/metrics")
    assert ApiKeyAuth([SecretStr("k1")], protect_ops=True).applies_to("/metrics")
    auth.check("Bearer k1")
    auth.check("bearer k2")
    for bad in (None, "", "Bearer", "Bearer k3", "Basic k1", "k1", "Bearer k1x", "Bearer ümlaut"):
        with pytest.raises(E.Unauthorized):
            auth.check(bad)


# ---- admission -----------------------------------------------------------------------------------
async def test_admission_bounds_inflight_and_queue() -> None:
    seen: list[tuple[int, int]] = []
    adm = Admission(max_inflight=2, max_queue=3, on_change=lambda i, q: seen.append((i, q)))
    release = asyncio.Event()
    peak = 0

    async def request() -> str:
        nonlocal peak
        try:
            async with adm.admit():
                async with adm.engine_slot():
                    peak = max(peak, adm.inflight)
                    await release.wait()
            return "ok"
        except E.Overloaded as exc:
            assert exc.retry_after_s >= 1
            return "429"

    tasks = [asyncio.create_task(request()) for _ in range(10)]
    await asyncio.sleep(0.05)
    assert adm.inflight == 2 and adm.queued == 3 and adm.admitted == 5
    release.set()
    results = await asyncio.gather(*tasks)
    assert results.count("ok") == 5 and results.count("429") == 5
    assert peak == 2
    assert (adm.inflight, adm.queued, adm.admitted) == (0, 0, 0)
    assert max(q for _, q in seen) == 3 and seen[-1] == (0, 0)


async def test_admission_releases_slots_on_cancel() -> None:
    adm = Admission(max_inflight=1, max_queue=1)
    started = asyncio.Event()

    async def hold() -> None:
        async with adm.admit(), adm.engine_slot():
            started.set()
            await asyncio.sleep(10)

    t1 = asyncio.create_task(hold())
    await started.wait()
    t2 = asyncio.create_task(hold())
    await asyncio.sleep(0.01)
    assert adm.queued == 1
    t2.cancel()
    t1.cancel()
    await asyncio.gather(t1, t2, return_exceptions=True)
    assert (adm.inflight, adm.queued, adm.admitted) == (0, 0, 0)
    async with adm.admit(), adm.engine_slot():  # the slot is usable again
        assert adm.inflight == 1


# ---- the catch-all: a bug is a logged 500 in the same body shape -----------------------------------
async def test_unexpected_exception_becomes_logged_500(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    # A critic that hits a programming error (no real engine fails on demand like this; this checks
    # the HTTP layer's last line of defence only).
    import httpx

    from service.app import create_app
    from service.protocol import ModelCard

    class BuggyCritic:
        ready = True
        parse_failures = 0

        async def start(self) -> None: ...
        async def stop(self) -> None: ...

        def model_card(self) -> ModelCard:
            raise ValueError("bug in model_card")

        async def score(self, *a: object, **k: object) -> None:
            raise KeyError("bug in score")

    (tmp_path / "v.mp4").write_bytes(b"x")
    app = create_app(ServiceSettings(media_root=tmp_path), BuggyCritic())  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for method, path, kw in (("GET", "/v1/models", {}), ("POST", "/v1/score", {"json": {"prompt": "x", "video": {"path": "v.mp4"}}})):
            with caplog.at_level("INFO"):
                r = await client.request(method, path, **kw)
            assert r.status_code == 500
            assert r.json() == {"error": {"code": "internal_error", "message": "internal server error", "param": None}}
    assert "unhandled error" in caplog.text and "bug in" in caplog.text
    access = [rec.fields for rec in caplog.records if rec.name == "lift.access"]  # type: ignore[attr-defined]
    assert [a["status"] for a in access] == [500, 500] and all(a["error"] == "internal_error" for a in access)
