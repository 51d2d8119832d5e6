"""The UniRL route set over a real socket on the real vLLM CPU engine (tiny critic), in UniRL's wire format.

Payloads are built and answers read as UniRL's trainer client does (`unirl/reward/remote.py` in
Tencent-Hunyuan/UniRL@1a7b501, `RemoteRewardBackend` with `input_kind: video`): each sample a (C, T, H, W) float
video re-encoded as an 8 fps H.264 mp4 by diffusers' `export_to_video` (the function its client calls), sent as
`video_b64` in a one-turn history; per reward the FIRST sub-score is the number, a missing reward or a null / NaN /
non-number sub-score fails the sample, an empty sub-score object reads 0.0. The helpers below restate that
behaviour; they are ours, not its code.
"""

from __future__ import annotations

import base64
import io
import json
import math
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.adapters.selection import RewardSelection
from service.protocol import ScoreResponse

pytestmark = pytest.mark.vllm
SELECTION = "motion_smoothness=0.5,video_fidelity=0.5"  # LIFT_ADAPTER_REWARD: what `lift` carries
PROMPTS = {"real_bikes": "people riding bikes", "real_carphone": "a man talking on a phone"}


# ---- UniRL's client, restated ------------------------------------------------------------------------------
def unirl_video_b64(video: Any, fps: int = 8) -> str:
    """A (C, T, H, W) float tensor in [0, 1] -> base64 mp4, the way its client encodes a sample."""
    from diffusers.utils import export_to_video
    from PIL import Image

    v = video.detach().cpu().clamp(0.0, 1.0)
    frames = [Image.fromarray((v[:, t] * 255).byte().permute(1, 2, 0).numpy()) for t in range(v.shape[1])]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sample.mp4"
        export_to_video(frames, str(path), fps=fps)
        return base64.b64encode(path.read_bytes()).decode("ascii")


def unirl_request(prompt: str, rewards: list[str], **media: str) -> dict[str, Any]:
    return {"history": [{"text": prompt, **media}], "required_rewards": rewards, "metadata": None}


def unirl_read(body: dict[str, Any], rewards: list[str], batch: int) -> list[tuple[dict[str, float], str | None]]:
    """Per sample: ({reward: the number it takes}, its failure or None), as its client reads a /score answer."""
    results = list(body.get("results", [])) + [{}] * batch
    errors = list(body.get("errors", [])) + [{}] * batch
    out = []
    for i in range(batch):
        numbers: dict[str, float] = {}
        failures = []
        for name in rewards:
            if name not in results[i]:
                failures.append(f"{name}: {errors[i].get(name, 'missing from server response without error')}")
                continue
            subs = results[i][name]
            bad = [k for k, x in subs.items() if x is None or isinstance(x, bool) or not isinstance(x, (int, float))
                   or not math.isfinite(float(x))]
            if bad:
                failures.append(f"{name}: non-finite sub-metric {bad[0]!r}")
                continue
            numbers[name] = float(next(iter(subs.values()))) if subs else 0.0
        out.append((numbers, "; ".join(failures) or None))
    return out


def finite_numbers_only(text: str) -> None:
    """The answer as JSON text holds no NaN, Infinity or null anywhere, and every sub-score is a number."""
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in the answer")

    body = json.loads(text, parse_constant=refuse)
    for sample in body["results"]:
        for subs in sample.values():
            assert subs, "an empty sub-score object reads as 0.0 in UniRL's client"
            assert all(type(x) in (int, float) and math.isfinite(x) for x in subs.values()), subs
    for sample in body["errors"]:
        assert all(isinstance(x, str) and x for x in sample.values()), sample


# ---- fixtures -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def unirl_server(serve_app: Callable[..., AbstractContextManager[str]]) -> Iterator[str]:
    with serve_app(adapters=["unirl"], adapter_reward=SELECTION) as url:
        yield url


@pytest.fixture(scope="module")
def clips(sample_videos: dict[str, Path]) -> dict[str, str]:
    """Two real clips as a trainer holds them ((C, T, H, W) float in [0, 1]), encoded as its client does."""
    import torch

    from service.media import decode_video

    out = {}
    for name in PROMPTS:
        frames = np.ascontiguousarray(decode_video(sample_videos[name], 12).frames[:, :96, :128])
        out[name] = unirl_video_b64(torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 255.0)
    return out


