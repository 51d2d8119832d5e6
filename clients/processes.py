"""Process hygiene for commands and benchmarks: stop what you started however you are stopped.

- `exit_on_sigterm()`: SIGTERM unwinds the program like Ctrl-C does (finally blocks and context managers run,
  so servers and engines are stopped) instead of ending it on the spot.
- `die_with_parent`: a `preexec_fn` for children that must not outlive their parent: the kernel sends them
  SIGTERM when the parent dies, SIGKILL included (so a `lift serve` a benchmark started drains and stops its
  engine). Linux only; elsewhere it does nothing.
"""

from __future__ import annotations

import ctypes
import signal
import sys
from types import FrameType

PR_SET_PDEATHSIG = 1
SIGTERM_EXIT_CODE = 128 + signal.SIGTERM


class Terminated(SystemExit):
    """Raised in the main thread when the process gets SIGTERM."""

    def __init__(self) -> None:
        super().__init__(SIGTERM_EXIT_CODE)


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def exit_on_sigterm() -> None:
    """From now on SIGTERM raises `Terminated` in the main thread (a SystemExit with code 143)."""
    signal.signal(signal.SIGTERM, _raise_terminated)


def die_with_parent() -> None:
    """`subprocess.Popen(..., preexec_fn=die_with_parent)`: the child gets SIGTERM when this process dies.
    (The kernel ties it to the thread that starts the child: start children from a thread that lives as long
    as they should, e.g. the main thread.)"""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
