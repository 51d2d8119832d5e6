"""The HTTP client's behaviour over real sockets: error mapping, retry policy, failover, spreading, auth,
request shapes, reward functions, and the labeler's journal under failures.

The servers here are tiny real FastAPI apps on 127.0.0.1 (uvicorn in a thread) that answer from a script
(429 with Retry-After, 503, 4xx, a connection closed mid-request), because a real critic cannot be made
to produce those on cue. The same client is exercised against the real service in tests/integration.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from clients import AsyncRewardClient, RetryPolicy, RewardClient, ServerPath, async_reward_fn, reward_fn
from clients.errors import ServiceUnreachable, UnexpectedResponse
from clients.journal import iter_records
from clients.labeler import LabelConfig, label
from service.errors import (
    EngineNotReady,
    InvalidRequest,
    InvalidVideo,
    LiftError,
    Overloaded,
    RequestTimeout,
    Unauthorized,
    VideoTooLarge,
)

FAST = RetryPolicy(max_attempts=4, backoff_base_s=0.02, backoff_max_s=0.1)


def score_body(reward: float = 0.5, rid: str = "r") -> dict[str, Any]:
    dim = {"label": "Normal", "score": 0.2, "expected_score": reward,
           "probabilities": {"Good": 0.2, "Normal": 0.6, "Bad": 0.2}, "rationale": "ok"}
    return {"id": rid, "model": "scripted", "reward": reward, "expected_reward": reward, "num_frames": 8,
            "dimensions": {d: dict(dim) for d in ("semantic_consistency", "motion_smoothness", "video_fidelity")},
            "timings_ms": {}}


@dataclass
class Scripted:
    """One replica: answers /v1/score from `script` (then 200), records what it saw."""

    url: str = ""
    script: deque = field(default_factory=deque)  # items: (status, body, headers) or ("sleep", seconds)
    hits: int = 0
    seen: list[dict[str, Any]] = field(default_factory=list)
    delay_s: float = 0.0
    api_key: str | None = None


def _app(state: Scripted) -> FastAPI:
    app = FastAPI()

    async def reply(request: Request) -> Response:
        state.hits += 1
        ctype = request.headers.get("content-type", "")
        seen: dict[str, Any] = {"ctype": ctype.split(";")[0], "auth": request.headers.get("authorization"),
                                "key": request.headers.get("idempotency-key")}
        if ctype.startswith("multipart/"):
            form = await request.form()
            data = await form["video"].read()
            seen.update(prompt=form["prompt"], size=len(data), head=data[:8], options=form.get("options"))
        else:
            seen["json"] = await request.json()
        state.seen.append(seen)
        if state.api_key and seen["auth"] != f"Bearer {state.api_key}":
            return JSONResponse({"error": {"code": "unauthorized", "message": "bad key"}}, status_code=401)
        if state.delay_s:
            await asyncio.sleep(state.delay_s)
        if state.script:
            status, body, headers = state.script.popleft()
            if isinstance(body, (dict, list)):
                return JSONResponse(body, status_code=status, headers=headers)
            return Response(body, status_code=status, headers=headers, media_type="text/html")
        if seen.get("head", b"").startswith(b"BROKEN"):
            return JSONResponse({"error": {"code": "invalid_video", "message": "not a video", "param": "video"}}, status_code=400)
        prompt = seen.get("prompt") or (seen.get("json") or {}).get("prompt", "")
        return JSONResponse(score_body(reward=round(0.05 + (len(prompt) % 10) / 12, 4), rid=f"{state.url}#{state.hits}"))

    @app.post("/v1/score")
    async def score(request: Request) -> Response:
        return await reply(request)

    @app.post("/v1/score/batch")
    async def batch(request: Request) -> Response:
        state.hits += 1
        body = await request.json()
        state.seen.append({"ctype": "application/json", "json": body})
        results = []
        for i, it in enumerate(body["items"]):
            if it["prompt"] == "bad":
                results.append({"error": {"code": "invalid_video", "message": f"item {i} broken", "param": "video"}})
            else:
                results.append(score_body(reward=0.1 * (i % 9), rid=f"b{i}"))
        return JSONResponse({"results": results})

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> Response:
        return JSONResponse({"ready": True})

    return app


class _Server:
    def __init__(self, app: Any) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.server.started, "scripted server did not start"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@pytest.fixture()
def replicas() -> Iterator[list[Scripted]]:
    """Two scripted replicas on real sockets."""
    states, servers = [], []
    for _ in range(2):
        st = Scripted()
        srv = _Server(_app(st))
        st.url = f"http://127.0.0.1:{srv.port}"
        states.append(st)
        servers.append(srv)
    yield states
    for srv in servers:
        srv.stop()


@pytest.fixture()
def dead_url() -> str:
    """A port nothing listens on (connection refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


@pytest.fixture()
def hangup_url() -> Iterator[str]:
    """A server that accepts and closes the connection without answering (a replica killed mid-request)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    stop = threading.Event()

    def loop() -> None:
        s.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = s.accept()
            except OSError:
                continue
            conn.recv(65536)
            conn.close()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{s.getsockname()[1]}"
    stop.set()
    t.join(timeout=5)
    s.close()


@pytest.fixture()
def video(tmp_path: Path) -> Path:
    p = tmp_path / "clip.mp4"
    p.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"x" * 1000)
    return p


# ---- error mapping --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "body", "exc_type", "code"),
    [
        (400, {"error": {"code": "invalid_video", "message": "cannot decode", "param": "video"}}, InvalidVideo, "invalid_video"),
        (413, {"error": {"code": "video_too_large", "message": "9 GB"}}, VideoTooLarge, "video_too_large"),
        (422, {"error": {"code": "invalid_request", "message": "prompt too long", "param": "prompt"}}, InvalidRequest, "invalid_request"),
        (401, {"error": {"code": "unauthorized", "message": "no key"}}, Unauthorized, "unauthorized"),
        (504, {"error": {"code": "timeout", "message": "too slow"}}, RequestTimeout, "timeout"),
        (422, {"error": {"code": "validation_error", "message": "field x"}}, InvalidRequest, "validation_error"),
        (418, {"error": {"code": "teapot_mode", "message": "new server code"}}, InvalidRequest, "teapot_mode"),
        (500, {"error": {"code": "internal_error", "message": "bug"}}, LiftError, "internal_error"),
        (599, {"error": {"code": "odd", "message": "?"}}, UnexpectedResponse, "odd"),
        (502, b"<html>Bad Gateway</html>", UnexpectedResponse, "unexpected_response"),
        (401, b"nope", Unauthorized, "unauthorized"),
    ],
)
def test_error_bodies_become_typed_errors_without_retry(
    replicas: list[Scripted], video: Path, status: int, body: Any, exc_type: type, code: str
) -> None:
    a = replicas[0]
    a.script.append((status, body, None))
    with RewardClient(a.url, retry=FAST) as c, pytest.raises(exc_type) as info:
        c.score(video, "a cat")
    err = info.value
    assert isinstance(err, LiftError)
    assert err.code == code
    assert err.status_code == status
    assert err.replica == a.url
    if isinstance(body, dict):
        assert err.message.endswith(body["error"]["message"])
        assert err.param == body["error"].get("param")
    assert a.hits == 1  # 4xx/5xx other than 429/503: asking again cannot help


# ---- retries ----------------------------------------------------------------------------------------
def test_429_retry_after_is_honoured_then_succeeds(replicas: list[Scripted], video: Path) -> None:
    a = replicas[0]
    busy = {"error": {"code": "overloaded", "message": "queue full"}}
    a.script.extend([(429, busy, {"Retry-After": "0.3"}), (429, busy, {"Retry-After": "0.3"})])
    with RewardClient(a.url, retry=FAST) as c:
        t0 = time.monotonic()
        resp = c.score(video, "a cat")
        took = time.monotonic() - t0
    assert resp.reward > 0
    assert a.hits == 3
    assert took >= 0.6, f"Retry-After 0.3 s twice was not honoured ({took:.2f}s)"
    # one Idempotency-Key for the call, the same on each retry (the server answers a repeat from its first result)
    keys = [s["key"] for s in a.seen]
    assert len(set(keys)) == 1 and keys[0] and len(keys[0]) == 32
    with RewardClient(a.url, retry=FAST) as c:
        c.score(video, "a cat")
    assert a.seen[-1]["key"] != keys[0]  # a new call, a new key


def test_503_gives_up_after_max_attempts_with_typed_error(replicas: list[Scripted], video: Path) -> None:
    a = replicas[0]
    for _ in range(10):
        a.script.append((503, {"error": {"code": "engine_not_ready", "message": "loading"}}, {"Retry-After": "0"}))
    with RewardClient(a.url, retry=FAST) as c, pytest.raises(EngineNotReady):
        c.score(video, "a cat")
    assert a.hits == FAST.max_attempts


def test_overloaded_carries_retry_after(replicas: list[Scripted], video: Path) -> None:
    a = replicas[0]
    for _ in range(2):
        a.script.append((429, {"error": {"code": "overloaded", "message": "full"}}, {"Retry-After": "0.05"}))
    with RewardClient(a.url, retry=RetryPolicy(max_attempts=2, backoff_base_s=0.01)) as c, pytest.raises(Overloaded) as info:
        c.score(video, "a cat")
    assert info.value.retry_after_s == pytest.approx(0.05)


def test_busy_replica_is_skipped_for_its_retry_after(replicas: list[Scripted], video: Path) -> None:
    a, b = replicas
    a.script.append((429, {"error": {"code": "overloaded", "message": "full"}}, {"Retry-After": "30"}))
    with RewardClient([a.url, b.url], retry=FAST, strategy="round_robin") as c:
        t0 = time.monotonic()
        for _ in range(4):
            c.score(video, "a cat")
        took = time.monotonic() - t0
    assert took < 5, "the client waited for Retry-After instead of using the other replica"
    assert a.hits == 1 and b.hits == 4


def test_connection_refused_fails_over_and_dead_replica_cools_down(replicas: list[Scripted], dead_url: str, video: Path) -> None:
    b = replicas[1]
    with RewardClient([dead_url, b.url], retry=FAST, strategy="round_robin") as c:
        for _ in range(6):
            assert c.score(video, "a dog").reward > 0
        dead = next(r for r in c.replicas if r.url == dead_url)
    assert b.hits == 6
    assert dead.sent <= 2, "a refused replica should be skipped while it cools down"


def test_hangup_mid_request_is_retried_elsewhere(replicas: list[Scripted], hangup_url: str, video: Path) -> None:
    b = replicas[1]
    with RewardClient([hangup_url, b.url], retry=FAST, strategy="round_robin") as c:
        for _ in range(3):
            assert c.score(video, "x").num_frames == 8
    assert b.hits == 3


def test_all_replicas_dead_raises_service_unreachable_quickly(dead_url: str, video: Path) -> None:
    with RewardClient([dead_url], retry=FAST) as c, pytest.raises(ServiceUnreachable, match="attempt"):
        t0 = time.monotonic()
        c.score(video, "x")
    assert time.monotonic() - t0 < 5


def test_read_timeout_is_not_retried(replicas: list[Scripted], video: Path) -> None:
    a = replicas[0]
    a.delay_s = 1.0
    with RewardClient(a.url, retry=FAST, timeout=0.2) as c, pytest.raises(RequestTimeout):
        c.score(video, "x")
    time.sleep(1.0)  # let the server finish the one request before counting
    assert a.hits == 1


def test_backoff_has_full_jitter_and_a_ceiling() -> None:
    p = RetryPolicy(backoff_base_s=0.1, backoff_max_s=1.0)
    samples = [p.backoff(5) for _ in range(500)]
    assert max(samples) <= 1.0 and min(samples) >= 0.0
    assert len({round(s, 3) for s in samples}) > 100  # jittered, not one fixed delay
    assert max(p.backoff(1) for _ in range(200)) <= 0.1
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


# ---- spreading, auth, request shapes --------------------------------------------------------------
def test_round_robin_spreads_evenly(replicas: list[Scripted], video: Path) -> None:
    a, b = replicas
    with RewardClient([a.url, b.url], strategy="round_robin") as c:
        for _ in range(10):
            c.score(video, "x")
    assert (a.hits, b.hits) == (5, 5)


async def test_least_loaded_sends_more_to_the_faster_replica(replicas: list[Scripted], video: Path) -> None:
    a, b = replicas
    a.delay_s = 0.3
    async with AsyncRewardClient([a.url, b.url], strategy="least_loaded") as c:
        gate = asyncio.Semaphore(4)

        async def one() -> None:
            async with gate:
                await c.score(video, "x")

        await asyncio.gather(*(one() for _ in range(24)))
    assert a.hits + b.hits == 24
    assert b.hits > 2 * a.hits, (a.hits, b.hits)


def test_api_key_is_sent_as_bearer(replicas: list[Scripted], video: Path) -> None:
    a = replicas[0]
    a.api_key = "s3cret"
    with RewardClient(a.url, api_key="s3cret") as c:
        c.score(video, "x")
    with RewardClient(a.url, api_key="wrong") as c, pytest.raises(Unauthorized):
        c.score(video, "x")
    assert a.seen[0]["auth"] == "Bearer s3cret"


def test_request_shapes_per_video_kind(replicas: list[Scripted], video: Path) -> None:
    a = replicas[0]
    with RewardClient(a.url) as c:
        c.score(video, "path upload")
        c.score(str(video), "str path upload")
        c.score(video.read_bytes(), "bytes upload")
        c.score("https://example.org/v.mp4", "url")
        c.score(ServerPath("clips/v.mp4"), "server path")
        c.score(video, "with options", options={"num_frames": 4, "seed": 1})
        c.score("https://example.org/v.mp4", "url with options", options={"temperature": 0.5})
    s = a.seen
    assert [x["ctype"] for x in s[:3]] == ["multipart/form-data"] * 3
    assert s[0]["size"] == video.stat().st_size and s[0]["prompt"] == "path upload" and s[0]["options"] is None
    assert s[3]["json"]["video"] == {"url": "https://example.org/v.mp4"}
    assert s[4]["json"]["video"] == {"path": "clips/v.mp4"}
    assert s[5]["ctype"] == "multipart/form-data"
    assert json.loads(s[5]["options"]) == {"num_frames": 4, "seed": 1, "return_frames": False, "rationale": True}
    assert s[6]["json"]["options"] == {"temperature": 0.5, "return_frames": False, "rationale": True}


def test_bad_arguments_fail_before_any_request(replicas: list[Scripted], tmp_path: Path) -> None:
    a = replicas[0]
    with RewardClient(a.url) as c:
        with pytest.raises(InvalidRequest):
            c.score(tmp_path / "x.mp4", "  ")
        with pytest.raises(LiftError, match="not found"):
            c.score(tmp_path / "missing.mp4", "x")
        with pytest.raises(InvalidRequest, match="options"):
            c.score(b"abc", "x", options={"num_frames": 0})
        with pytest.raises(InvalidRequest, match="unsupported video type"):
            c.score(12345, "x")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest):
        RewardClient("ftp://x")
    assert a.hits == 0


def test_score_batch_keeps_order_and_item_errors(replicas: list[Scripted], video: Path) -> None:
    a, b = replicas
    prompts = [f"p{i}" for i in range(40)]
    prompts[7] = "bad"
    with RewardClient([a.url, b.url]) as c:
        out = c.score_batch([video] * 40, prompts, batch_size=8, return_exceptions=True)
        assert len(out) == 40
        assert isinstance(out[7], InvalidVideo) and "item 7 broken" in out[7].message
        assert [r.id for r in out[:3]] == ["b0", "b1", "b2"]
        assert out[8].id == "b0"  # second chunk starts again at its own index 0
        with pytest.raises(InvalidVideo):
            c.score_batch([video] * 40, prompts, batch_size=8)
    assert a.hits > 0 and b.hits > 0  # chunks went to both replicas


def test_health_and_ready(replicas: list[Scripted], dead_url: str) -> None:
    with RewardClient([dead_url, replicas[0].url]) as c:
        assert c.health() == {"status": "ok"}
        assert c.ready() is True
        assert c.replicas_ready() == {dead_url: False, replicas[0].url: True}
    with RewardClient([dead_url]) as c:
        assert c.ready() is False
        with pytest.raises(ServiceUnreachable):
            c.health()


# ---- reward functions ------------------------------------------------------------------------------
def test_reward_fn_sync_fields_weights_and_failures(replicas: list[Scripted], video: Path, tmp_path: Path) -> None:
    a, b = replicas
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"BROKEN..")
    videos, prompts = [video, video, video.read_bytes()], ["a", "bb", "ccc"]
    with reward_fn([a.url, b.url]) as fn:
        r = fn(videos, prompts)
        assert r == [pytest.approx(0.05 + n / 12, abs=1e-4) for n in (1, 2, 3)]
        assert fn.__name__ == "lift_reward"
        with pytest.raises(InvalidVideo):
            fn([video, broken], ["a", "b"])
    with reward_fn([a.url, b.url], reward={"motion_smoothness": 2.0}, allow_failures=True) as fn:
        r = fn([video, broken], ["a", "b"])
        assert r[0] == pytest.approx(0.4) and r[1] is None
        assert isinstance(fn.last_errors[1], InvalidVideo)
    with pytest.raises(InvalidRequest):
        reward_fn(a.url, reward={"nonsense": 1.0})
    assert a.hits + b.hits >= 5 and min(a.hits, b.hits) > 0


def test_async_reward_fn_survives_one_event_loop_per_step(replicas: list[Scripted], video: Path) -> None:
    fn = async_reward_fn(replicas[0].url)
    for _ in range(2):  # a training loop that calls asyncio.run() each step
        assert asyncio.run(fn([video], ["a"])) == [pytest.approx(0.05 + 1 / 12, abs=1e-4)]


async def test_async_reward_fn_with_trl_keywords(replicas: list[Scripted], video: Path) -> None:
    fn = async_reward_fn([r.url for r in replicas], reward="expected_reward", concurrency=4)
    try:
        r = await fn(prompts=["a", "bb"], completions=[video, video], completion_ids=None)
        assert r == [pytest.approx(0.05 + 1 / 12, abs=1e-4), pytest.approx(0.05 + 2 / 12, abs=1e-4)]
    finally:
        await fn.aclose()


# ---- labeler over a real socket --------------------------------------------------------------------
def _manifest(tmp_path: Path, n: int, broken: int = 0, missing: int = 0) -> Path:
    vids = tmp_path / "videos"
    vids.mkdir(exist_ok=True)
    lines = []
    for i in range(n):
        p = vids / f"v{i}.mp4"
        p.write_bytes((b"BROKEN" if i < broken else b"MP4") + bytes([i % 256]) * 64)
        lines.append({"video": f"videos/v{i}.mp4", "prompt": f"prompt number {i}"})
    for j in range(missing):
        lines.append({"id": f"missing-{j}", "video": f"videos/none{j}.mp4", "prompt": "gone"})
    m = tmp_path / "manifest.jsonl"
    m.write_text("\n".join(json.dumps(x) for x in lines) + "\n{not json\n" + json.dumps({"video": "x.mp4"}) + "\n")
    return m


async def test_label_records_errors_resumes_and_retries(replicas: list[Scripted], tmp_path: Path) -> None:
    a, b = replicas
    m = _manifest(tmp_path, 30, broken=2, missing=1)
    out = tmp_path / "labels.jsonl"
    cfg = LabelConfig(manifest=m, out=out, servers=[a.url, b.url], concurrency=6, progress=False,
                      export_lift=tmp_path / "lift.json", plot=tmp_path / "plot.png")
    res = await label(cfg)
    recs = list(iter_records(out))
    ids = [r["id"] for r in recs]
    assert len(ids) == len(set(ids)) == 33  # 30 videos + 1 missing + 2 malformed lines
    by = Counter(r["status"] for r in recs)
    assert by == {"ok": 28, "error": 5}
    codes = Counter(r["error"]["code"] for r in recs if r["status"] == "error")
    assert codes == {"invalid_video": 2, "video_not_found": 1, "invalid_request": 2}
    assert res.exit_code == 1 and res.summary.ok == 28 and res.summary.errors == 5
    assert a.hits > 0 and b.hits > 0
    lift = json.loads((tmp_path / "lift.json").read_text())
    assert len(lift) == 28 and set(lift[0]) == {"video", "caption", "score"}
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"

    # A second run does nothing new; the file is unchanged.
    hits = a.hits + b.hits
    before = out.read_bytes()
    res2 = await label(cfg)
    assert out.read_bytes() == before and a.hits + b.hits == hits and res2.summary.skipped_done == 33

    # Fix the broken videos, then --retry-errors: each id still has exactly one line.
    for i in range(2):
        (tmp_path / "videos" / f"v{i}.mp4").write_bytes(b"MP4 fixed")
    cfg.retry_errors = True
    res3 = await label(cfg)
    recs = list(iter_records(out))
    assert len(recs) == len({r["id"] for r in recs}) == 33
    assert Counter(r["status"] for r in recs) == {"ok": 30, "error": 3}
    assert res3.summary.new_this_run == 5


async def test_label_torn_last_line_is_cut_and_redone(replicas: list[Scripted], tmp_path: Path) -> None:
    m = _manifest(tmp_path, 10)
    out = tmp_path / "labels.jsonl"
    cfg = LabelConfig(manifest=m, out=out, servers=[replicas[0].url], concurrency=2, progress=False)
    await label(cfg)
    full = out.read_bytes()
    lines = full.splitlines(keepends=True)
    torn_id = json.loads(lines[-1])["id"]
    out.write_bytes(b"".join(lines[:-1]) + lines[-1][:25])  # a run killed mid-write
    res = await label(cfg)
    assert res.repaired_bytes == 25
    recs = list(iter_records(out))
    assert len(recs) == len({r["id"] for r in recs}) == 12
    assert recs[-1]["id"] == torn_id and recs[-1]["status"] == "ok"


async def test_label_stops_when_no_replica_answers(dead_url: str, tmp_path: Path) -> None:
    m = _manifest(tmp_path, 5)
    out = tmp_path / "labels.jsonl"
    cfg = LabelConfig(manifest=m, out=out, servers=[dead_url], concurrency=2, progress=False, retry=FAST)
    res = await label(cfg)
    assert res.aborted and "no scoring service answered" in res.aborted
    assert res.exit_code == 3
    # Only the malformed manifest lines (no service needed) were recorded; no video became an error.
    assert {r["error"]["code"] for r in iter_records(out)} == {"invalid_request"}


async def test_label_parquet_resumes_from_its_journal(replicas: list[Scripted], tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    m = _manifest(tmp_path, 12)
    out = tmp_path / "labels.parquet"
    cfg = LabelConfig(manifest=m, out=out, servers=[replicas[0].url], concurrency=3, progress=False, format="parquet")
    await label(cfg)
    t = pq.read_table(out)
    assert t.num_rows == 14 and "motion_smoothness.expected_score" in t.column_names
    hits = replicas[0].hits
    await label(cfg)
    assert replicas[0].hits == hits and pq.read_table(out).num_rows == 14
    assert (tmp_path / "labels.parquet.journal.jsonl").exists()
