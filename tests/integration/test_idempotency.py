"""Safe retries over real sockets on the real vLLM CPU engine (tiny critic): a repeat (same key, same content) is
scored once and answered with the first answer, on our routes and on each adapter (Flow-Factory, Cosmos-RL, UniRL);
the same key with other content is a 409; a failure worth retrying is not remembered; two replicas on one real
redis-server share answers.

Engine work is counted with the app's own `lift_reward_count` (observed once per video the engine scored), read from
its /metrics before and after.
"""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest


pytestmark = pytest.mark.vllm
SLOW_OPTIONS = {"max_reason_tokens": 48}  # reasons make one scoring last long enough to send repeats into it


# ---- helpers ------------------------------------------------------------------------------------------------
def metric(url: str, name: str, labels: dict[str, str] | None = None) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = 0.0
    for m in re.finditer(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", text, re.M):
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(got.get(k) == v for k, v in (labels or {}).items()):
            total += float(m.group(2))
    return total


def scored(url: str) -> float:
    return metric(url, "lift_reward_count")


def b64_file(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def png_b64(frame: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def wait_until_scoring(url: str, timeout_s: float = 30.0) -> None:
    """Until the app has a scoring call in the engine (its lift_inflight_requests gauge)."""
    deadline = time.monotonic() + timeout_s
    while metric(url, "lift_inflight_requests") < 1:
        assert time.monotonic() < deadline, "the first request never reached the engine"
        time.sleep(0.005)


def in_flight(first: Callable[[], httpx.Response], repeat: Callable[[], httpx.Response], url: str,
              n: int = 3) -> tuple[httpx.Response, list[httpx.Response]]:
    """Send `first`, wait until it is in the engine at `url`, then send `n` repeats at once from threads."""
    out: dict[str, Any] = {}
    t = threading.Thread(target=lambda: out.__setitem__("first", first()))
    t.start()
    wait_until_scoring(url)
    repeats: list[Any] = [None] * n

    def send(i: int) -> None:
        repeats[i] = repeat()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    for th in [t, *threads]:
        th.join(timeout=180)
    return out["first"], repeats


def same_answers(first: httpx.Response, repeats: list[httpx.Response]) -> None:
    assert first.status_code == 200, first.text
    assert first.headers.get("Idempotent-Replayed") is None
    for r in repeats:
        assert r.status_code == 200, r.text
        assert r.content == first.content  # byte for byte: the first answer, its id and timings included
        assert r.headers.get("Idempotent-Replayed") == "true"


@pytest.fixture(scope="module")
def app(serve_app: Callable[..., AbstractContextManager[str]]) -> Iterator[str]:
    # adapters with reasons: one call lasts long enough to send repeats into it (reward-only takes a few ms here)
    with serve_app(adapters=["flow-factory", "cosmos-rl", "unirl"], adapter_rationale=True) as url:
        yield url


@pytest.fixture(scope="module")
def videos(sample_videos: dict[str, Path]) -> dict[str, str]:
    return {"a": b64_file(sample_videos["h264_mp4"]), "b": b64_file(sample_videos["real_bikes"])}


@pytest.fixture(scope="module")
def frames(sample_videos: dict[str, Path]) -> dict[str, np.ndarray]:
    from service.media import decode_video

    return {n: np.ascontiguousarray(decode_video(sample_videos[n], 8).frames[:, :64, :96])
            for n in ("real_bikes", "real_carphone")}


# ---- our routes -------------------------------------------------------------------------------------------------
def score(url: str, body: dict[str, Any], key: str | None) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return httpx.post(f"{url}/v1/score", json=body, headers=headers, timeout=120)


def test_score_repeats_are_scored_once(app: str, videos: dict[str, str]) -> None:
    body = {"prompt": "a red square gliding", "video": {"base64": videos["a"]}, "options": SLOW_OPTIONS}
    key = f"t-{uuid.uuid4()}"
    before = scored(app)
    first = score(app, body, key)
    back_to_back = [score(app, body, key) for _ in range(3)]
    assert scored(app) - before == 1
    same_answers(first, back_to_back)

    key = f"t-{uuid.uuid4()}"
    before, waited = scored(app), metric(app, "lift_idempotent_replays_total", {"route": "/v1/score", "waited": "true"})
    first, repeats = in_flight(lambda: score(app, body, key), lambda: score(app, body, key), app)
    assert scored(app) - before == 1
    same_answers(first, repeats)
    assert metric(app, "lift_idempotent_replays_total", {"route": "/v1/score", "waited": "true"}) - waited == 3

    # without a key nothing is remembered: each request is scored
    before = scored(app)
    assert score(app, body, None).status_code == 200 and score(app, body, None).status_code == 200
    assert scored(app) - before == 2


def test_multipart_repeat_is_scored_once(app: str, frames: dict[str, np.ndarray]) -> None:
    key = f"t-{uuid.uuid4()}"

    def post(video: np.ndarray) -> httpx.Response:
        return httpx.post(f"{app}/v1/score", files={"video": ("f.npy", npy_bytes(video), "application/x-npy")},
                          data={"prompt": "people riding bikes", "fps": "8"}, headers={"Idempotency-Key": key},
                          timeout=120)

    before = scored(app)
    first, again = post(frames["real_bikes"]), post(frames["real_bikes"])
    assert scored(app) - before == 1
    same_answers(first, [again])
    other = post(frames["real_carphone"])
    assert other.status_code == 409 and scored(app) - before == 1, other.text


def test_same_key_with_another_video_is_409_naming_the_key(app: str, videos: dict[str, str]) -> None:
    key = f"reused-{uuid.uuid4()}"
    body = {"prompt": "a red square gliding", "video": {"base64": videos["a"]}}
    assert score(app, body, key).status_code == 200
    before = scored(app)
    r = score(app, {**body, "video": {"base64": videos["b"]}}, key)
    assert r.status_code == 409, r.text
    err = r.json()["error"]
    assert err["code"] == "idempotency_key_reused" and key in err["message"] and err["param"] == "Idempotency-Key"
    assert set(r.json()) == {"error"} and "reward" not in r.text  # never the other request's score
    r = score(app, {**body, "options": {"num_frames": 4}}, key)  # other options are other content too
    assert r.status_code == 409
    assert scored(app) == before
    assert metric(app, "lift_idempotency_conflicts_total", {"route": "/v1/score"}) >= 2
    bad = score(app, body, "bad key with spaces")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "Idempotency-Key"


def test_bad_input_is_answered_again_from_memory(app: str) -> None:
    key = f"t-{uuid.uuid4()}"
    body = {"prompt": "x", "video": {"base64": base64.b64encode(b"not a video at all" * 100).decode()}}
    first = score(app, body, key)
    assert first.status_code == 422 and first.json()["error"]["code"] == "invalid_video", first.text
    again = score(app, body, key)
    assert again.status_code == 422 and again.content == first.content
    assert again.headers.get("Idempotent-Replayed") == "true"


def test_batch_repeats_are_scored_once(app: str, videos: dict[str, str]) -> None:
    def batch(items: list[dict[str, Any]], key: str) -> httpx.Response:
        return httpx.post(f"{app}/v1/score/batch", json={"items": items}, headers={"Idempotency-Key": key},
                          timeout=120)

    items = [{"prompt": "a red square gliding", "video": {"base64": videos["a"]}, "options": SLOW_OPTIONS},
             {"prompt": "broken", "video": {"base64": base64.b64encode(b"junk" * 50).decode()}}]
    key = f"t-{uuid.uuid4()}"
    before = scored(app)
    first = batch(items, key)
    back_to_back = [batch(items, key) for _ in range(3)]
    assert scored(app) - before == 1
    assert first.status_code == 200 and first.json()["results"][1]["error"]["code"] == "invalid_video", first.text
    assert all(r.status_code == 200 and r.json() == first.json() for r in back_to_back)

    key = f"t-{uuid.uuid4()}"
    before = scored(app)
    first, repeats = in_flight(lambda: batch(items, key), lambda: batch(items, key), app)
    assert scored(app) - before == 1
    assert first.status_code == 200 and all(r.status_code == 200 and r.json() == first.json() for r in repeats)

    other = batch([{**items[0], "video": {"base64": videos["b"]}}, items[1]], key)
    assert other.status_code == 409 and key in other.json()["error"]["message"], other.text
    assert batch(items[:1], key).status_code == 409  # fewer items: other content
    assert scored(app) - before == 1


# ---- Flow-Factory: no request id in the protocol; the key is the content -----------------------------------
def flow_payload(prompts: list[str], videos: list[np.ndarray]) -> dict[str, Any]:
    """What Flow-Factory's RemoteRewardClient posts (`_build_payload`), resent byte for byte on a retry."""
    return {"prompt": prompts, "image": None, "video": [[png_b64(f) for f in v] for v in videos],
            "condition_images": None, "condition_videos": None, "kwargs": None}


def compute(url: str, payload: dict[str, Any], key: str | None = None) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return httpx.post(f"{url}/compute", json=payload, headers=headers, timeout=120)


def test_flow_factory_resends_are_scored_once(app: str, frames: dict[str, np.ndarray]) -> None:
    vids = [frames["real_bikes"], frames["real_carphone"]]
    payload = flow_payload(["people riding bikes", "a man on a phone"], vids)
    before = scored(app)
    first = compute(app, payload)
    back_to_back = [compute(app, payload) for _ in range(3)]  # its client: 3 attempts, no pause
    assert scored(app) - before == 2  # two videos, scored once
    same_answers(first, back_to_back)
    assert len(first.json()["rewards"]) == 2

    payload = flow_payload(["people riding bikes again", "a man on a phone again"], vids)
    before = scored(app)
    waited = metric(app, "lift_idempotent_replays_total", {"route": "/compute", "waited": "true"})
    first, repeats = in_flight(lambda: compute(app, payload), lambda: compute(app, payload), app)
    assert scored(app) - before == 2
    same_answers(first, repeats)
    assert metric(app, "lift_idempotent_replays_total", {"route": "/compute", "waited": "true"}) - waited == 3

    # another kwargs.reward is another request (another number); with a client's own key, other content is a 409
    other = compute(app, {**payload, "kwargs": {"reward": "motion_smoothness"}})
    assert other.status_code == 200 and other.headers.get("Idempotent-Replayed") is None
    key = f"ff-{uuid.uuid4()}"
    assert compute(app, payload, key).status_code == 200
    conflict = compute(app, flow_payload(["people riding bikes"], vids[:1]), key)
    assert conflict.status_code == 409 and key in conflict.json()["error"]["message"], conflict.text


# ---- Cosmos-RL: no request id either; a repeat enqueue gets the first job's uuid ------------------------------
def cosmos_body(prompts: list[str], arr: np.ndarray) -> bytes:
    head = {"prompts": prompts, "reward_fn": {"lift": 1.0}, "media_type": "video",
            "video_infos": [{"video_fps": 8.0} for _ in prompts]}
    return json.dumps(head).encode() + b"\n" + npy_bytes(arr)


def enqueue(url: str, data: bytes) -> httpx.Response:
    return httpx.post(f"{url}/api/reward/enqueue", content=data, timeout=60,
                      headers={"Content-Type": "application/octet-stream"})


def wait_pull(url: str, job: str, timeout_s: float = 120.0) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while True:
        r = httpx.post(f"{url}/api/reward/pull", data={"uuid": job, "type": "lift"}, timeout=10)
        if r.status_code != 400 or time.monotonic() > deadline:
            return r
        time.sleep(0.1)


def test_cosmos_enqueue_repeats_make_one_job(app: str, frames: dict[str, np.ndarray]) -> None:
    clips = np.stack([frames["real_bikes"], frames["real_carphone"]])
    data = cosmos_body(["people riding bikes", "a man on a phone"], clips)
    before = scored(app)
    first = enqueue(app, data)
    back_to_back = [enqueue(app, data) for _ in range(3)]
    same_answers(first, back_to_back)
    job = first.json()["uuid"]
    done = wait_pull(app, job)
    assert done.status_code == 200, done.text
    assert scored(app) - before == 2

    # repeats while the first job is being scored: the same job, no second one
    data = cosmos_body(["people riding bikes, again", "a man on a phone, again"], clips)
    before = scored(app)
    first = enqueue(app, data)
    wait_until_scoring(app)
    repeats: list[Any] = [None] * 3
    threads = [threading.Thread(target=lambda i=i: repeats.__setitem__(i, enqueue(app, data))) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    same_answers(first, repeats)
    assert wait_pull(app, first.json()["uuid"]).status_code == 200
    assert scored(app) - before == 2


# ---- UniRL: newer clients give each sample a request_id; the key is the chunk's ids ---------------------------
def unirl_body(samples: list[tuple[str, str]], ids: list[str] | None) -> dict[str, Any]:
    """What UniRL's RemoteRewardBackend posts for video samples (with its identity fields when `ids` are given)."""
    reqs = []
    for i, (prompt, video_b64) in enumerate(samples):
        req: dict[str, Any] = {"history": [{"text": prompt, "video_b64": video_b64}], "required_rewards": ["lift"],
                               "metadata": None}
        if ids is not None:
            req |= {"request_id": ids[i], "sample_id": ids[i], "idempotency_key": f"ik-{ids[i]}"}
        reqs.append(req)
    return {"protocol_version": "1", "requests": reqs}


def unirl_score(url: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}/score", json=body, timeout=120)


def test_unirl_resends_are_scored_once(app: str, videos: dict[str, str]) -> None:
    samples = [("a red square gliding", videos["a"]), ("people riding bikes", videos["b"])]
    ids = [f"s-{uuid.uuid4()}", f"s-{uuid.uuid4()}"]
    body = unirl_body(samples, ids)
    before = scored(app)
    first = unirl_score(app, body)
    back_to_back = [unirl_score(app, body) for _ in range(3)]
    assert scored(app) - before == 2
    same_answers(first, back_to_back)
    assert all("lift" in r for r in first.json()["results"]), first.text

    body = unirl_body(samples, [f"s-{uuid.uuid4()}", f"s-{uuid.uuid4()}"])
    before = scored(app)
    first, repeats = in_flight(lambda: unirl_score(app, body), lambda: unirl_score(app, body), app)
    assert scored(app) - before == 2
    same_answers(first, repeats)

    # a resumed run reusing the ids for other videos: a 409 naming them, not the old scores
    reused = unirl_score(app, unirl_body(samples[::-1], ids))
    assert reused.status_code == 409, reused.text
    assert reused.json()["error"]["param"] == "request_id" and ids[0] in reused.json()["error"]["message"]
    # the 1a7b501 client sends no ids: the content is the key, an exact resend is a repeat
    plain = unirl_body([("a blue square", videos["a"])], None)
    before = scored(app)
    same_answers(unirl_score(app, plain), [unirl_score(app, plain)])
    assert scored(app) - before == 1


# ---- two replicas, one Redis ------------------------------------------------------------------------------------
def test_two_replicas_share_answers_through_redis(serve_app: Callable[..., AbstractContextManager[str]],
                                                  videos: dict[str, str], redis_url: str) -> None:
    body = {"prompt": "a red square gliding", "video": {"base64": videos["a"]}, "options": SLOW_OPTIONS}
    with serve_app(redis_url=redis_url) as a, serve_app(redis_url=redis_url) as b:
        key = f"t-{uuid.uuid4()}"
        before = scored(a), scored(b)
        first = score(a, body, key)
        on_b = score(b, body, key)  # the repeat lands on the other replica
        same_answers(first, [on_b])
        assert (scored(a) - before[0], scored(b) - before[1]) == (1, 0)

        key = f"t-{uuid.uuid4()}"  # the repeat reaches B while A is still scoring: B waits (polls Redis)
        before = scored(a), scored(b)
        first, repeats = in_flight(lambda: score(a, body, key), lambda: score(b, body, key), a, n=2)
        same_answers(first, repeats)
        assert (scored(a) - before[0], scored(b) - before[1]) == (1, 0)
        assert metric(b, "lift_idempotent_replays_total", {"route": "/v1/score", "waited": "true"}) == 2

        conflict = score(b, {**body, "video": {"base64": videos["b"]}}, key)
        assert conflict.status_code == 409 and key in conflict.json()["error"]["message"]


def test_a_timed_out_first_attempt_is_retried_for_real(serve_app: Callable[..., AbstractContextManager[str]],
                                                       videos: dict[str, str], redis_url: str) -> None:
    """A 504 on replica A (its deadline is far too short) is not remembered: the retry on B scores, and answers 200."""
    body = {"prompt": "a red square gliding", "video": {"base64": videos["a"]}}
    with serve_app(redis_url=redis_url, request_timeout_s=0.001) as a, serve_app(redis_url=redis_url) as b:
        key = f"t-{uuid.uuid4()}"
        failed = score(a, body, key)
        assert failed.status_code == 504 and failed.json()["error"]["code"] == "timeout", failed.text
        before = scored(b)
        retried = score(b, body, key)
        assert retried.status_code == 200 and retried.headers.get("Idempotent-Replayed") is None, retried.text
        assert scored(b) - before == 1
        assert score(a, body, key).content == retried.content  # and now A answers it from B's result
