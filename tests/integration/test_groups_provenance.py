"""GRPO groups in `/v1/score/batch` and `provenance` on every score, on the real vLLM engine over real sockets.

- groups: a group of one video + prompt repeated (greedy: equal scores, zero spread), a group of different videos
  (with a failed item, left out), an ungrouped item; the statistics checked against the items returned, and the
  zero-spread counters move;
- provenance: the same for one critic on /v1/score (JSON and multipart), a batch item and a `lift label` line;
  another critic (a tiny critic of another seed, on the transformers engine) differs in its critic digest only
  where it should, and `lift label merge` refuses the two critics' labels, naming both.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from clients.cli import main as lift_main
from clients.label_outputs import ok_record
from clients.labeler import LabelConfig, label
from service.critic import Critic
from service.protocol import BatchScoreResponse, ScoreOptions, ScoreResponse
from service.provenance import checkpoint_digest, rubric_digest, server_version

pytestmark = pytest.mark.vllm
DIMS = ("semantic_consistency", "motion_smoothness", "video_fidelity")


def _counter(text: str, name: str, key: str) -> float:
    m = re.search(rf'^{name}\{{key="{re.escape(key)}"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def _stat(stats: dict[str, Any], key: str) -> dict[str, Any]:
    """A group's statistics of one key (`reward`, `DIM.expected_score`, ...)."""
    if "." not in key:
        return stats[key]
    dim, part = key.split(".")
    return stats["dimensions"][dim][part]


def _values(results: list[dict[str, Any]], key: str) -> list[float]:
    if key in ("reward", "expected_reward"):
        return [r[key] for r in results]
    dim, part = key.split(".")
    return [r["dimensions"][dim][part] for r in results]


def test_batch_groups_statistics_and_zero_spread_metric(live_server: str, video_factory: Callable[..., Path],
                                                        live_media_root: Path) -> None:
    videos = []
    for i, colour in enumerate(("green", "blue", "yellow")):
        src = video_factory(f"group_{colour}", num_frames=12, height=48, width=64, colour=colour, seed=40 + i,
                            jitter=0.2 * i)
        (live_media_root / src.name).write_bytes(src.read_bytes())
        videos.append(src.name)
    same = {"prompt": "a red square moves right", "video": {"path": "h264_mp4.mp4"},
            "options": {"max_reason_tokens": 4}}
    items: list[Any] = [
        {**same, "group": "p0"},
        {"prompt": "a green square", "video": {"path": videos[0]}, "options": {"max_reason_tokens": 4}, "group": 1},
        {**same, "group": "p0"},
        {"prompt": "a blue square on a road", "video": {"path": videos[1]}, "options": {"max_reason_tokens": 4},
         "group": 1},
        {"prompt": "gone", "video": {"path": "nope.mp4"}, "group": 1},  # fails: left out of group 1's numbers
        {**same, "group": "p0"},
        {"prompt": 12345, "video": {"path": "h264_mp4.mp4"}, "group": "p0"},  # invalid: still p0's failure
        {"prompt": "yellow, with people", "video": {"path": videos[2]}, "options": {"max_reason_tokens": 4},
         "group": "1"},  # the integer 1 and "1" are one group
        {"prompt": "no group", "video": {"path": videos[0]}, "options": {"max_reason_tokens": 4}},
    ]
    before = httpx.get(f"{live_server}/metrics", timeout=10).text
    r = httpx.post(f"{live_server}/v1/score/batch", json={"items": items}, timeout=600)
    assert r.status_code == 200, r.text
    body = r.json()
    BatchScoreResponse.model_validate(body)
    results = body["results"]
    assert [("error" in x) for x in results] == [False, False, False, False, True, False, True, False, False]
    groups = body["groups"]
    assert set(groups) == {"p0", "1"}

    p0, g1 = groups["p0"], groups["1"]
    assert (p0["n"], p0["scored"], p0["failed"]) == (4, 3, 1)
    assert (g1["n"], g1["scored"], g1["failed"]) == (4, 3, 1)
    members = {"p0": [results[i] for i in (0, 2, 5)], "1": [results[i] for i in (1, 3, 7)]}
    keys = ["reward", "expected_reward", *(f"{d}.{part}" for d in DIMS for part in ("score", "expected_score"))]
    for gid, stats in groups.items():
        for key in keys:
            got = _stat(stats, key)
            vals = _values(members[gid], key)
            assert got["mean"] == pytest.approx(statistics.fmean(vals), abs=1e-12), (gid, key)
            assert got["std"] == pytest.approx(statistics.pstdev(vals), abs=1e-12), (gid, key)  # population std
            assert got["zero_spread"] == (max(vals) - min(vals) <= 1e-6), (gid, key)
    # the same video and prompt, greedy: the same scores, no signal for GRPO on any key
    for key in keys:
        assert _stat(p0, key)["zero_spread"]
    assert p0["reward"]["std"] == 0
    assert g1["expected_reward"]["zero_spread"] is False and g1["expected_reward"]["std"] > 0  # different videos

    after = httpx.get(f"{live_server}/metrics", timeout=10).text
    for key in keys:
        assert _counter(after, "lift_groups_total", key) - _counter(before, "lift_groups_total", key) == 2
        zero = "lift_zero_spread_groups_total"
        moved = _counter(after, zero, key) - _counter(before, zero, key)
        assert moved == 1 + int(_stat(g1, key)["zero_spread"]), key

    # a batch without groups answers an empty object
    r = httpx.post(f"{live_server}/v1/score/batch", json={"items": [same]}, timeout=300)
    assert r.status_code == 200 and r.json()["groups"] == {}
    # a bad group id fails its item only
    r = httpx.post(f"{live_server}/v1/score/batch", json={"items": [same, {**same, "group": ""}]}, timeout=300)
    assert "error" not in r.json()["results"][0] and r.json()["results"][1]["error"]["param"].startswith("items.1.group")


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_provenance_is_the_same_on_every_route_for_one_critic(live_server: str, sample_videos: dict[str, Path],
                                                              tiny_critic_dir: Path, tmp_path: Path) -> None:
    video = sample_videos["h264_mp4"]
    opts = {"max_reason_tokens": 4}
    one = httpx.post(f"{live_server}/v1/score", json={"prompt": "a red square", "video": {"path": "h264_mp4.mp4"},
                                                      "options": opts}, timeout=300).json()
    form = httpx.post(f"{live_server}/v1/score", data={"prompt": "a red square", "options": json.dumps(opts)},
                      files={"video": ("v.mp4", video.read_bytes(), "video/mp4")}, timeout=300).json()
    batch = httpx.post(f"{live_server}/v1/score/batch", json={"items": [
        {"prompt": "a red square", "video": {"path": "h264_mp4.mp4"}, "options": opts, "group": "g"}]},
        timeout=300).json()["results"][0]
    manifest = _write_jsonl(tmp_path / "manifest.jsonl", [{"id": "v1", "video": str(video), "prompt": "a red square"}])
    out = tmp_path / "labels.jsonl"
    result = asyncio.run(label(LabelConfig(manifest=manifest, out=out, servers=[live_server], progress=False,
                                           options=ScoreOptions(**opts))))
    line = json.loads(out.read_text().splitlines()[0])
    assert result.summary.as_dict()["provenance"] == [{"records": 1, "provenance": line["provenance"]}]

    prov = one["provenance"]
    assert prov == form["provenance"] == batch["provenance"] == line["provenance"]
    assert prov["critic"] == {"name": "tiny-critic", "family": "qwen2_vl", "digest": checkpoint_digest(tiny_critic_dir)}
    assert prov["rubric"] == {"digest": rubric_digest()}
    assert prov["frames"] == {"count": 8, "rule": "linspace", "short_clip": "repeat"}
    assert prov["engine"] == {"name": "vllm", "dtype": "float32"}
    assert prov["sampling"] == {"temperature": 0.0, "seed": None, "max_tokens": 4, "scoring": "label", "rationale": True}
    assert prov["server"] == {"name": "lift-reward", "version": server_version()}

    # the request's own options show in its provenance; nothing else changes
    other = httpx.post(f"{live_server}/v1/score", json={
        "prompt": "a red square", "video": {"path": "h264_mp4.mp4"},
        "options": {"num_frames": 4, "temperature": 0.7, "seed": 3, "rationale": False}}, timeout=300).json()["provenance"]
    assert other["frames"]["count"] == 4
    assert other["sampling"] == {"temperature": 0.7, "seed": 3, "max_tokens": 64, "scoring": "label", "rationale": False}
    assert {k: other[k] for k in ("critic", "rubric", "engine", "server")} == {
        k: prov[k] for k in ("critic", "rubric", "engine", "server")}


