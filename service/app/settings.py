"""Service settings: `LIFT_*` environment variables and `lift serve` flags, validated once at start.

Flags win over the environment (the CLI passes them as init arguments). API keys are `SecretStr`, so
neither `repr` nor `public_view()` ever shows them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_DEMO_DIR = Path("~/.cache/lift-reward/demo-critic").expanduser()


def _split_csv(value: Any) -> Any:
    """`LIFT_API_KEYS=a,b` and `LIFT_URL_ALLOWLIST=x.com, y.org`: comma-separated, blanks dropped."""
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LIFT_", extra="ignore", validate_default=True)

    model: Path | None = Field(None, description="Critic checkpoint folder.")
    engine: Literal["vllm", "transformers"] = Field("vllm", description="Inference engine.")
    critic: Literal["lift", "cosmos-reason1", "videoscore2", "unifiedreward", "videoalign"] = Field(
        "lift", description="What the checkpoint is, so what it is asked and how its answers are read "
        "(service.critics): lift (LiFT-Critic), cosmos-reason1, videoscore2, unifiedreward, videoalign.")
    critics: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Several critics in one deployment: NAME=DIR pairs, comma-separated "
        "(`lift serve --critic lift=DIR --critic videoscore2=DIR`): NAME is the critic (service.critics) and its "
        "/v1/models id; the first answers requests that name none. GPU memory (LIFT_GPU_MEMORY_UTILIZATION, "
        "default 0.9) is split equally among them. Replaces LIFT_MODEL and LIFT_CRITIC.")
    critic_variant: str | None = Field(
        None, description="One of the critic's documented alternatives (cosmos-reason1: 'caption', the default, "
        "sends the caption as Cosmos-RL's reward service does; 'question' asks the fixed anomaly question the model "
        "was trained with).")
    parse_failure_value: float | None = Field(
        None, description="For critics that write their scores as text (videoscore2, unifiedreward): the value (on "
        "the critic's own scale) a dimension gets when the answer has no number for it. Unset (the default for "
        "every critic): the sample fails with 422 unparsable_answer and the text; a batch item fails alone.")
    host: str = Field("127.0.0.1", description="Bind address.")
    port: int = Field(8000, ge=0, le=65535, description="Bind port (0 = any free port).")
    demo: bool = Field(False, description="Serve the tiny random demo critic (built on first use).")
    demo_dir: Path = Field(DEFAULT_DEMO_DIR, description="Where the demo critic is built and cached.")

    # vLLM engine shape (ignored by the transformers engine except dtype)
    dtype: str = Field("auto", description="Weights dtype: auto, float32, bfloat16, float16.")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per replica (vLLM tensor parallel; 40B critic: 2-4).")
    max_model_len: int = Field(4096, ge=256, description="Longest prompt + answer in tokens (8 VILA frames = 1,568).")
    max_num_seqs: int = Field(64, ge=1, description="Sequences vLLM batches at once (each score is 6+ requests).")
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="Share of GPU memory vLLM may take (on CPU: of the NUMA node's RAM, vLLM's "
        "meaning). Unset: vLLM's default on GPU; on CPU the KV cache is sized for the critic's work.")
    kv_cache_gb: float | None = Field(
        None, gt=0, description="KV cache size in GiB, overriding both the work-based size and the fraction.")
    enforce_eager: bool | None = Field(
        None, description="Run the model eagerly (true) or compiled with torch.compile / graphs (false). Unset: "
        "eager on CPU, compiled on GPU (see benchmarks/README.md for the CPU measurement).")

    media_root: Path | None = Field(None, description="Server folder `video.path` may read from; unset = paths off.")
    max_video_bytes: int = Field(64 * 1024 * 1024, ge=1, description="Largest video accepted (upload, base64, URL, path).")
    url_allowlist: Annotated[list[str], NoDecode] = Field(default_factory=list, description="Hosts `video.url` may name; empty = any public host.")
    allow_private_urls: bool = Field(False, description="Allow URLs resolving to loopback/private/link-local addresses (metadata stays refused).")
    fetch_timeout_s: float = Field(30.0, gt=0, description="Time limit for downloading one video URL.")
    max_redirects: int = Field(5, ge=0, le=20)

    max_inflight: int = Field(16, ge=1, description="Requests in the engine at once (vLLM batches them continuously).")
    max_queue: int = Field(64, ge=0, description="Requests waiting for an engine slot; beyond that: 429.")
    request_timeout_s: float = Field(120.0, gt=0, description="Per-request deadline (fetch + wait + scoring): 504.")
    shutdown_timeout_s: float | None = Field(None, gt=0, description="Graceful-shutdown bound; default request_timeout_s + 10.")

    max_frames_bytes: int | None = Field(None, ge=1, description="Largest frames payload accepted (.npy or "
                                         "PNG/JPEG list; a batch counts whole); default = max_video_bytes. Raw "
                                         "pixels are bigger than mp4: raise it for long or large videos.")

    # Trainer adapters (issue 19): extra route sets over the same scoring path
    adapters: Annotated[list[Literal["flow-factory", "cosmos-rl", "unirl"]], NoDecode] = Field(
        default_factory=list, description="Trainer route sets to serve: flow-factory (/compute), cosmos-rl "
        "(/api/reward/enqueue, /api/reward/pull), unirl (/score, /rewards, /health); comma-separated.")
    adapter_reward: str = Field("reward", description="The number adapters return: reward, expected_reward, a "
                                "dimension (its expected_score), DIM.score, or a weighted sum 'a=0.5,b=0.5'.")
    adapter_rationale: bool = Field(False, description="Adapters generate reasons too; default false: reward-only "
                                    "(a trainer reads the number alone; the label round is the whole score).")
    latent_vae: Path | None = Field(None, description="diffusers AutoencoderKLWan folder that decodes "
                                    "media_type=latent (Cosmos-RL); unset = latents refused.")
    redis_url: SecretStr | None = Field(None, description="Redis for the async job store and the idempotency store, "
                                        "shared by replicas; unset = both kept in this process.")
    jobs_max_pending: int = Field(256, ge=1, description="Unfinished async jobs at once; enqueue beyond: 429.")
    jobs_ttl_s: float = Field(3600.0, gt=0, description="How long a finished job's result can be pulled.")

    # Safe retries (service.app.idempotency): a repeat (same key, same content) gets the first answer, unscored
    idempotency_max_entries: int = Field(4096, ge=0, description="Finished requests remembered for repeats "
                                         "(Idempotency-Key; the adapters' keys); oldest forgotten first; 0 = off.")
    idempotency_ttl_s: float = Field(900.0, gt=0, description="How long a finished request is remembered; longer "
                                     "than the slowest client's resend (FastVideo's: after a 300 s timeout).")

    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list, description="Bearer keys for /v1/*; empty = auth off.")
    auth_ops_routes: bool = Field(False, description="Also require a key for /health, /ready, /metrics.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    scoring: Literal["label", "lift"] = Field(
        "label", description="How labels are read when a request does not say (options.scoring): 'label' = the "
        "most probable label, then a reason (default); 'lift' = as LiFT's scripts did (the whole answer sampled at "
        "T=0.2, then 'Normal' anywhere -> Normal, else 'Bad' anywhere -> Bad, else Good).")

    @field_validator("url_allowlist", "api_keys", "adapters", "critics", mode="before")
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @model_validator(mode="after")
    def _check(self) -> "ServiceSettings":
        if self.media_root is not None:
            self.media_root = self.media_root.expanduser()
            if not self.media_root.is_dir():
                raise ValueError(f"LIFT_MEDIA_ROOT {self.media_root} is not a folder")
        self.demo_dir = self.demo_dir.expanduser()
        if self.max_frames_bytes is None:
            self.max_frames_bytes = self.max_video_bytes
        from service.adapters.selection import RewardSelection
        from service.errors import InvalidRequest

        critic_dirs = self.critic_dirs()  # checks the pairs
        try:
            from service.critics import load_spec

            try:
                spec = load_spec(self.critic, self.critic_variant)
            except ValueError as exc:
                raise ValueError(f"LIFT_CRITIC_VARIANT: {exc}") from None
            if critic_dirs:
                RewardSelection.parse(self.adapter_reward, load_spec(next(iter(critic_dirs))).dimension_names,
                                      critics={n: load_spec(n).dimension_names for n in critic_dirs})
            else:
                RewardSelection.parse(self.adapter_reward, spec.dimension_names)
        except InvalidRequest as exc:
            raise ValueError(f"LIFT_ADAPTER_REWARD: {exc.message}") from None
        if self.latent_vae is not None:
            self.latent_vae = self.latent_vae.expanduser()
            if not (self.latent_vae / "config.json").is_file():
                raise ValueError(f"LIFT_LATENT_VAE {self.latent_vae} is not a diffusers VAE folder (no config.json)")
        self.adapters = list(dict.fromkeys(self.adapters))
        return self

    @property
    def graceful_timeout_s(self) -> float:
        return self.shutdown_timeout_s if self.shutdown_timeout_s is not None else self.request_timeout_s + 10.0

    @property
    def max_body_bytes(self) -> int:
        """Largest request body: a base64 video (or frames) at its limit plus room for the rest of the JSON."""
        return (max(self.max_video_bytes, self.max_frames_bytes or 0) + 2) // 3 * 4 + 1024 * 1024

    def critic_dirs(self) -> dict[str, Path]:
        """LIFT_CRITICS as {critic name: checkpoint folder}, in order (empty: one critic, LIFT_MODEL)."""
        from service.critics import CRITIC_NAMES

        out: dict[str, Path] = {}
        for pair in self.critics:
            name, sep, folder = pair.partition("=")
            name, folder = name.strip(), folder.strip()
            if not sep or not name or not folder:
                raise ValueError(f"LIFT_CRITICS: {pair!r} is not NAME=DIR")
            if name not in CRITIC_NAMES:
                raise ValueError(f"LIFT_CRITICS: unknown critic {name!r}; choose from {', '.join(CRITIC_NAMES)}")
            if name in out:
                raise ValueError(f"LIFT_CRITICS: {name!r} is named twice")
            out[name] = Path(folder).expanduser()
        return out

    def engine_options(self) -> dict[str, Any]:
        """Keyword arguments for `Critic.from_pretrained` that shape the engine."""
        if self.engine == "transformers":
            return {"dtype": "float32" if self.dtype == "auto" else self.dtype}
        return {"dtype": self.dtype, "tensor_parallel_size": self.tensor_parallel_size,
                "max_model_len": self.max_model_len, "max_num_seqs": self.max_num_seqs,
                "gpu_memory_utilization": self.gpu_memory_utilization, "kv_cache_gb": self.kv_cache_gb,
                "enforce_eager": self.enforce_eager}

    def public_view(self) -> dict[str, Any]:
        """What may be printed or logged: everything but the keys themselves."""
        out = self.model_dump(mode="json", exclude={"api_keys", "redis_url"})
        out["api_keys"] = f"{len(self.api_keys)} configured" if self.api_keys else "off"
        out["redis_url"] = "configured" if self.redis_url is not None else "off"
        return out
