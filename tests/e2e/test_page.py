"""The hand-scoring page (GET /) in headless Chromium against the real service on the tiny vLLM critic.

A person's path through it: pick a real video, type the prompt, press Score (keyboard only), read the
three dimensions, the frames the critic saw and the reward; a broken file and a missing API key show the
API's own error words. Screenshots land in artifacts/e2e/ for a person to look at.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]

DIMENSIONS = ("semantic_consistency", "motion_smoothness", "video_fidelity")
PROMPT = "a group of cyclists riding along a road on a sunny day"
SCORE_TIMEOUT_MS = 180_000


def _open(page: Any, base_url: str) -> list[str]:
    """Load the page; return a live list of every URL the page requests (to prove it stays on-origin)."""
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    response = page.goto(f"{base_url}/")
    assert response is not None and response.status == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in response.headers["content-security-policy"]
    return requested


def _choose(page: Any, video: Path, prompt: str) -> None:
    page.set_input_files("#video", str(video))
    page.fill("#prompt", prompt)


def _drop(page: Any, video: Path) -> None:
    """Drop a file on the drop zone the way a browser does: a drop event carrying a DataTransfer."""
    transfer = page.evaluate_handle(
        """([name, b64]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, { type: "video/mp4" }));
            return dt;
        }""",
        [video.name, base64.b64encode(video.read_bytes()).decode()],
    )
    page.dispatch_event("#drop", "dragenter", {"dataTransfer": transfer})
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})


def _press_score_by_keyboard(page: Any) -> None:
    """Tab from the prompt to the Score button and press Enter, as a keyboard-only user would."""
    page.focus("#prompt")
    for _ in range(6):
        if page.evaluate("document.activeElement.id") == "score":
            break
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "score", "Score button not reachable by Tab"
    page.keyboard.press("Enter")


def _wait_for_error(page: Any) -> dict[str, str]:
    page.wait_for_selector("#error:not([hidden]) .err-code", timeout=SCORE_TIMEOUT_MS)
    return {
        "code": page.inner_text("#error .err-code"),
        "message": page.inner_text("#error .err-message"),
        "text": page.inner_text("#error"),
    }


def _real_errors(page: Any) -> list[str]:
    # Chromium logs every 4xx fetch as a console error; those are the point of the error tests.
    return [e for e in page.console_errors if "Failed to load resource" not in e]


def _api_error(base_url: str, video: Path, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """The API's own answer for the same upload, to hold the page's wording to."""
    r = httpx.post(
        f"{base_url}/v1/score",
        files={"video": (video.name, video.read_bytes())},
        data={"prompt": PROMPT, "options": json.dumps({"return_frames": True})},
        headers=headers or {},
        timeout=120,
    )
    assert r.status_code >= 400, r.text
    return {"status": r.status_code, **r.json()["error"]}


def test_page_scores_a_real_video(live_server: str, sample_videos: dict[str, Path], page: Any, artifacts_dir: Path) -> None:
    video = sample_videos["real_bikes"]
    requested = _open(page, live_server)

    # Accessible basics: every control has a label; results and errors are announced.
    unlabeled = page.evaluate(
        "[...document.querySelectorAll('input, textarea, select')].filter(e => !e.labels || !e.labels.length).map(e => e.id)"
    )
    assert unlabeled == []
    assert page.get_attribute("#results", "aria-live") == "polite"
    assert page.get_attribute("#status", "aria-live") == "polite"
    assert page.get_attribute("#error", "role") == "alert"

    _choose(page, video, PROMPT)
    # The chosen file plays from an object URL before anything is uploaded.
    page.wait_for_function("document.getElementById('player').readyState >= 1", timeout=30_000)
    assert page.get_attribute("#player", "src").startswith("blob:")

    _press_score_by_keyboard(page)
    page.wait_for_selector("#dims [data-dimension]", timeout=SCORE_TIMEOUT_MS)

    cards = page.query_selector_all("#dims [data-dimension]")
    assert [c.get_attribute("data-dimension") for c in cards] == list(DIMENSIONS)
    shown: dict[str, dict[str, Any]] = {}
    for card in cards:
        name = card.get_attribute("data-dimension")
        label = card.query_selector(".badge").inner_text()
        assert label in {"Good", "Normal", "Bad"}
        probs = {dd.get_attribute("data-label"): float(dd.inner_text().rstrip("%")) for dd in card.query_selector_all("dd.p")}
        assert set(probs) == {"Good", "Normal", "Bad"}
        assert abs(sum(probs.values()) - 100.0) < 0.5
        widths = card.eval_on_selector_all(".bar span", "els => els.map(e => parseFloat(e.style.width))")
        assert widths == pytest.approx([probs[k] for k in ("Good", "Normal", "Bad")], abs=0.06)
        rationale = card.query_selector(".rationale").text_content()  # raw text: model output as sent
        assert rationale.strip()
        shown[name] = {"label": label, "score": card.query_selector(".score").inner_text(), "rationale": rationale, "probs": probs}

    # The page shows what the API says: the same request, straight to the API (greedy, so deterministic).
    r = httpx.post(
        f"{live_server}/v1/score",
        files={"video": (video.name, video.read_bytes())},
        data={"prompt": PROMPT, "options": json.dumps({"return_frames": True})},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    api = r.json()
    for name in DIMENSIONS:
        d = api["dimensions"][name]
        assert shown[name]["label"] == d["label"]
        assert shown[name]["score"] == f"{d['score']:.2f}"
        assert shown[name]["rationale"] == d["rationale"]
        assert shown[name]["probs"]["Good"] == pytest.approx(100 * d["probabilities"]["Good"], abs=0.051)
    assert page.inner_text("#reward") == f"{api['reward']:.3f}"
    assert page.inner_text("#expected") == f"{api['expected_reward']:.3f}"

    # The frames the critic saw: as many thumbnails as sampled frames, each a decoded image.
    assert len(api["frames"]) == api["num_frames"] == 8
    sizes = page.eval_on_selector_all("#frames-list img", "els => els.map(e => [e.complete, e.naturalWidth])")
    assert len(sizes) == 8 and all(done and w > 0 for done, w in sizes)
    assert "8 frames" in page.inner_text("#meta")
    assert "Scored bikes.mp4" in page.inner_text("#status")

    # Self-contained: every request went to the service itself (or blob:/data: URLs), none elsewhere.
    origin = urlsplit(live_server).netloc
    foreign = [u for u in requested if not u.startswith(("blob:", "data:")) and urlsplit(u).netloc != origin]
    assert foreign == []
    assert _real_errors(page) == []
    page.screenshot(path=str(artifacts_dir / "page_scored.png"), full_page=True)

    # Phone width: one column, nothing wider than the screen.
    page.set_viewport_size({"width": 390, "height": 844})
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0
    columns = page.evaluate("getComputedStyle(document.getElementById('dims')).gridTemplateColumns.split(' ').length")
    assert columns == 1
    page.screenshot(path=str(artifacts_dir / "page_phone.png"), full_page=True)


def test_page_shows_the_api_error_for_a_broken_file(live_server: str, page: Any, tmp_path: Path, artifacts_dir: Path) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"not really a video " * 200)
    expected = _api_error(live_server, broken)
    assert expected["status"] == 422

    _open(page, live_server)
    _drop(page, broken)  # this time the file arrives by drag and drop
    assert page.evaluate("document.getElementById('video').files[0].name") == "broken.mp4"
    page.fill("#prompt", PROMPT)
    page.click("#score")
    shown = _wait_for_error(page)
    assert shown["code"] == expected["code"]
    assert shown["message"] == expected["message"]
    assert "HTTP 422" in shown["text"]
    assert page.is_hidden("#dims")  # no scores next to an error
    assert page.inner_text("#status") == "Scoring failed."
    assert _real_errors(page) == []
    page.screenshot(path=str(artifacts_dir / "page_broken_file.png"), full_page=True)


def test_page_without_a_key_shows_401_then_scores_with_one(
    serve_app: Any, sample_videos: dict[str, Path], page: Any, artifacts_dir: Path
) -> None:
    video = sample_videos["h264_mp4"]
    key = "e2e-page-key"
    with serve_app(api_keys=key) as url:
        expected = _api_error(url, video)
        assert expected["status"] == 401

        _open(page, url)  # the page itself is public: it holds no data
        _choose(page, video, "a red square moving")
        page.click("#score")
        shown = _wait_for_error(page)
        assert (shown["code"], shown["message"]) == (expected["code"], expected["message"])
        assert "HTTP 401" in shown["text"]
        page.screenshot(path=str(artifacts_dir / "page_401.png"), full_page=True)

        # A wrong key: the API's words again.
        page.fill("#apikey", "not-the-key")
        page.click("#score")
        wrong = _api_error(url, video, {"Authorization": "Bearer not-the-key"})
        page.wait_for_function(
            "m => document.querySelector('#error .err-message')?.textContent === m", arg=wrong["message"], timeout=SCORE_TIMEOUT_MS
        )

        # The right key scores, and lives in sessionStorage only.
        page.fill("#apikey", key)
        page.click("#score")
        page.wait_for_selector("#dims [data-dimension]", timeout=SCORE_TIMEOUT_MS)
        assert page.is_hidden("#error")
        assert len(page.query_selector_all("#dims [data-dimension]")) == 3
        assert page.evaluate("sessionStorage.getItem('lift.apiKey')") == key
        assert page.evaluate("Object.keys(localStorage).length") == 0
        assert re.fullmatch(r"\d\.\d{3}", page.inner_text("#reward"))

        # A reload in the same tab keeps the key for this tab (and only for it).
        page.reload()
        assert page.input_value("#apikey") == key
        assert _real_errors(page) == []