def v1_score(url: str, prompt: str, video: dict[str, str]) -> ScoreResponse:
    r = httpx.post(f"{url}/v1/score", json={"prompt": prompt, "video": video}, timeout=120)
    assert r.status_code == 200, r.text
    return ScoreResponse.model_validate(r.json())


# ---- tests --------------------------------------------------------------------------------------------------
def test_health_and_rewards_roster(unirl_server: str, live_server: str) -> None:
    r = httpx.get(f"{unirl_server}/health", timeout=5)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ok" and isinstance(body["rewards"], dict)
    assert {"lift", "reward", "expected_reward", "motion_smoothness", "video_fidelity.score"} <= set(body["rewards"])
    assert body["rewards"]["lift"] == ["lift:ready"]
    names = httpx.get(f"{unirl_server}/rewards", timeout=5).json()["rewards"]
    assert names[0] == "lift" and set(names) == set(body["rewards"])
    # the route set is off unless switched on; the service's own /health then has no roster
    assert httpx.post(f"{live_server}/score", json={"requests": []}, timeout=10).status_code == 404
    assert "rewards" not in httpx.get(f"{live_server}/health", timeout=5).json()


def test_scores_are_what_v1_score_gives(unirl_server: str, clips: dict[str, str]) -> None:
    mp4 = base64.b64decode(clips["real_bikes"])
    assert b"avc1" in mp4  # H.264, as its trainer sends
    from service.media import decode_video

    assert decode_video(mp4, 8).fps == pytest.approx(8.0)

    rewards = ["lift", "motion_smoothness", "reward"]
    samples = [("real_bikes", {"video_b64": clips["real_bikes"]}),
               ("real_carphone", {"video_b64": clips["real_carphone"]}),
               ("real_bikes", {"video_path": "real_bikes.mp4"})]  # a file under LIFT_MEDIA_ROOT
    payload = {"requests": [unirl_request(PROMPTS[n], rewards, **m) for n, m in samples]}
    r = httpx.post(f"{unirl_server}/score", json=payload, timeout=180)
    assert r.status_code == 200, r.text
    finite_numbers_only(r.text)
    body = r.json()
    assert set(body) == {"results", "errors"} and body["errors"] == [{}, {}, {}]
    read = unirl_read(body, rewards, len(samples))
    selection = RewardSelection.parse(SELECTION)
    for (name, media), (numbers, failure) in zip(samples, read):
        assert failure is None
        video = {"base64": media["video_b64"]} if "video_b64" in media else {"path": media["video_path"]}
        want = v1_score(unirl_server, PROMPTS[name], video)
        assert numbers["lift"] == pytest.approx(selection.value(want), abs=1e-6)
        assert numbers["motion_smoothness"] == pytest.approx(want.dimensions["motion_smoothness"].expected_score,
                                                             abs=1e-6)
        assert numbers["reward"] == pytest.approx(want.reward, abs=1e-6)
    subs = body["results"][0]["lift"]
    assert list(subs)[0] == "lift" and {"reward", "expected_reward", "video_fidelity", "video_fidelity.score"} <= set(subs)


