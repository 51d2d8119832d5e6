"""An engine's processes live only as long as the process that started them.

vLLM runs a started engine in child processes (`VLLM::EngineCore`, which starts `VLLM::Worker`). When the
process that owns the engine dies without calling `shutdown()` (SIGKILL from a user, the OOM killer or a node
agent), vLLM 0.32 leaves both alive, reparented to init, holding their memory (on a GPU host: the GPU's), and the
orphaned EngineCore ignores SIGTERM. vLLM's own death pipe covers only Worker <- EngineCore.

The fix lives where vLLM lets us run code in every one of its processes: the `vllm.general_plugins` entry
point (`arm`, registered in pyproject.toml). In an engine process started by one of our engines (the owner sets
`LIFT_ENGINE_LIFELINE=1` in its environment before vLLM spawns anything; spawned children inherit it), a daemon
thread watches the parent that `multiprocessing` recorded at spawn time and SIGKILLs its own process as soon as
that parent is gone: the owner's death takes the EngineCore within a poll interval, the EngineCore's takes its
Workers. A polled parent pid, not `PR_SET_PDEATHSIG`: the latter fires when the *thread* that forked the child
ends, and our engines are built from worker threads (`asyncio.to_thread`) that may end while the owner lives.

Also here: finding engine processes on this host that an earlier run left behind (`leftover_engine_processes`),
for `lift serve`'s start-up warning and the test suite's leak check. Linux /proc only; elsewhere, nothing found.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

LIFELINE_ENV = "LIFT_ENGINE_LIFELINE"  # "1": engine processes die with their parent; "0": vLLM's own behaviour
POLL_S = 0.5
# vLLM's process titles: f"{VLLM_PROCESS_NAME_PREFIX}::{name}" (prefix "VLLM" unless set), e.g. VLLM::EngineCore,
# VLLM::EngineCore_DP0, VLLM::Worker, VLLM::Worker_TP1; the front end (ours, or VLLM::APIServer) is not one.
ENGINE_TITLE = re.compile(r"^\S*::(EngineCore|Worker|DPCoordinator)")
_armed = False


def mark_engine_owner() -> None:
    """Called by the process that is about to start a vLLM engine: its engine processes will die with it
    (unless the user set LIFT_ENGINE_LIFELINE=0 to keep vLLM's own behaviour)."""
    os.environ.setdefault(LIFELINE_ENV, "1")


def arm() -> None:
    """vLLM general-plugin entry point: in an engine child process of ours, die when its parent dies.

    vLLM calls it in every process it starts and possibly several times in one: cheap and idempotent. In the
    owner's own process (not started by multiprocessing) it does nothing."""
    global _armed
    parent = multiprocessing.parent_process()
    if _armed or parent is None or os.environ.get(LIFELINE_ENV) != "1" or parent.pid is None:
        return
    _armed = True
    parent_pid = int(parent.pid)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="lift-lifeline", daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    # Reparenting changes getppid(): to init, or to the nearest subreaper. Either way the owner is gone.
    while os.getppid() == parent_pid:
        time.sleep(POLL_S)
    os.kill(os.getpid(), signal.SIGKILL)  # SIGTERM is not enough: an orphaned EngineCore waits forever for work


@dataclass(frozen=True)
class EngineProcess:
    pid: int
    ppid: int
    title: str
    rss_bytes: int

    def describe(self) -> str:
        return f"pid {self.pid} ({self.title}, {self.rss_bytes / 2**30:.1f} GB)"


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:  # the process ended while we looked, or is not ours to read
        return ""


def _status_fields(pid: int) -> dict[str, str]:
    fields = {}
    for line in _read(Path(f"/proc/{pid}/status")).splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _title(pid: int) -> str:
    cmdline = _read(Path(f"/proc/{pid}/cmdline")).replace("\x00", " ").strip()
    return cmdline or _read(Path(f"/proc/{pid}/comm")).strip()


def _process(pid: int) -> EngineProcess | None:
    title = _title(pid)
    if not title:
        return None
    status = _status_fields(pid)
    try:
        ppid = int(status.get("PPid", "0"))
        rss_kb = int(status.get("VmRSS", "0 kB").split()[0])
    except ValueError:
        return None
    return EngineProcess(pid, ppid, title, rss_kb * 1024)


def engine_processes() -> list[EngineProcess]:
    """Every live vLLM engine process on this host (by its process title), ours or not."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        pid = int(entry.name)
        if not ENGINE_TITLE.match(_title(pid)):
            continue
        if (proc := _process(pid)) is not None and ENGINE_TITLE.match(proc.title):
            found.append(proc)
    return sorted(found, key=lambda p: p.pid)


def _owner_alive(proc: EngineProcess, by_pid: dict[int, EngineProcess]) -> bool:
    """Walk up through engine processes to the first other process: the one that started the engine. It is
    gone when the chain ends at init (pid 1) or at a process that is not a Python program (a subreaper such
    as `systemd --user` or tini adopts orphans)."""
    seen = set()
    while proc.ppid in by_pid and proc.ppid not in seen:
        seen.add(proc.ppid)
        proc = by_pid[proc.ppid]
    owner = proc.ppid
    if owner <= 1:
        return False
    exe = os.path.basename(os.path.realpath(f"/proc/{owner}/exe")) if os.path.exists(f"/proc/{owner}/exe") else ""
    return exe.startswith("python") or "lift" in _title(owner) or "vllm" in _title(owner)


def leftover_engine_processes() -> list[EngineProcess]:
    """Engine processes whose owner is gone: left behind by a run that died (an older version of this
    service, or a vLLM started without our lifeline)."""
    procs = engine_processes()
    by_pid = {p.pid: p for p in procs}
    return [p for p in procs if not _owner_alive(p, by_pid)]


def describe_leftovers(procs: list[EngineProcess]) -> str:
    total = sum(p.rss_bytes for p in procs) / 2**30
    return (f"{len(procs)} vLLM engine process(es) of an earlier run are still alive on this host, holding "
            f"{total:.1f} GB: {', '.join(p.describe() for p in procs)}; they are not this server's, so it leaves "
            f"them alone (if they are yours: kill -9 {' '.join(str(p.pid) for p in procs)})")


def is_descendant(pid: int, ancestor: int) -> bool:
    """Whether `ancestor` is `pid`'s parent, grandparent, ... (live /proc lookup)."""
    seen = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        try:
            pid = int(_status_fields(pid).get("PPid", "0"))
        except ValueError:
            return False
        if pid == ancestor:
            return True
    return False
