"""The labels file as an append-only journal: one JSON line per item id, written as results arrive.

Why it loses nothing and duplicates nothing:
- each record is one `write()` of a full line followed by `flush()`, so a killed process (SIGKILL)
  leaves every finished line in the OS and at most one torn last line; `fsync` runs every
  `fsync_every` lines / `fsync_interval_s` seconds and at close, for power loss;
- on open, a torn last line (no trailing newline, or not JSON) is cut off and its item redone;
- a restart skips every id already in the file, and only this process appends while it runs;
- redoing errors (`--retry-errors`) first rewrites the file without them (temp file, fsync, rename),
  so a redone id still has exactly one line;
- one writer at a time: `lock()` takes an exclusive `flock` on `<journal>.lock` (a file of its own, since
  a rewrite renames the journal away from under a lock), so a second run on the same file (two shards
  given one --out, a run started twice) stops with a clear error instead of interleaving lines.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from service.errors import InvalidRequest

OK, ERROR = "ok", "error"


def iter_records(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a repaired journal (complete lines only)."""
    if not path.exists():
        return
    with path.open("r", encoding="utf-8") as f:
        for line in f:
            if line.endswith("\n") and line.strip():
                yield json.loads(line)


class Journal:
    def __init__(self, path: str | Path, *, fsync_every: int = 64, fsync_interval_s: float = 2.0) -> None:
        self.path = Path(path)
        self.fsync_every = fsync_every
        self.fsync_interval_s = fsync_interval_s
        self.status: dict[str, str] = {}  # id -> OK | ERROR, as on disk
        self.repaired_bytes = 0  # size of the torn tail cut off at open
        self._f: Any = None
        self._lock_fd: int | None = None
        self._unsynced = 0
        self._last_sync = time.monotonic()

    # ---- one writer ---------------------------------------------------------------------------
    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def lock(self) -> None:
        """Exclusive lock for this process's run; raises InvalidRequest if another process holds it."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise InvalidRequest(
                    f"another lift label is writing {self.path} (it holds {self.lock_path}); wait for it, or give "
                    "this run (shard) its own --out", param="out",
                ) from None
            # A filesystem without locks (some network mounts): run unguarded rather than not at all.
            print(f"lift label: warning: cannot lock {self.lock_path} ({exc.strerror}); make sure no other run "
                  "writes this file", file=sys.stderr)
            return
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    # ---- opening ------------------------------------------------------------------------------
    def load(self) -> dict[str, str]:
        """Read what is done, cutting off a torn last line. Safe to call on a missing file."""
        self.status = {}
        if not self.path.exists():
            return self.status
        self._repair_tail()
        duplicated = False
        with self.path.open("rb") as f:
            for n, raw in enumerate(f, start=1):
                try:
                    rec = json.loads(raw)
                    ident, st = str(rec["id"]), rec["status"]
                except (ValueError, KeyError, TypeError):
                    raise InvalidRequest(
                        f"{self.path}:{n} is not a labels record; the file is not a labels journal or was "
                        "edited by hand (fix or remove that line)", param="out",
                    ) from None
                if ident in self.status:
                    duplicated = True
                # An ok record is final; an error may be superseded by an ok one.
                if self.status.get(ident) != OK:
                    self.status[ident] = st
        if duplicated:
            # Not something this code writes; a concatenated file, say. Keep one line per id.
            self._rewrite(lambda rec: True)
        return self.status

    def _repair_tail(self) -> None:
        size = self.path.stat().st_size
        if size == 0:
            return
        with self.path.open("r+b") as f:
            # Find the last newline by reading backwards in blocks (the file may be large).
            end = size
            keep = 0
            block = 1 << 16
            while end > 0:
                start = max(0, end - block)
                f.seek(start)
                chunk = f.read(end - start)
                i = chunk.rfind(b"\n")
                if i >= 0:
                    keep = start + i + 1
                    break
                end = start
            # The last complete line itself could be garbage only if something else wrote it.
            if keep < size:
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())
                self.repaired_bytes = size - keep

    def _rewrite(self, keep: Any) -> int:
        """Rewrite the journal with one line per id (ok wins over error), filtered by `keep`."""
        best: dict[str, dict[str, Any]] = {}
        order: list[str] = []
        for rec in iter_records(self.path):
            ident = str(rec["id"])
            if ident not in best:
                order.append(ident)
                best[ident] = rec
            elif best[ident]["status"] != OK:
                best[ident] = rec
        tmp = self.path.with_name(self.path.name + ".tmp")
        dropped = 0
        with tmp.open("w", encoding="utf-8") as f:
            for ident in order:
                if keep(best[ident]):
                    f.write(json.dumps(best[ident], ensure_ascii=False) + "\n")
                else:
                    dropped += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
        self.status = {i: best[i]["status"] for i in order if keep(best[i])}
        return dropped

    def drop_errors(self) -> int:
        """Remove error records so their items are redone; returns how many were removed."""
        if not self.path.exists() or ERROR not in self.status.values():
            return 0
        return self._rewrite(lambda rec: rec.get("status") == OK)

    # ---- appending ----------------------------------------------------------------------------
    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = self.path.open("a", encoding="utf-8")

    def append(self, record: dict[str, Any]) -> None:
        ident = str(record["id"])
        if self.status.get(ident) == OK:
            return  # never a second line for a finished id
        line = json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n"
        self._f.write(line)
        self._f.flush()  # to the OS now: survives the process being killed
        self.status[ident] = record["status"]
        self._unsynced += 1
        if self._unsynced >= self.fsync_every or time.monotonic() - self._last_sync >= self.fsync_interval_s:
            self.sync()

    def sync(self) -> None:
        if self._f is not None and self._unsynced:
            os.fsync(self._f.fileno())
            self._unsynced = 0
            self._last_sync = time.monotonic()

    def close(self) -> None:
        if self._f is not None:
            self.sync()
            self._f.close()
            self._f = None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
