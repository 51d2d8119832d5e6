"""`--shard K/N`: which items of a manifest one labeling process owns.

An item belongs to shard `sha256(id) mod N` (the first 8 bytes of the digest, big-endian). It depends on the
item id alone, never on line numbers, Python's salted `hash()`, the machine or N processes agreeing on
anything: every pod of a Kubernetes Indexed Job computes the same split from the same manifest, lines may
be added or reordered without moving an id to another shard, and a restarted shard finds its own ids
again in its own journal. K is 0-based, like `$JOB_COMPLETION_INDEX`.
"""

from __future__ import annotations

import argparse
import hashlib
import re
from dataclasses import dataclass

from service.errors import InvalidRequest

_SPEC = re.compile(r"^\s*(-?\d+)\s*/\s*(-?\d+)\s*$")
MAX_SHARDS = 100_000


def shard_of(item_id: str, count: int) -> int:
    """The shard (0..count-1) that owns `item_id`."""
    digest = hashlib.sha256(item_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


@dataclass(frozen=True)
class Shard:
    index: int  # K, 0-based
    count: int  # N

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS:
            raise InvalidRequest(f"shard count must be 1..{MAX_SHARDS}, got {self.count}", param="shard")
        if not 0 <= self.index < self.count:
            raise InvalidRequest(
                f"shard index must be 0..{self.count - 1} for {self.count} shards (0-based, like "
                f"$JOB_COMPLETION_INDEX), got {self.index}", param="shard",
            )

    @classmethod
    def parse(cls, spec: str) -> "Shard":
        m = _SPEC.match(spec or "")
        if not m:
            raise InvalidRequest(f"--shard wants K/N (shard K of N, K from 0 to N-1), got {spec!r}", param="shard")
        return cls(int(m.group(1)), int(m.group(2)))

    def owns(self, item_id: str) -> bool:
        return shard_of(item_id, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_arg(spec: str) -> Shard:
    """argparse `type=`: a bad K/N is a usage error (exit 2) naming what is wrong."""
    try:
        return Shard.parse(spec)
    except InvalidRequest as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
