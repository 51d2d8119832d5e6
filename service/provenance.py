"""What produced a score: the critic's checkpoint, the rubric, the frames rule, the engine, sampling, the server.

Everything but sampling is fixed for a started critic, so `CriticIdentity` is built once (the checkpoint digest
reads a few KiB per weights file, never the weights whole); each response then only adds its frame count and
sampling options. Two labels files are comparable when their critic and rubric digests match.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from service.protocol import (
    CriticProvenance,
    EngineProvenance,
    FramesProvenance,
    Provenance,
    RubricProvenance,
    SamplingProvenance,
    ServerProvenance,
)
from service.rubric import DIMENSIONS, LABEL_SCORES

PACKAGE = "lift-reward"
WHOLE_FILE_BYTES = 1 << 20  # configs, the weights index, tokenizer files and templates: hashed whole
# Larger files (weights): name, size and evenly spaced blocks, one per SAMPLE_STRIDE_BYTES (16 to 4096 of them):
# any changed run of bytes longer than the spacing (4 MiB for files of 64 MiB to 16 GiB) is seen. A 26 GB critic
# reads ~26 MB, from the page cache: the engine has just read the weights.
SAMPLE_BLOCK_BYTES = 4096
SAMPLE_STRIDE_BYTES = 4 << 20
MIN_SAMPLE_BLOCKS, MAX_SAMPLE_BLOCKS = 16, 4096
MAX_FILES = 10_000  # a folder with more than this is not a checkpoint; hash the first ones in name order


@lru_cache(maxsize=1)
def server_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PACKAGE)
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


@lru_cache(maxsize=1)
def rubric_digest() -> str:
    """sha256 of the questions (verbatim, in order) and the label -> score map."""
    data = {"dimensions": [[d.name, d.question] for d in DIMENSIONS], "labels": LABEL_SCORES}
    return "sha256:" + hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def spec_digest(spec: Any) -> str:
    """sha256 of what a critic asks and how it reads the answers (service.critics): its queries' texts, channels
    and decoding, its frame and pixel rules, its reward rule's description."""
    data = {"name": spec.name, "media": repr(spec.media), "reward": spec.reward_doc,
            "queries": [[q.system, q.user, list(q.dimensions), q.media_first, repr(q.decoding),
                         type(q.channel).__name__, _channel_data(q.channel)] for q in spec.queries]}
    return "sha256:" + hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _channel_data(channel: Any) -> str:
    # a parser is code: its qualified name stands for it
    fields = {k: (getattr(v, "__qualname__", None) or repr(v)) for k, v in vars(channel).items()}
    return json.dumps(fields, sort_keys=True)


def checkpoint_digest(model_dir: str | os.PathLike[str]) -> str | None:
    """sha256 over a checkpoint folder, cheaply: every file's relative path and size; small files (config.json,
    model.safetensors.index.json, tokenizer, chat template) whole; of each large file, evenly spaced blocks
    (`sample_offsets`, first and last included). Two fine-tunes of one architecture have the same file list and
    sizes, so the sampled blocks are what tells them apart; a change confined to bytes no block covers is not
    seen (a full hash would read every weight: minutes for a 13B critic). None when `model_dir` is not a folder."""
    root = Path(model_dir)
    if not root.is_dir():
        return None
    files: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # .cache, .git: not the checkpoint
        for name in filenames:
            if not name.startswith("."):
                path = Path(dirpath) / name
                files.append((path.relative_to(root).as_posix(), path))
    files.sort()
    h = hashlib.sha256()
    for rel, path in files[:MAX_FILES]:
        try:
            size = path.stat().st_size
            h.update(f"{rel}\0{size}\0".encode())
            with path.open("rb") as f:
                if size <= WHOLE_FILE_BYTES:
                    h.update(f.read())
                    continue
                for offset in sample_offsets(size):
                    f.seek(offset)
                    h.update(f.read(SAMPLE_BLOCK_BYTES))
        except OSError:  # a dangling link or unreadable file: its name still counts
            h.update(f"{rel}\0unreadable\0".encode())
    return "sha256:" + h.hexdigest()


def sample_offsets(size: int) -> list[int]:
    """Where the blocks of a large file are read: evenly spaced from its start to its last block."""
    n = min(MAX_SAMPLE_BLOCKS, max(MIN_SAMPLE_BLOCKS, size // SAMPLE_STRIDE_BYTES))
    last = size - SAMPLE_BLOCK_BYTES
    return [last * i // (n - 1) for i in range(n)]


@dataclass(frozen=True)
class CriticIdentity:
    """The parts of provenance a started critic fixes; `provenance()` adds a request's frames and sampling."""

    critic: CriticProvenance
    rubric: RubricProvenance
    engine: EngineProvenance
    server: ServerProvenance
    short_clip: str

    frame_rule: str = "linspace"

    @classmethod
    def build(cls, *, name: str, family: str, model_dir: str | os.PathLike[str], engine: str, dtype: str,
              short_clip: str, spec: Any = None) -> "CriticIdentity":
        lift = spec is None or spec.name == "lift"
        return cls(
            critic=CriticProvenance(name=name, family=family, digest=checkpoint_digest(model_dir),
                                    critic=None if lift else spec.name, source=None if lift else spec.source),
            rubric=RubricProvenance(digest=rubric_digest() if lift else spec_digest(spec)),
            engine=EngineProvenance(name=engine, dtype=dtype),
            server=ServerProvenance(version=server_version()),
            short_clip=short_clip,
            frame_rule="linspace" if lift else spec.media.frames.kind.replace("count", "linspace"),
        )

    def provenance(self, *, num_frames: int, temperature: float, seed: int | None, max_tokens: int, scoring: str,
                   rationale: bool) -> Provenance:
        return Provenance(
            critic=self.critic, rubric=self.rubric, engine=self.engine, server=self.server,
            frames=FramesProvenance(count=num_frames, short_clip=self.short_clip, rule=self.frame_rule),
            sampling=SamplingProvenance(temperature=temperature, seed=seed, max_tokens=max_tokens,
                                        scoring=scoring, rationale=rationale),  # type: ignore[arg-type]
        )