def test_a_bad_sample_is_its_own_error(unirl_server: str, clips: dict[str, str],
                                       sample_videos: dict[str, Path]) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(buf, format="JPEG")
    jpeg = base64.b64encode(buf.getvalue()).decode()
    good = clips["real_carphone"]
    half = base64.b64encode(base64.b64decode(good)[:600]).decode()
    outside = str(Path(sample_videos["real_bikes"]).resolve())  # a real video, not under the media root
    rewards = ["lift"]
    cases = [
        ({"video_b64": good}, None),
        ({"video_b64": base64.b64encode(b"not a video at all" * 50).decode()}, "invalid_video"),
        ({"video_b64": half}, "invalid_video"),                       # truncated mp4
        ({"image_b64": jpeg}, "unsupported_media_type"),              # an image where a video is needed
        ({"video_b64": jpeg}, "invalid_video"),                       # an image sent as the video
        ({"video_path": "escape.mp4"}, "forbidden_media_source"),     # a symlink out of the root
        ({"video_path": outside}, "forbidden_media_source"),
        ({"video_path": "no_such.mp4"}, "video_not_found"),
        ({"video_b64": "%%% not base64 %%%"}, "invalid_request"),
        ({"video_b64": good}, None),
    ]
    payload = {"requests": [unirl_request(PROMPTS["real_carphone"], rewards, **m) for m, _ in cases]}
    r = httpx.post(f"{unirl_server}/score", json=payload, timeout=180)
    assert r.status_code == 200, r.text  # UniRL's reference server would fail the whole batch here
    finite_numbers_only(r.text)
    body = r.json()
    read = unirl_read(body, rewards, len(cases))
    want = RewardSelection.parse(SELECTION).value(v1_score(unirl_server, PROMPTS["real_carphone"], {"base64": good}))
    for i, ((media, code), (numbers, failure)) in enumerate(zip(cases, read)):
        if code is None:
            assert failure is None and numbers["lift"] == pytest.approx(want, abs=1e-6), (i, body)
        else:
            assert body["results"][i] == {} and set(body["errors"][i]) == {"lift"}, (i, body)
            assert failure is not None and body["errors"][i]["lift"].startswith(f"{code}: "), (i, failure)
            assert f"requests.{i}.history.0." in failure, failure  # the reason names the field
    # one request asking for nothing gets nothing, the rest are still scored
    r = httpx.post(f"{unirl_server}/score", json={"requests": [
        unirl_request("a", [], video_b64=good), unirl_request(PROMPTS["real_carphone"], ["lift", "lift"], video_b64=good)]},
        timeout=120)
    assert r.status_code == 200 and r.json()["results"][0] == {} and r.json()["errors"] == [{}, {}], r.text
    assert unirl_read(r.json(), ["lift"], 2)[1][0]["lift"] == pytest.approx(want, abs=1e-6)


def test_envelope_errors_fail_the_call(unirl_server: str, clips: dict[str, str]) -> None:
    good = clips["real_bikes"]
    r = httpx.post(f"{unirl_server}/score", json={"requests": [
        unirl_request("a", ["lift"], video_b64=good), unirl_request("b", ["videoalign"], video_b64=good)]}, timeout=30)
    assert r.status_code == 400, r.text  # as UniRL's server: an unknown reward fails the batch
    err = r.json()["error"]
    assert err["param"] == "requests.1.required_rewards.0" and "videoalign" in err["message"], err
    assert "lift" in err["message"]  # and says which are available
    for bad in ({}, {"requests": {}}, {"requests": ["x"]}, {"requests": [{"history": [], "required_rewards": "lift"}]}):
        r = httpx.post(f"{unirl_server}/score", json=bad, timeout=30)
        assert r.status_code == 422, (bad, r.text)
    r = httpx.post(f"{unirl_server}/score", json={"requests": []}, timeout=30)
    assert r.status_code == 200 and r.json() == {"results": [], "errors": []}


def test_keys_guard_score_not_health(serve_app: Callable[..., AbstractContextManager[str]],
                                     clips: dict[str, str]) -> None:
    with serve_app(adapters=["unirl"], api_keys="k1") as url:
        payload = {"requests": [unirl_request(PROMPTS["real_bikes"], ["lift"], video_b64=clips["real_bikes"])]}
        assert httpx.post(f"{url}/score", json=payload, timeout=30).status_code == 401
        assert httpx.get(f"{url}/rewards", timeout=5).status_code == 401
        assert "lift" in httpx.get(f"{url}/health", timeout=5).json()["rewards"]  # ops routes stay open
        r = httpx.post(f"{url}/score", json=payload, headers={"Authorization": "Bearer k1"}, timeout=120)
        assert r.status_code == 200 and r.json()["errors"] == [{}], r.text


def test_switched_on_by_flag_or_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from clients.cli import build_parser
    from service.app.settings import ServiceSettings
    from service.cli import _settings_from

    assert _settings_from(build_parser().parse_args(["serve", "--adapter", "unirl"])).adapters == ["unirl"]
    monkeypatch.setenv("LIFT_ADAPTERS", "flow-factory,unirl")
    assert ServiceSettings().adapters == ["flow-factory", "unirl"]