def test_another_critic_has_other_provenance_and_merge_refuses_mixing(
        live_server: str, critic_runtime: Any, sample_videos: dict[str, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from service.tiny_critics import build_tiny_critic

    second_dir = build_tiny_critic(tmp_path / "second", family="qwen2_vl", seed=1)
    second = Critic.from_pretrained(second_dir, engine="transformers", model_name="tiny-critic-seed1", dtype="float32")
    critic_runtime.run(second.start())
    try:
        theirs = critic_runtime.run(second.score(sample_videos["h264_mp4"], "a red square",
                                                 ScoreOptions(max_reason_tokens=4)))
    finally:
        critic_runtime.run(second.stop())
    ours = ScoreResponse.model_validate(httpx.post(f"{live_server}/v1/score", json={
        "prompt": "a red square", "video": {"path": "h264_mp4.mp4"}, "options": {"max_reason_tokens": 4}},
        timeout=300).json())
    assert ours.provenance is not None and theirs.provenance is not None
    assert theirs.provenance.critic.digest != ours.provenance.critic.digest
    assert theirs.provenance.critic.name == "tiny-critic-seed1" and theirs.provenance.engine.name == "transformers"
    assert theirs.provenance.rubric == ours.provenance.rubric and theirs.provenance.sampling == ours.provenance.sampling

    a = _write_jsonl(tmp_path / "a.jsonl", [ok_record("x1", "v.mp4", "a red square", ours)])
    b = _write_jsonl(tmp_path / "b.jsonl", [ok_record("x2", "v.mp4", "a red square", theirs)])
    merged = tmp_path / "merged.jsonl"
    assert lift_main(["label", "merge", str(a), str(b), "--out", str(merged)]) == 2
    err = capsys.readouterr().err
    assert not merged.exists()
    assert "different critics" in err and "'tiny-critic'" in err and "'tiny-critic-seed1'" in err
    assert ours.provenance.critic.digest in err and theirs.provenance.critic.digest in err
    assert lift_main(["label", "merge", str(a), str(b), "--out", str(merged), "--allow-mixed-provenance"]) == 0
    assert len(merged.read_text().splitlines()) == 2
