"""The wire format: pydantic models shared by the HTTP layer, the Python API and the clients.

Pure pydantic (no torch, no vllm): `clients/` imports this module.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints, model_validator

Label = Literal["Good", "Normal", "Bad"]
DimensionName = Literal["semantic_consistency", "motion_smoothness", "video_fidelity"]

MAX_PROMPT_CHARS = 4000


class ScoreOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_frames: int | None = Field(None, ge=1, le=64, description="Frames sampled from the video (default 8, as LiFT).")
    temperature: float | None = Field(
        None, ge=0.0, le=2.0, description="0 = greedy (default). >0 samples the label and reason."
    )
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="Seed for sampling; same seed, same answer.")
    max_reason_tokens: int | None = Field(None, ge=1, le=512, description="Upper bound on the rationale's tokens.")
    return_frames: bool = Field(False, description="Return small JPEG thumbnails of the sampled frames (base64).")
    rationale: bool = Field(True, description="Generate each dimension's reason. false = reward-only: answered "
                            "after the label round alone (labels, probabilities, scores and rewards are the same; "
                            "`rationale` is null), what a training loop needs, several times faster.")
    scoring: Literal["label", "lift"] | None = Field(
        None, description="How each label is read. 'label' (the service's default unless LIFT_SCORING says "
        "otherwise): the most probable label (sampled when temperature > 0), then a reason. 'lift': exactly as "
        "LiFT's scripts did: the whole answer sampled at temperature 0.2 (unless given) with up to 512 tokens "
        "(unless max_reason_tokens), then 'Normal' anywhere -> Normal, else 'Bad' anywhere -> Bad, else Good.")

    @model_validator(mode="after")
    def _lift_rule_reads_the_answer(self) -> "ScoreOptions":
        if self.scoring == "lift" and not self.rationale:
            raise ValueError("scoring 'lift' reads LiFT's label from the generated answer: it needs rationale true")
        return self


class VideoSource(BaseModel):
    """Exactly one of `path` (under the server's media root), `url` (http/https), `base64` (a video file), or
    frames: `npy` (base64 of a uint8 `.npy` array (T, H, W, 3)) or `frames` (base64 PNG/JPEG images, one per
    frame). `fps` goes with frames (default 8)."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(None, max_length=4096, description="Path on the server, under LIFT_MEDIA_ROOT.")
    url: str | None = Field(None, max_length=8192, description="http(s) URL the server downloads.")
    base64: str | None = Field(None, description="The video file's bytes, base64-encoded.")
    npy: str | None = Field(None, description="Frames as a uint8 .npy array (T, H, W, 3), base64-encoded (no pickle).")
    frames: list[str] | None = Field(None, min_length=1, max_length=100_000,
                                     description="Frames as base64 PNG or JPEG images, in order.")
    fps: float | None = Field(None, gt=0, le=240, description="Frame rate of `npy` / `frames` (default 8).")

    @model_validator(mode="after")
    def _exactly_one(self) -> "VideoSource":
        given = [k for k in ("path", "url", "base64", "npy", "frames") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("video needs exactly one of 'path', 'url', 'base64', 'npy' or 'frames'")
        if self.fps is not None and given[0] not in ("npy", "frames"):
            raise ValueError("'fps' goes with 'npy' or 'frames' (a video file carries its own)")
        return self


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(..., min_length=1, max_length=MAX_PROMPT_CHARS, description="The caption the video was generated from.")
    video: VideoSource
    options: ScoreOptions = Field(default_factory=ScoreOptions)


class LabelProbabilities(BaseModel):
    Good: float
    Normal: float
    Bad: float


class DimensionScore(BaseModel):
    label: Label
    score: float = Field(..., description="LiFT's score of the label: Good 0.9, Normal 0.2, Bad 0.05.")
    expected_score: float = Field(..., description="Sum over labels of p(label) x score(label).")
    probabilities: LabelProbabilities
    rationale: str | None = Field(..., description="The critic's reason; null when options.rationale was false.")


class CriticProvenance(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str = Field(..., description="The served model name (`lift serve --model-name`, else the folder's name).")
    family: str = Field(..., description="The critic family (qwen2_vl, vila).")
    digest: str | None = Field(None, description="sha256 of the checkpoint folder: small files (config.json, the "
                               "weights index, tokenizer, templates) whole, every file's name and size, and sampled "
                               "blocks of each large file (weights are not read whole). null: not a local folder.")


class RubricProvenance(BaseModel):
    model_config = ConfigDict(frozen=True)

    digest: str = Field(..., description="sha256 of the dimensions' questions and the labels' scores "
                        "(service.rubric).")


class FramesProvenance(BaseModel):
    model_config = ConfigDict(frozen=True)

    count: int = Field(..., description="Frames sampled from the video (options.num_frames or the default).")
    rule: Literal["linspace"] = Field("linspace", description="Which frames: linspace(0, total-1, count), "
                                      "rounded down, as LiFT.")
    short_clip: str = Field(..., description="A clip shorter than `count`: 'repeat' (the sampled frames, repeats "
                            "included) or 'distinct' (the frames it has, once each; LiFT's VILA loader).")


class EngineProvenance(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str = Field(..., description="vllm or transformers.")
    dtype: str = Field(..., description="The dtype the engine runs the critic in.")


class SamplingProvenance(BaseModel):
    model_config = ConfigDict(frozen=True)

    temperature: float = Field(..., description="0 = greedy.")
    seed: int | None = Field(None, description="options.seed; null: none given.")
    max_tokens: int = Field(..., description="Upper bound on the generated reason (or, scoring 'lift', answer).")
    scoring: Literal["label", "lift"] = Field(..., description="options.scoring as applied.")
    rationale: bool = Field(..., description="options.rationale: false = reward-only.")


class ServerProvenance(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str = "lift-reward"
    version: str


class Provenance(BaseModel):
    model_config = ConfigDict(frozen=True)

    critic: CriticProvenance
    rubric: RubricProvenance
    frames: FramesProvenance
    engine: EngineProvenance
    sampling: SamplingProvenance
    server: ServerProvenance


class ScoreResponse(BaseModel):
    id: str
    model: str
    reward: float = Field(..., description="Mean of the three dimension scores (LiFT Eq. 2).")
    expected_reward: float = Field(..., description="Mean of the three expected scores.")
    num_frames: int
    scoring: Literal["label", "lift"] = Field("label", description="The rule that read the labels (options.scoring).")
    rationale: bool = Field(True, description="Whether reasons were generated (options.rationale); false: reward-only.")
    dimensions: dict[DimensionName, DimensionScore]
    timings_ms: dict[str, float] = Field(default_factory=dict)
    frames: list[str] | None = Field(None, description="base64 JPEG thumbnails, when options.return_frames.")
    provenance: Provenance | None = Field(None, description="What produced this score: critic, rubric, frames, "
                                          "engine, sampling, server (always set by this server).")


class ErrorDetail(BaseModel):
    code: str
    message: str
    param: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


MAX_GROUP_ID_CHARS = 256


GroupId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_GROUP_ID_CHARS, strict=True)] | StrictInt


class BatchScoreItem(ScoreRequest):
    group: GroupId | None = Field(
        None, description="The item's group (a prompt's samples, as GRPO trainers group them): the response's "
        "`groups` gives each group's statistics. An integer is the same group as its decimal string.")


class BatchScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[BatchScoreItem] = Field(..., min_length=1, max_length=64)


class BatchItemError(BaseModel):
    error: ErrorDetail


class SpreadStats(BaseModel):
    """One number over a group's scored items (failed items are left out, never counted as 0)."""

    mean: float | None = Field(..., description="null when no item of the group was scored.")
    std: float | None = Field(..., description="Population standard deviation (divides by n, ddof 0); x "
                              "sqrt(n/(n-1)) for the sample form. null when no item was scored.")
    zero_spread: bool | None = Field(..., description="Every scored item has the same value (max - min <= "
                                     "1e-6): no signal for GRPO's group-normalised advantage. True for one scored "
                                     "item. null when none was scored.")


class DimensionGroupStats(BaseModel):
    score: SpreadStats = Field(..., description="Of the label scores (0.05 / 0.2 / 0.9).")
    expected_score: SpreadStats = Field(..., description="Of the probability-weighted scores.")


class GroupStats(BaseModel):
    n: int = Field(..., description="Items of the batch in this group.")
    scored: int = Field(..., description="Items scored: n - failed; the statistics are over these.")
    failed: int = Field(..., description="Items answered with an error (left out of the statistics).")
    reward: SpreadStats
    expected_reward: SpreadStats
    dimensions: dict[DimensionName, DimensionGroupStats]


class BatchScoreResponse(BaseModel):
    results: list[ScoreResponse | BatchItemError]
    groups: dict[str, GroupStats] = Field(
        default_factory=dict, description="Per group id of the items (`group`), statistics of their scores; "
        "raw: the service does not normalise (the trainer does). Empty when no item names a group.")


class ModelCard(BaseModel):
    id: str
    family: str
    engine: str
    rubric: dict[str, str]
    labels: dict[str, float]
    num_frames: int


class ModelList(BaseModel):
    data: list[ModelCard]
