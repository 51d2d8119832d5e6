"""stdout is an interface: a command whose result is JSON prints only that there; logs go to stderr.

vLLM logs to stdout unless told otherwise, and its engine processes (and their C++ code) inherit the
process's file descriptor 1, so setting Python's logging is not enough: while an engine runs in-process, fd 1
itself points at stderr, and the result is written after it is restored.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

# Read by vLLM when it is first imported (and by its child processes, which inherit the environment).
_ENGINE_LOG_ENV = {"VLLM_LOGGING_STREAM": "ext://sys.stderr"}


def route_engine_logs(verbose: bool = False) -> None:
    """Engine logs to stderr, at WARNING unless verbose; a user's own VLLM_LOGGING_* settings win."""
    for key, value in _ENGINE_LOG_ENV.items():
        os.environ.setdefault(key, value)
    if verbose:
        os.environ["VLLM_LOGGING_LEVEL"] = "INFO"
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "info")
    else:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Everything written to fd 1 inside the block (this process, its children, C code) lands on stderr."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
