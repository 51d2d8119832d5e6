"""The Cosmos-RL route set over a real socket on the real vLLM CPU engine (tiny critic), in Cosmos-RL's wire
format: `<JSON header>\\n<.npy>` enqueue, form pull, bearer token. Real frames from real videos; latents made by a
tiny random `AutoencoderKLWan` built offline, encoded as Cosmos-RL's trainer encodes (normalised Wan latents);
a real redis-server (Debian's) shared by two replicas; and, where it is installed
(scripts/install_cosmos_client.sh), Cosmos-RL's own `RemoteRewardCalculator` driving our server.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.integration.conftest import REPO, free_port

pytestmark = pytest.mark.vllm
TOKEN = "cosmos-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DIMS = ("semantic_consistency", "motion_smoothness", "video_fidelity")


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def body(prompts: list[str], arr: np.ndarray, media_type: str = "video", fps: float = 8.0, **header: Any) -> bytes:
    """What cosmos_rl's RemoteRewardCalculator.enqueue_request posts."""
    head = {"prompts": prompts, "reward_fn": {"lift": 1.0}, "media_type": media_type,
            "video_infos": [{"video_fps": fps} for _ in prompts], **header}
    return json.dumps(head).encode() + b"\n" + npy_bytes(arr)


def enqueue(url: str, data: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{url}/api/reward/enqueue", content=data, timeout=60,
                      headers={"Content-Type": "application/octet-stream", **(AUTH if headers is None else headers)})


def pull(url: str, uuid: str, kind: str = "lift") -> httpx.Response:
    return httpx.post(f"{url}/api/reward/pull", data={"uuid": uuid, "type": kind}, headers=AUTH, timeout=10)


def wait_pull(url: str, uuid: str, timeout_s: float = 120.0) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while True:
        r = pull(url, uuid)
        if r.status_code != 400 or time.monotonic() > deadline:
            return r
        assert r.json()["error"]["code"] == "job_pending", r.text
        time.sleep(0.2)


@pytest.fixture(scope="module")
def clips(sample_videos: dict[str, Path]) -> np.ndarray:
    """Two real clips, 5 frames each, subsampled to 32x48: (2, 5, 32, 48, 3) uint8 (the tiny VAE's cost grows fast)."""
    from service.media import decode_video

    out = [decode_video(sample_videos[n], 5).frames[:, ::3, ::2][:, :32, :48] for n in ("real_bikes", "real_carphone")]
    return np.ascontiguousarray(np.stack(out))


@pytest.fixture(scope="module")
def tiny_wan_vae(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1)
    out = tmp_path_factory.mktemp("tiny-wan-vae")
    vae.save_pretrained(out)
    return out


def encode_as_cosmos(vae_dir: Path, clips: np.ndarray) -> np.ndarray:
    """The trainer's side: frames (B, T, C, H, W) in [0, 1] -> Wan VAE -> normalised float16 latents."""
    import torch
    from diffusers import AutoencoderKLWan

    from service.adapters.latents import encode_like_cosmos

    vae = AutoencoderKLWan.from_pretrained(vae_dir).eval()
    frames = torch.from_numpy(clips).permute(0, 1, 4, 2, 3).float() / 255.0
    return encode_like_cosmos(vae, frames)


@pytest.fixture(scope="module")
def cosmos_server(serve_app: Callable[..., AbstractContextManager[str]], tiny_wan_vae: Path) -> Iterator[str]:
    with serve_app(adapters=["cosmos-rl"], latent_vae=tiny_wan_vae, api_keys=TOKEN,
                   adapter_reward="expected_reward") as url:
        yield url


