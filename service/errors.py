"""Errors as types. Each carries a stable machine code and a message a user can act on.

HTTP status codes are assigned in exactly one place (`service.app.errors`); nothing here knows HTTP.
"""

from __future__ import annotations


class LiftError(Exception):
    """Base of every error the project raises on purpose."""

    code: str = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def __str__(self) -> str:
        return self.message


# ---- bad input (client's fault) -------------------------------------------------------------
class InvalidRequest(LiftError):
    code = "invalid_request"


class MediaError(LiftError):
    """Anything wrong with the video a client sent."""

    code = "invalid_video"


class InvalidVideo(MediaError):
    """Not a decodable video: random bytes, truncated, zero-byte, an image, no frames."""

    code = "invalid_video"


class VideoTooLarge(MediaError):
    """Over a configured limit: bytes, pixels, duration or frame count."""

    code = "video_too_large"


class UnsupportedMedia(MediaError):
    code = "unsupported_media_type"


class MediaNotFound(MediaError):
    code = "video_not_found"


class ForbiddenMediaSource(MediaError):
    """A path outside the allowed root, a private address, a scheme we do not fetch."""

    code = "forbidden_media_source"


class MediaFetchError(MediaError):
    """A URL could not be fetched (remote 4xx/5xx, timeout, too many redirects)."""

    code = "media_fetch_failed"


class LatentDecoderNotConfigured(MediaError):
    """`media_type: latent` arrived but this server has no VAE to decode latents with (LIFT_LATENT_VAE)."""

    code = "latent_vae_not_configured"


class Unauthorized(LiftError):
    code = "unauthorized"


class IdempotencyConflict(InvalidRequest):
    """An idempotency key already used for other content (prompt, video or options): refused, never answered with
    the other request's score. A new request needs a new key."""

    code = "idempotency_key_reused"


# ---- async reward jobs (enqueue / pull) ------------------------------------------------------
class JobPending(InvalidRequest):
    """Pulled before the job finished: poll again later (Cosmos-RL's trainer expects a 400 here)."""

    code = "job_pending"


class JobNotFound(InvalidRequest):
    """No such job: never enqueued, or its result expired (LIFT_JOBS_TTL_S)."""

    code = "job_not_found"


class JobFailed(LiftError):
    """The job ended without rewards; the message says why (a video that did not decode, ...)."""

    code = "job_failed"


# ---- service state --------------------------------------------------------------------------
class Overloaded(LiftError):
    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EngineNotReady(LiftError):
    code = "engine_not_ready"


class EngineError(LiftError):
    code = "engine_error"


class EngineDead(EngineError):
    """The engine died after it started (its worker was killed, out of memory, ...): it will not come back;
    the process exits so that its supervisor restarts it."""

    code = "engine_dead"


class EngineStartError(LiftError):
    """The engine cannot start here: not enough memory, a bad engine setting, an engine crash at load.
    The message names the cause and the setting to change."""

    code = "engine_start_failed"


class RequestTimeout(LiftError):
    code = "timeout"


class JobStoreUnavailable(LiftError):
    """The shared job store (Redis) cannot be reached: the service is degraded, not the client's fault."""

    code = "job_store_unavailable"


# ---- model files ----------------------------------------------------------------------------
class ModelLoadError(LiftError):
    """A checkpoint folder is missing parts or has parts that do not fit together."""

    code = "model_load_error"


class AnswerParseError(LiftError):
    code = "answer_parse_error"


class UnparsableAnswer(AnswerParseError):
    """A critic that writes its scores as text wrote none that its parser reads (a missing dimension, no number):
    that sample fails, with the text, rather than getting a made-up number (unless the deployment sets a
    failure value). Not the client's input at fault, and not worth retrying: the same greedy answer comes back."""

    code = "unparsable_answer"

    def __init__(self, message: str, *, text: str = "", param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.text = text
