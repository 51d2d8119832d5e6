"""A reward head read on hidden states (service.critics.spec.HeadChannel): the engine returns the final hidden
state at each reward token's position (`engine.pool`); the head is applied here, in float32, never in the engine.

The head's weights sit beside the checkpoint (`HeadChannel.head_file`, written by the critic's converter, e.g.
`lift convert-videoalign`): one tensor `weight`, (outputs, hidden_size), as the release's nn.Linear holds it.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from service.critics.spec import CriticSpec, HeadChannel, Query
from service.errors import InvalidRequest, ModelLoadError
from service.families.base import ChatPrompt
from service.media import VideoFrames
from service.protocol import DimensionScore

HEAD_TENSOR = "weight"


def head_path(model_dir: str | Path, channel: HeadChannel) -> Path:
    return Path(model_dir) / channel.head_file


def check_head(model_dir: str | Path, spec: CriticSpec) -> None:
    """Before any engine starts: every head the spec reads is beside the checkpoint, with the outputs it reads."""
    for query in spec.queries:
        if isinstance(query.channel, HeadChannel):
            weight = load_head(str(head_path(model_dir, query.channel)))
            top = max(query.channel.outputs.values())
            if weight.shape[0] <= top:
                raise ModelLoadError(f"{spec.name}: {query.channel.head_file} has {weight.shape[0]} outputs; the "
                                     f"critic reads output {top}")


@lru_cache(maxsize=8)
def load_head(path: str) -> np.ndarray:
    """The head's weight, float32, (outputs, hidden_size)."""
    from safetensors.numpy import load_file

    file = Path(path)
    if not file.is_file():
        raise ModelLoadError(f"{file.parent} has no {file.name}: the reward head this critic reads (convert the "
                             f"release with its converter, e.g. lift convert-videoalign)")
    tensors = load_file(str(file))
    if HEAD_TENSOR not in tensors or tensors[HEAD_TENSOR].ndim != 2:
        raise ModelLoadError(f"{file} holds no 2-D {HEAD_TENSOR!r} tensor (outputs, hidden_size)")
    weight = np.ascontiguousarray(tensors[HEAD_TENSOR], dtype=np.float32)
    weight.setflags(write=False)
    return weight


def reward_token_ids(family: Any, channel: HeadChannel, dimensions: tuple[str, ...], critic: str) -> dict[str, int]:
    """Each dimension's reward token as one id of the checkpoint's tokenizer."""
    ids: dict[str, int] = {}
    for d in dimensions:
        got = family.token_ids(channel.tokens[d])
        if len(got) != 1:
            raise ModelLoadError(f"{critic}: the checkpoint's tokenizer has no {channel.tokens[d]} token (it reads "
                                 f"as {len(got)} ids): not a converted {critic} checkpoint")
        ids[d] = int(got[0])
    return ids


def apply_head(weight: np.ndarray, output: int, hidden: np.ndarray) -> float:
    """One output of a bias-free Linear on one hidden state, float32."""
    if hidden.shape[-1] != weight.shape[1]:
        raise ModelLoadError(f"the reward head takes hidden size {weight.shape[1]}; the model's is {hidden.shape[-1]}")
    return float(np.dot(weight[output], hidden.astype(np.float32, copy=False)))


async def read_head(spec: CriticSpec, query: Query, channel: HeadChannel, engine: Any, chat: ChatPrompt,
                    video: VideoFrames) -> dict[str, DimensionScore]:
    """One forward (`engine.pool`) for the query; per dimension the head's output at its token, as a value on the
    critic's scale (raw or normalised, as the channel says) and a [0, 1] score (sigmoid of the value)."""
    for d in query.dimensions:  # the prompt's own reward tokens only: a caption carrying one would move the read
        if chat.user_text.count(channel.tokens[d]) != 1:
            raise InvalidRequest(f"the prompt must not contain {channel.tokens[d]}: {spec.name} reads its head there",
                                 param="prompt")
    ids = reward_token_ids(engine.family, channel, query.dimensions, spec.name)
    weight = load_head(str(head_path(engine.model_dir, channel)))
    pooled = await engine.pool(chat, video, sorted(set(ids.values())))
    out: dict[str, DimensionScore] = {}
    for d in query.dimensions:
        raw = apply_head(weight, channel.outputs[d], pooled.hidden[ids[d]])
        value = channel.value(d, raw)
        out[d] = DimensionScore(label=None, score=channel.score(value), expected_score=None, probabilities=None,
                                rationale=None, value=value)
    return out