def score_frames(url: str, video: np.ndarray, prompt: str) -> dict[str, Any]:
    r = httpx.post(f"{url}/v1/score", files={"video": ("f.npy", npy_bytes(video), "application/x-npy")},
                   data={"prompt": prompt}, headers=AUTH, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


PROMPTS = ["people riding bikes", "a man talking on a phone"]


def test_video_frames_enqueue_then_pull(cosmos_server: str, clips: np.ndarray) -> None:
    r = enqueue(cosmos_server, body(PROMPTS, clips))
    assert r.status_code == 200, r.text
    uuid = r.json()["uuid"]
    done = wait_pull(cosmos_server, uuid)
    assert done.status_code == 200, done.text
    out = done.json()
    assert set(out) == {"scores", "input_info", "duration", "type", "provenance"} and out["type"] == "lift"
    scores = out["scores"]
    assert {"reward", "expected_reward", "lift", *DIMS, *(f"{d}.score" for d in DIMS)} <= set(scores)
    assert all(len(v) == 2 for v in scores.values())
    want = [score_frames(cosmos_server, clips[i], PROMPTS[i]) for i in range(2)]
    assert scores["reward"] == pytest.approx([w["reward"] for w in want], abs=1e-9)
    # the job's provenance: the same critic and rubric as /v1/score's, reward-only sampling (the adapter's default)
    assert {k: out["provenance"][k] for k in ("critic", "rubric", "engine", "server", "frames")} == {
        k: want[0]["provenance"][k] for k in ("critic", "rubric", "engine", "server", "frames")}
    assert out["provenance"]["sampling"]["rationale"] is False
    assert scores["lift"] == pytest.approx([w["expected_reward"] for w in want], abs=1e-6)  # LIFT_ADAPTER_REWARD
    for d in DIMS:
        assert scores[d] == pytest.approx([w["dimensions"][d]["expected_score"] for w in want], abs=1e-6)
    # a trainer's composite score_key "a+b" sums keys that exist
    assert out["input_info"]["prompts"] == PROMPTS and out["input_info"]["media_type"] == "video"
    # (B, 3, T, H, W) is the same videos
    r = enqueue(cosmos_server, body(PROMPTS, np.ascontiguousarray(clips.transpose(0, 4, 1, 2, 3))))
    assert wait_pull(cosmos_server, r.json()["uuid"]).json()["scores"]["reward"] == scores["reward"]


def test_latents_pending_then_done_equal_scoring_the_decoded_frames(cosmos_server: str, clips: np.ndarray,
                                                                     tiny_wan_vae: Path) -> None:
    from service.adapters.latents import LatentDecoder

    latents = encode_as_cosmos(tiny_wan_vae, clips)
    assert latents.dtype == np.float16 and latents.shape[:3] == (2, 16, 2)
    r = enqueue(cosmos_server, body(PROMPTS, latents, media_type="latent", fps=16.0))
    assert r.status_code == 200, r.text
    uuid = r.json()["uuid"]
    early = pull(cosmos_server, uuid)  # the VAE decode alone takes longer than this round trip
    assert early.status_code == 400 and early.json()["error"]["code"] == "job_pending", early.text
    assert "scores" not in early.json()
    done = wait_pull(cosmos_server, uuid)
    assert done.status_code == 200, done.text
    decoded = LatentDecoder(tiny_wan_vae).decode(latents)
    assert decoded.shape == (2, 5, 32, 48, 3)
    want = [score_frames(cosmos_server, decoded[i], PROMPTS[i])["reward"] for i in range(2)]
    assert done.json()["scores"]["reward"] == pytest.approx(want, abs=1e-9)


def test_a_job_that_cannot_be_decoded_pulls_as_failed(cosmos_server: str) -> None:
    bad = np.zeros((1, 8, 2, 4, 6), np.float16)  # 8 channels; the VAE's z_dim is 16
    r = enqueue(cosmos_server, body(["a scene"], bad, media_type="latent"))
    assert r.status_code == 200, r.text
    out = wait_pull(cosmos_server, r.json()["uuid"])
    assert out.status_code == 422, out.text
    err = out.json()["error"]
    assert err["code"] == "job_failed" and "channels" in err["message"] and "scores" not in out.json()
    again = pull(cosmos_server, r.json()["uuid"])  # stays failed, never turns into a reward
    assert again.status_code == 422


def test_envelope_errors_are_4xx_at_enqueue(cosmos_server: str, clips: np.ndarray) -> None:
    ok = body(PROMPTS, clips)
    cases = [
        (enqueue(cosmos_server, ok, headers={}), 401, "unauthorized"),
        (enqueue(cosmos_server, b'{"prompts": ["a"]}'), 400, "invalid_json"),
        (enqueue(cosmos_server, body(["only one"], clips)), 422, "validation_error"),
        (enqueue(cosmos_server, body(PROMPTS, clips, media_type="image")), 415, "unsupported_media_type"),
        (enqueue(cosmos_server, body(PROMPTS, clips, reward_fn={"dance_grpo": 1.0})), 422, "validation_error"),
        (enqueue(cosmos_server, body(PROMPTS, clips.astype(np.float32))), 422, "invalid_video"),
        (enqueue(cosmos_server, ok[:-50]), 422, "invalid_video"),
        (enqueue(cosmos_server, body(PROMPTS, clips[:, :, :, :, :2])), 422, "invalid_video"),
    ]
    for r, status, code in cases:
        assert r.status_code == status, r.text
        assert r.json()["error"]["code"] == code, r.text
    obj = io.BytesIO()
    np.save(obj, np.array([None, None], dtype=object), allow_pickle=True)
    r = enqueue(cosmos_server, json.dumps({"prompts": PROMPTS}).encode() + b"\n" + obj.getvalue())
    assert r.status_code == 422 and "pickle" in r.json()["error"]["message"], r.text
    unknown = pull(cosmos_server, "0" * 32)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "job_not_found"


def test_latents_without_a_vae_are_refused_naming_the_setting(serve_app: Callable[..., AbstractContextManager[str]],
                                                               clips: np.ndarray, tiny_wan_vae: Path) -> None:
    with serve_app(adapters=["cosmos-rl"]) as url:
        latents = np.zeros((2, 16, 2, 4, 6), np.float16)
        r = enqueue(url, body(PROMPTS, latents, media_type="latent"), headers={})
        assert r.status_code == 422 and "LIFT_LATENT_VAE" in r.json()["error"]["message"], r.text


@pytest.mark.slow
def test_enqueue_flood_past_the_bound_is_429_and_nothing_is_lost(serve_app: Callable[..., AbstractContextManager[str]],
                                                                 clips: np.ndarray) -> None:
    many = np.concatenate([clips] * 4)  # 8 samples a job: the engine holds each job for a while
    prompts = PROMPTS * 4
    with serve_app(adapters=["cosmos-rl"], jobs_max_pending=2, jobs_ttl_s=3.0) as url:
        # six different jobs (the same body six times would be one job: a repeat gets the first job's uuid)
        answers = [enqueue(url, body([f"{p} #{k}" for p in prompts], many), headers={}) for k in range(6)]
        accepted = [r.json()["uuid"] for r in answers if r.status_code == 200]
        refused = [r for r in answers if r.status_code != 200]
        assert len(accepted) >= 2 and refused, [r.status_code for r in answers]
        for r in refused:
            assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1, r.text
            assert r.json()["error"]["code"] == "overloaded"
        for uuid in accepted:  # every accepted job ends with its rewards: nothing silently dropped
            r = wait_pull(url, uuid)
            assert r.status_code == 200 and len(r.json()["scores"]["reward"]) == 8, r.text
        again = enqueue(url, body(PROMPTS, clips), headers={})  # room again once they finished
        assert again.status_code == 200, again.text
        assert wait_pull(url, again.json()["uuid"]).status_code == 200
        time.sleep(3.5)  # LIFT_JOBS_TTL_S: results expire, then the job is unknown
        gone = pull(url, accepted[0])
        assert gone.status_code == 404 and "expired" in gone.json()["error"]["message"]


# ---- two replicas, one Redis -------------------------------------------------------------------------
def test_two_replicas_share_jobs_through_redis(serve_app: Callable[..., AbstractContextManager[str]],
                                               clips: np.ndarray, redis_url: str) -> None:
    settings = {"adapters": ["cosmos-rl"], "redis_url": redis_url, "jobs_max_pending": 1}
    with serve_app(**settings) as a, serve_app(**settings) as b:
        r = enqueue(a, body(PROMPTS, clips), headers={})
        assert r.status_code == 200, r.text
        uuid = r.json()["uuid"]
        # the bound is shared: while A's job is pending, B has no room either
        other = enqueue(b, body(PROMPTS, clips), headers={})
        on_b = wait_pull(b, uuid)  # enqueued on A, pulled on B
        assert on_b.status_code == 200, on_b.text
        assert other.status_code in (200, 429)
        if other.status_code == 200:  # A's job had already finished
            assert wait_pull(a, other.json()["uuid"]).status_code == 200
        want = [score_frames(a, clips[i], PROMPTS[i])["reward"] for i in range(2)]
        assert on_b.json()["scores"]["reward"] == pytest.approx(want, abs=1e-9)
        assert pull(a, uuid).json() == on_b.json()


def test_redis_bound_is_shared_across_replicas(redis_url: str) -> None:
    """The store itself, without timing: one slot taken on one replica is gone on the other."""
    import asyncio

    from service.errors import Overloaded
    from service.jobs import RedisJobStore

    async def run() -> None:
        a = RedisJobStore(redis_url, max_pending=1, ttl_s=60, prefix="t:")
        b = RedisJobStore(redis_url, max_pending=1, ttl_s=60, prefix="t:")
        try:
            job = await a.create({"n": 1}, run_timeout_s=30)
            with pytest.raises(Overloaded):
                await b.create({"n": 2}, run_timeout_s=30)
            assert (await b.get(job.id)).state == "pending"
            await a.fail(job.id, "invalid_video", "sample 0 did not decode")
            got = await b.get(job.id)
            assert got.state == "failed" and got.error == {"code": "invalid_video", "message": "sample 0 did not decode"}
            await b.create({"n": 3}, run_timeout_s=30)  # the slot is free again
        finally:
            await a.aclose()
            await b.aclose()

    asyncio.run(run())


# ---- Cosmos-RL's own client ----------------------------------------------------------------------------
COSMOS_CLIENT_DIR = Path(os.environ.get("COSMOS_CLIENT_DIR", REPO / ".venv" / "cosmos-rl-client"))

_DRIVER = r'''
import json, sys, time
from types import SimpleNamespace as NS
import numpy as np, torch
from diffusers import AutoencoderKLWan
try:
    from cosmos_rl.reward.remote_calculator import RemoteRewardCalculator
except ImportError as exc:  # not installed here: the test skips with this line
    print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
    sys.exit(77)

url, vae_dir, clips_path = sys.argv[1:4]
clips = np.load(clips_path, allow_pickle=False)
vae = AutoencoderKLWan.from_pretrained(vae_dir).eval()

class WanTokenizer:  # stands in for cosmos_rl's Wan2pt1VAEInterface (cosmos-rl[wfm]): same maths, same VAE
    def encode(self, x):  # x: (B, C, T, H, W) in [-1, 1], as compute_rewards prepares it
        z = int(vae.config.z_dim)
        mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1)
        with torch.no_grad():
            return (vae.encode(x.float()).latent_dist.mean - mean) / std

calc = RemoteRewardCalculator()  # setup() needs a whole trainer Config; set what the request path reads
calc.enqueue_url, calc.fetch_url, calc.token = url + "/api/reward/enqueue", url + "/api/reward/pull", "TOKEN"
calc.tokenizer = WanTokenizer()
fn = NS(name="lift", weight=1.0, score_key="motion_smoothness+video_fidelity", clip_min=-10.0, clip_max=10.0)
calc.train_config = NS(reward_fns=[fn], reward_clip_min=-10.0, reward_clip_max=10.0, scale=1.0)
calc.val_config = calc.train_config
calc.uuid2payload, calc.uuid2replica, calc.uuid2stage, calc.uuid2step, calc.uuid2completions_per_payload = {}, {}, {}, {}, {}
frames = torch.from_numpy(clips).permute(0, 1, 4, 2, 3).float() / 255.0  # (B, T, C, H, W) in [0, 1]
payloads = [NS(prompt={"prompt": "people riding bikes"}, completions=frames[:1], extra_info={"modality": "video", "video_fps": 16.0}),
            NS(prompt={"prompt": "a man talking on a phone"}, completions=frames[1:], extra_info={"modality": "video"})]
uuid = calc.compute_rewards(payloads, is_validation=False, step=1)
deadline = time.time() + 120
while True:  # get_results' loop: a failed fetch (400 while pending) is retried later
    try:
        rewards = calc.fetch_reward(uuid, is_validation=False)
        break
    except Exception as exc:
        if time.time() > deadline:
            raise
        time.sleep(0.3)
print(json.dumps({"uuid": uuid, "rewards": rewards.tolist()}))
'''


@pytest.mark.slow  # importing cosmos_rl (it imports vLLM and its model zoo) is most of its time
def test_cosmos_rl_own_client_drives_our_server(cosmos_server: str, clips: np.ndarray, tiny_wan_vae: Path,
                                                tmp_path: Path) -> None:
    np.save(tmp_path / "clips.npy", clips, allow_pickle=False)
    # One process: importing cosmos_rl (it imports vLLM, transformers, its model zoo) takes most of the time.
    proc = subprocess.run([sys.executable, "-c", _DRIVER.replace('"TOKEN"', repr(TOKEN)), cosmos_server,
                           str(tiny_wan_vae), str(tmp_path / "clips.npy")], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(COSMOS_CLIENT_DIR)})
    if proc.returncode == 77:
        pytest.skip(f"cosmos-rl's client is not importable from {COSMOS_CLIENT_DIR} (scripts/install_cosmos_client.sh):"
                    f" {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'no output'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # the same job pulled by hand: the trainer's score_key "motion_smoothness+video_fidelity" summed those keys
    scores = pull(cosmos_server, out["uuid"]).json()["scores"]
    want = [m + f for m, f in zip(scores["motion_smoothness"], scores["video_fidelity"])]
    assert out["rewards"] == pytest.approx(want, abs=1e-6)
    info = pull(cosmos_server, out["uuid"]).json()["input_info"]
    assert info["media_type"] == "latent" and info["dtype"] == "float16" and info["shape"][:2] == [2, 16]
    assert info["video_infos"] == [{"video_fps": 16.0}, {"video_fps": 16.0}]  # fps of the first payload, as theirs


def test_cosmos_asks_for_reward_only_by_default(cosmos_server: str, clips: np.ndarray) -> None:
    import re

    def reward_only_count() -> float:
        text = httpx.get(f"{cosmos_server}/metrics", timeout=10).text
        m = re.search(r'^lift_scored_videos_total\{rationale="false",scoring="label"\} (\S+)$', text, re.M)
        return float(m.group(1)) if m else 0.0

    before = reward_only_count()
    r = enqueue(cosmos_server, body([f"{p}, reward-only" for p in PROMPTS], clips))  # not a repeat of an earlier job
    assert wait_pull(cosmos_server, r.json()["uuid"]).status_code == 200
    assert reward_only_count() - before == 2
