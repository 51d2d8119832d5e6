"""Issue 19's pure parts: the in-process job store (bound, failed state, expiry, abandoned jobs), the adapters'
reward selection, and the client's frames -> .npy conversion (numpy and torch, every accepted layout)."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest

from clients.rewards import frames_to_npy, is_frames, split_batch
from service.adapters.selection import RewardSelection, all_scores
from service.errors import InvalidRequest, Overloaded
from service.jobs import WORKER_LOST, MemoryJobStore
from service.protocol import ScoreResponse


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_memory_store_bound_states_and_expiry() -> None:
    clock = Clock()
    store = MemoryJobStore(max_pending=2, ttl_s=10, clock=clock)

    async def run() -> None:
        a = await store.create({"n": 1}, run_timeout_s=60)
        b = await store.create({"n": 2}, run_timeout_s=60)
        with pytest.raises(Overloaded) as exc:
            await store.create({"n": 3}, run_timeout_s=60)
        assert exc.value.retry_after_s >= 1
        assert (await store.get(a.id)).state == "pending"
        await store.finish(a.id, {"scores": {"reward": [0.5]}})
        await store.fail(b.id, "invalid_video", "sample 0: not decodable")
        await store.fail(a.id, "late", "a finished job does not change")
        got_a, got_b = await store.get(a.id), await store.get(b.id)
        assert got_a.state == "done" and got_a.result == {"scores": {"reward": [0.5]}}
        assert got_b.state == "failed" and got_b.error == {"code": "invalid_video", "message": "sample 0: not decodable"}
        assert await store.pending() == 0
        await store.create({"n": 4}, run_timeout_s=60)  # room again
        clock.now += 11
        assert await store.get(a.id) is None and await store.get(b.id) is None  # expired

    asyncio.run(run())


def test_memory_store_refuses_rather_than_evicts_held_results() -> None:
    clock = Clock()
    store = MemoryJobStore(max_pending=2, ttl_s=10, max_stored=3, clock=clock)

    async def run() -> None:
        for i in range(3):
            job = await store.create({}, run_timeout_s=60)
            await store.finish(job.id, {"scores": {"reward": [i]}})
        with pytest.raises(Overloaded, match="held until they expire"):
            await store.create({}, run_timeout_s=60)
        clock.now += 11
        await store.create({}, run_timeout_s=60)  # expired results made room

    asyncio.run(run())


def test_an_abandoned_job_reads_as_failed_and_frees_its_slot() -> None:
    clock = Clock()
    store = MemoryJobStore(max_pending=1, ttl_s=10, clock=clock)

    async def run() -> None:
        job = await store.create({}, run_timeout_s=5)
        clock.now += 6
        got = await store.get(job.id)
        assert got.state == "failed" and got.error["code"] == WORKER_LOST
        await store.create({}, run_timeout_s=5)

    asyncio.run(run())


def _response() -> ScoreResponse:
    dim = lambda label, score, exp: {"label": label, "score": score, "expected_score": exp,  # noqa: E731
                                     "probabilities": {"Good": 0.5, "Normal": 0.3, "Bad": 0.2}, "rationale": "r"}
    return ScoreResponse.model_validate({
        "id": "x", "model": "m", "reward": 0.5, "expected_reward": 0.4, "num_frames": 8,
        "dimensions": {"semantic_consistency": dim("Good", 0.9, 0.6), "motion_smoothness": dim("Normal", 0.2, 0.3),
                       "video_fidelity": dim("Bad", 0.05, 0.3)}})


def test_reward_selection() -> None:
    r = _response()
    assert RewardSelection.parse("reward").value(r) == 0.5
    assert RewardSelection.parse("expected_reward").value(r) == 0.4
    assert RewardSelection.parse("motion_smoothness").value(r) == 0.3
    assert RewardSelection.parse("motion_smoothness.score").value(r) == 0.2
    assert RewardSelection.parse("motion_smoothness=0.5, video_fidelity.score=2").value(r) == pytest.approx(0.25)
    for bad in ("", "nope", "reward=x", "semantic_consistency.label", "reward=nan"):
        with pytest.raises(InvalidRequest):
            RewardSelection.parse(bad)
    scores = all_scores(r)
    assert scores["reward"] == 0.5 and scores["video_fidelity"] == 0.3 and scores["video_fidelity.score"] == 0.05


def _load(npy: bytes) -> np.ndarray:
    return np.load(io.BytesIO(npy), allow_pickle=False)


def test_client_frames_to_npy_layouts_and_dtypes() -> None:
    import torch

    v = np.random.default_rng(0).integers(0, 256, (5, 6, 8, 3), dtype=np.uint8)
    assert np.array_equal(_load(frames_to_npy(v)), v)
    assert np.array_equal(_load(frames_to_npy(v.transpose(0, 3, 1, 2))), v)  # (T, 3, H, W)
    assert np.array_equal(_load(frames_to_npy(v.transpose(3, 0, 1, 2))), v)  # (3, T, H, W)
    t = torch.from_numpy(v).permute(0, 3, 1, 2).to(torch.bfloat16) / 255.0  # bf16 float in [0, 1]
    assert is_frames(t) and is_frames(v) and not is_frames([v])
    assert np.abs(_load(frames_to_npy(t)).astype(int) - v).max() <= 1  # bf16 keeps 8 bits of mantissa
    assert np.array_equal(_load(frames_to_npy(torch.from_numpy(v))), v)
    batch = torch.from_numpy(np.stack([v, v]))
    assert len(split_batch(batch)) == 2
    with pytest.raises(InvalidRequest, match="5-D"):
        split_batch(v)
    with pytest.raises(InvalidRequest):
        frames_to_npy(np.zeros((5, 6, 8, 4), np.uint8))


def test_lift_serve_adapter_flag_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from clients.cli import build_parser
    from service.app.settings import ServiceSettings
    from service.cli import _settings_from

    args = build_parser().parse_args(["serve", "--adapter", "flow-factory", "--adapter", "cosmos-rl"])
    assert _settings_from(args).adapters == ["flow-factory", "cosmos-rl"]
    monkeypatch.setenv("LIFT_ADAPTERS", "cosmos-rl")
    assert ServiceSettings().adapters == ["cosmos-rl"]
    assert _settings_from(build_parser().parse_args(["serve"])).adapters == ["cosmos-rl"]  # flag unset: env
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--adapter", "verl-omni"])
    monkeypatch.setenv("LIFT_ADAPTERS", "verl-omni")
    with pytest.raises(ValueError):
        ServiceSettings()
