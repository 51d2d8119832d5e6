"""The wire format: pydantic models shared by the HTTP layer, the Python API and the clients.

Pure pydantic (no torch, no vllm): `clients/` imports this module.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints, model_serializer, model_validator

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

    critics: list[Annotated[str, StringConstraints(min_length=1, max_length=128)]] | None = Field(
        None, min_length=1, max_length=8, description="Which of the deployment's critics answer (`/v1/models` "
        "lists them; default: its first). Several: each answers, the video decoded once; the response is the first's, "
        "with every one's under `by_critic`. The request's top-level `model` is the same as one name here.")

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
    model: str | None = Field(None, min_length=1, max_length=128, description="Which of the deployment's critics "
                              "answers (an id from /v1/models; default its first): options.critics = [model].")

    @model_validator(mode="after")
    def _model_is_a_critic_choice(self) -> "ScoreRequest":
        if self.model is not None:
            if self.options.critics is not None and self.options.critics != [self.model]:
                raise ValueError("'model' and 'options.critics' name different critics: give one of them")
            self.options = self.options.model_copy(update={"critics": [self.model]})
        return self


class LabelProbabilities(BaseModel):
    model_config = ConfigDict(extra="forbid")  # another critic's probabilities are a plain mapping

    Good: float
    Normal: float
    Bad: float


class DimensionScore(BaseModel):
    """One dimension, the same shape for every critic (service.critics)."""

    label: str | None = Field(..., description="LiFT: Good/Normal/Bad. Cosmos-Reason1: Yes/No (the likelier). "
                              "null for critics that write numbers.")
    score: float = Field(..., description="On [0, 1], 1 best. LiFT: the label's score (Good 0.9, Normal 0.2, "
                         "Bad 0.05). Others: `value` mapped from the critic's scale.")
    expected_score: float | None = Field(..., description="LiFT: sum over labels of p(label) x score(label). Others: "
                                         "the soft score mapped to [0, 1], where the critic's answer has token "
                                         "probabilities; null where it has none.")
    probabilities: LabelProbabilities | dict[str, float] | None = Field(
        ..., union_mode="left_to_right", description="LiFT: over its labels. Cosmos-Reason1: over Yes/No. Number-writing critics: over the "
        "digits at the step that wrote this dimension's number. null where there are none.")
    rationale: str | None = Field(..., description="The critic's reason (or whole answer, for critics that write "
                                  "their numbers in text); null when none was generated.")
    value: float | None = Field(None, description="On the critic's own scale (`/v1/models` lists each scale): LiFT "
                                "the label's score, Cosmos-Reason1 P(No), VideoScore2 and UnifiedReward the number "
                                "written (1-5). null when the answer could not be read and no failure value is set.")
    parsed: bool = Field(True, description="false: the critic's answer had no number for this dimension and the "
                         "deployment's failure value (LIFT_PARSE_FAILURE_VALUE) stands in; `rationale` has the text.")


class CriticProvenance(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str = Field(..., description="The served model name (`lift serve --model-name`, else the folder's name).")
    family: str = Field(..., description="The critic family (qwen2_vl, vila).")
    critic: str | None = Field(None, description="Which critic's questions and reading (service.critics); "
                               "absent for LiFT-Critic (the provenance LiFT scores always had).")
    source: str | None = Field(None, description="Where that critic's prompt and reading come from "
                               "(repository@commit, file); absent for LiFT (service.rubric cites its sources).")

    @model_serializer(mode="wrap")
    def _lift_as_before(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if self.critic is None:  # LiFT-Critic: the same provenance as before other critics existed
            data.pop("critic", None)
            data.pop("source", None)
        return data
    digest: str | None = Field(None, description="sha256 of the checkpoint folder: small files (config.json, the "
                               "weights index, tokenizer, templates) whole, every file's name and size, and sampled "
                               "blocks of each large file (weights are not read whole). null: not a local folder.")


class RubricProvenance(BaseModel):
    model_config = ConfigDict(frozen=True)

    digest: str = Field(..., description="sha256 of the dimensions' questions and the labels' scores "
                        "(service.rubric); for another critic, of its queries, channels and frame rule.")


class FramesProvenance(BaseModel):
    model_config = ConfigDict(frozen=True)

    count: int = Field(..., description="Frames sampled from the video (options.num_frames or the default).")
    rule: str = Field("linspace", description="Which frames: 'linspace' (linspace(0, total-1, count), rounded "
                      "down, as LiFT), or another critic's rule (service.critics.spec.FrameRule: floor, fps, stride).")
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
    critic: str = Field("lift", description="Which critic answered (service.critics): lift, cosmos-reason1, "
                        "videoscore2, unifiedreward.")
    reward: float = Field(..., description="As the critic defines it; LiFT: mean of the three dimension scores "
                          "(LiFT Eq. 2). On [0, 1].")
    expected_reward: float | None = Field(..., description="The same over the expected scores (LiFT: mean of the "
                                          "three); null for a critic whose answer has no probabilities.")
    num_frames: int
    scoring: Literal["label", "lift"] = Field("label", description="The rule that read the labels (options.scoring).")
    rationale: bool = Field(True, description="Whether reasons were generated (options.rationale); false: reward-only.")
    dimensions: dict[str, DimensionScore] = Field(..., description="The critic's dimensions (LiFT: "
                                                  "semantic_consistency, motion_smoothness, video_fidelity).")
    timings_ms: dict[str, float] = Field(default_factory=dict)
    frames: list[str] | None = Field(None, description="base64 JPEG thumbnails, when options.return_frames.")
    provenance: Provenance | None = Field(None, description="What produced this score: critic, rubric, frames, "
                                          "engine, sampling, server (always set by this server).")
    by_critic: dict[str, "ScoreResponse"] | None = Field(
        None, description="When options.critics named several: each critic's answer, by its /v1/models id (the "
        "top-level fields are the first's). null otherwise.")


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
    dimensions: dict[str, DimensionGroupStats]


class BatchScoreResponse(BaseModel):
    results: list[ScoreResponse | BatchItemError]
    groups: dict[str, GroupStats] = Field(
        default_factory=dict, description="Per group id of the items (`group`), statistics of their scores; "
        "raw: the service does not normalise (the trainer does). Empty when no item names a group.")


class DimensionCard(BaseModel):
    description: str
    scale: tuple[float, float] = Field(..., description="(worst, best) of `value` on the critic's own scale.")


class ModelCard(BaseModel):
    id: str
    family: str
    engine: str
    critic: str = "lift"
    dimensions: dict[str, DimensionCard] = Field(default_factory=dict)
    reward: str = ""
    source: str = ""
    rubric: dict[str, str]
    labels: dict[str, float]
    num_frames: int


class ModelList(BaseModel):
    data: list[ModelCard]
